// CPU kernels for filter importance and activation statistics. Work is spread over every
// filter of every layer at once (one parallel_for per call), so a whole model's many small
// layers keep all cores busy.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"

namespace qmixprune {
namespace {

struct Rows {
  std::vector<at::Tensor> weights;  // contiguous [rows, cols] views
  std::vector<at::Tensor> out;      // float64 [rows]
  std::vector<int64_t> first;       // global index of each layer's first row
  int64_t total = 0;

  explicit Rows(at::TensorList ws) {
    for (const auto& w : ws) {
      auto rows = w.size(0);
      auto flat = w.contiguous().reshape({rows, rows ? w.numel() / rows : 0});
      weights.push_back(flat);
      out.push_back(at::zeros({rows}, w.options().dtype(at::kDouble)));
      first.push_back(total);
      total += rows;
    }
  }
  // layer of a global row index
  size_t layer(int64_t g) const {
    return std::upper_bound(first.begin(), first.end(), g) - first.begin() - 1;
  }
};

// One filter's L1 or L2 norm; P is a template parameter and four independent accumulators
// let the compiler vectorise the loop.
template <int P, typename scalar_t>
double row_norm(const scalar_t* src, int64_t cols) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t c = 0;
  for (; c + 4 <= cols; c += 4) {
    for (int k = 0; k < 4; ++k) {
      double v = static_cast<double>(src[c + k]);
      acc[k] += P == 1 ? std::abs(v) : v * v;
    }
  }
  for (; c < cols; ++c) {
    double v = static_cast<double>(src[c]);
    acc[0] += P == 1 ? std::abs(v) : v * v;
  }
  double total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  return P == 1 ? total : std::sqrt(total);
}

std::vector<at::Tensor> filter_norms_cpu(at::TensorList weights, int64_t p) {
  TORCH_CHECK(p == 1 || p == 2, "filter_norms: p must be 1 or 2, got ", p);
  check_weights(weights, "filter_norms");
  Rows rows(weights);
  at::parallel_for(0, rows.total, 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      auto l = rows.layer(g);
      auto r = g - rows.first[l];
      const auto& w = rows.weights[l];
      auto cols = w.size(1);
      double value = 0.0;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "filter_norms", [&] {
        const scalar_t* src = w.data_ptr<scalar_t>() + r * cols;
        value = p == 1 ? row_norm<1>(src, cols) : row_norm<2>(src, cols);
      });
      rows.out[l].data_ptr<double>()[r] = value;
    }
  });
  return rows.out;
}

std::vector<at::Tensor> fpgm_cpu(at::TensorList weights) {
  check_weights(weights, "fpgm");
  std::vector<at::Tensor> out;
  // Distances from the Gram matrix: ||a-b||^2 = |a|^2 + |b|^2 - 2ab. The GEMM runs in
  // float32 unless the weights are float64 (documented tolerance 1e-4 relative), and so do
  // the squared distances and square roots (vectorised ATen kernels); sums are float64.
  for (const auto& w : weights) {
    auto rows = w.size(0);
    auto flat = w.contiguous().reshape({rows, rows ? w.numel() / rows : 0});
    auto work = flat.scalar_type() == at::kDouble ? flat : flat.to(at::kFloat);
    auto gram = at::mm(work, work.t());
    auto sq = gram.diagonal();
    auto d2 = (sq.unsqueeze(1) + sq.unsqueeze(0)).sub_(gram, 2.0);
    d2.diagonal().zero_();  // a filter's distance to itself is 0, not rounding noise
    out.push_back(d2.clamp_min_(0.0).sqrt_().sum(1, false, at::kDouble));
  }
  return out;
}

void channel_stats_cpu(const at::Tensor& act, at::Tensor& abs_sum, at::Tensor& zeros) {
  check_stats_args(act, abs_sum, zeros);
  auto channels = act.size(1);
  auto a = act.contiguous();
  int64_t n = a.size(0);
  int64_t inner = channels ? a.numel() / (n * channels) : 0;
  double* s = abs_sum.data_ptr<double>();
  int64_t* z = zeros.data_ptr<int64_t>();
  // channels are independent: each thread owns whole channels, no atomics, no temporaries
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "channel_stats_", [&] {
    const scalar_t* src = a.data_ptr<scalar_t>();
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double acc = 0.0;
        int64_t zc = 0;
        for (int64_t b = 0; b < n; ++b) {
          const scalar_t* p = src + (b * channels + c) * inner;
          for (int64_t k = 0; k < inner; ++k) {
            double v = static_cast<double>(p[k]);
            acc += std::abs(v);
            zc += v == 0.0;
          }
        }
        s[c] += acc;
        z[c] += zc;
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(qmixprune, CPU, m) {
  m.impl("filter_norms", &filter_norms_cpu);
  m.impl("fpgm", &fpgm_cpu);
  m.impl("bn_scale", &bn_scale_any);
  m.impl("channel_stats_", &channel_stats_cpu);
}

}  // namespace qmixprune
