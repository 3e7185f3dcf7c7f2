// C++ test of the CPU kernels through the dispatcher, run by ctest: native results against
// ATen computations, and bad input turned into c10::Error rather than a crash.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

using Tensors = std::vector<at::Tensor>;
using Indices = c10::List<std::optional<at::Tensor>>;

static int failures = 0;
#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

int main() {
  auto& d = c10::Dispatcher::singleton();
  auto norms = d.findSchemaOrThrow("qmixprune::filter_norms", "").typed<Tensors(at::TensorList, int64_t)>();
  auto fpgm = d.findSchemaOrThrow("qmixprune::fpgm", "").typed<Tensors(at::TensorList)>();
  auto gather = d.findSchemaOrThrow("qmixprune::gather_channels", "")
                    .typed<Tensors(at::TensorList, const Indices&, const Indices&)>();

  at::manual_seed(0);
  std::vector<at::Tensor> ws = {at::randn({16, 3, 3, 3}), at::randn({5, 16})};
  auto l1 = norms.call(ws, 1);
  auto l2 = norms.call(ws, 2);
  auto dist = fpgm.call(ws);
  for (size_t i = 0; i < ws.size(); ++i) {
    auto rows = ws[i].reshape({ws[i].size(0), -1}).to(at::kDouble);
    EXPECT(at::allclose(l1[i], rows.abs().sum(1)));
    EXPECT(at::allclose(l2[i], rows.norm(2, 1)));
    EXPECT(at::allclose(dist[i], at::cdist(rows, rows).sum(1), 1e-4, 1e-4));
  }

  Indices rows, cols;
  rows.push_back(at::tensor({3, 0}, at::kLong));
  cols.push_back(at::tensor({2}, at::kLong));
  auto cut = gather.call({ws[0]}, rows, cols);
  EXPECT(cut[0].sizes() == at::IntArrayRef({2, 1, 3, 3}));
  EXPECT(at::equal(cut[0], ws[0].index_select(0, *rows.get(0)).index_select(1, *cols.get(0))));

  bool threw = false;
  try {
    Indices bad;
    bad.push_back(at::tensor({99}, at::kLong));
    Indices none;
    none.push_back(std::nullopt);
    gather.call({ws[0]}, bad, none);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("size 16") != std::string::npos;
  }
  EXPECT(threw);

  auto stats = d.findSchemaOrThrow("qmixprune::channel_stats_", "")
                   .typed<void(const at::Tensor&, at::Tensor&, at::Tensor&)>();
  auto sums = at::zeros({3}, at::kDouble);
  auto zeros = at::zeros({3}, at::kLong);
  stats.call(at::ones({2, 3, 4}), sums, zeros);
  EXPECT(at::allclose(sums, at::full({3}, 8.0, at::kDouble)) && zeros.sum().item<int64_t>() == 0);
  bool empty_threw = false;
  try {
    stats.call(at::ones({0, 3, 4}), sums, zeros);  // an empty batch: an error, not a crash
  } catch (const c10::Error& e) {
    empty_threw = std::string(e.what()).find("batch is empty") != std::string::npos;
  }
  EXPECT(empty_threw);

  std::printf("%s\n", failures ? "qmixprune native C++ test FAILED" : "qmixprune native C++ test passed");
  return failures ? 1 : 0;
}
