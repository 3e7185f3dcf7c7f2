// CPU kernel for physical channel removal: every tensor of a plan in one call. Each
// output row is copied in contiguous runs (memcpy of the trailing dims), rows of all
// tensors spread over the cores. Bytes are only ever moved by memcpy: no char* is read
// through a wider type.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"

namespace qmixprune {
namespace {

// One (row, col) cell of BYTES bytes per kept column. A memcpy of a compile-time size is
// well defined for any alignment and dtype and compiles to one load and one store.
template <int64_t BYTES>
void copy_cells(const char* src, char* dst, const int64_t* cols, int64_t n) {
  for (int64_t c = 0; c < n; ++c) std::memcpy(dst + c * BYTES, src + cols[c] * BYTES, BYTES);
}

std::vector<at::Tensor> gather_channels_cpu(at::TensorList tensors,
                                            const c10::List<std::optional<at::Tensor>>& rows,
                                            const c10::List<std::optional<at::Tensor>>& cols) {
  check_plan(tensors, rows, cols);
  struct Job {
    at::Tensor src, dst, row_idx, col_idx;
    int64_t out_rows = 1, out_cols = 1, in_cols = 1, inner = 1, elem = 1;
  };
  std::vector<Job> jobs;
  std::vector<at::Tensor> out;
  std::vector<int64_t> first;
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Job j;
    j.src = tensors[i].contiguous();
    auto sizes = j.src.sizes().vec();
    std::optional<at::Tensor> r = rows[i];
    std::optional<at::Tensor> c = cols[i];
    if (j.src.dim() == 0) {
      out.push_back(j.src.clone());
      continue;
    }
    j.row_idx = r.has_value() ? r->contiguous() : at::arange(sizes[0], at::kLong);
    sizes[0] = j.row_idx.numel();
    if (j.src.dim() >= 2) {
      j.in_cols = j.src.size(1);
      j.col_idx = c.has_value() ? c->contiguous() : at::arange(j.in_cols, at::kLong);
      sizes[1] = j.col_idx.numel();
      j.out_cols = sizes[1];
      for (int64_t d = 2; d < j.src.dim(); ++d) j.inner *= j.src.size(d);
    }
    j.out_rows = sizes[0];
    j.elem = j.src.element_size();
    j.dst = at::empty(sizes, j.src.options());
    out.push_back(j.dst);
    first.push_back(total);
    total += j.out_rows;
    jobs.push_back(j);
  }
  at::parallel_for(0, total, 4, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      size_t k = std::upper_bound(first.begin(), first.end(), g) - first.begin() - 1;
      const Job& j = jobs[k];
      int64_t r = g - first[k];
      int64_t src_row = j.row_idx.data_ptr<int64_t>()[r];
      auto* src = static_cast<const char*>(j.src.data_ptr());
      auto* dst = static_cast<char*>(j.dst.data_ptr());
      int64_t run = j.inner * j.elem;  // bytes of one (row, col) cell
      if (j.src.dim() == 1) {
        std::memcpy(dst + r * j.elem, src + src_row * j.elem, j.elem);
        continue;
      }
      const int64_t* ci = j.col_idx.data_ptr<int64_t>();
      const char* s = src + src_row * j.in_cols * run;
      char* d = dst + r * j.out_cols * run;
      switch (run) {  // one element per cell (1x1 convs, linears): fixed-size copies
        case 1: copy_cells<1>(s, d, ci, j.out_cols); break;
        case 2: copy_cells<2>(s, d, ci, j.out_cols); break;
        case 4: copy_cells<4>(s, d, ci, j.out_cols); break;
        case 8: copy_cells<8>(s, d, ci, j.out_cols); break;
        default:
          for (int64_t c = 0; c < j.out_cols; ++c) std::memcpy(d + c * run, s + ci[c] * run, run);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qmixprune, CPU, m) { m.impl("gather_channels", &gather_channels_cpu); }

}  // namespace qmixprune
