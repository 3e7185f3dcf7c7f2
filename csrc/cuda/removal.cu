// CUDA kernel for physical channel removal: one gather per tensor, each thread copying
// one element of the output, by its byte width so every dtype shares the kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"

namespace qmixprune {
namespace {

template <typename word_t>
__global__ void gather_kernel(const word_t* src, word_t* dst, const int64_t* rows,
                              const int64_t* cols, int64_t out_rows, int64_t out_cols,
                              int64_t in_cols, int64_t inner) {
  int64_t total = out_rows * out_cols * inner;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    int64_t e = k % inner;
    int64_t c = (k / inner) % out_cols;
    int64_t r = k / (inner * out_cols);
    int64_t sc = cols ? cols[c] : c;
    dst[k] = src[(rows[r] * in_cols + sc) * inner + e];
  }
}

template <typename word_t>
void launch(const at::Tensor& src, at::Tensor& dst, const at::Tensor& rows,
            const at::Tensor& cols, int64_t in_cols, int64_t inner) {
  int64_t out_cols = cols.defined() ? cols.numel() : 1;
  int64_t total = rows.numel() * out_cols * inner;
  if (total == 0) return;
  int blocks = static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535));
  gather_kernel<word_t><<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<const word_t*>(src.data_ptr()), static_cast<word_t*>(dst.data_ptr()),
      rows.data_ptr<int64_t>(), cols.defined() ? cols.data_ptr<int64_t>() : nullptr,
      rows.numel(), out_cols, in_cols, inner);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> gather_channels_cuda(at::TensorList tensors,
                                             const c10::List<std::optional<at::Tensor>>& rows,
                                             const c10::List<std::optional<at::Tensor>>& cols) {
  check_plan(tensors, rows, cols);
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    auto src = tensors[i].contiguous();
    c10::cuda::CUDAGuard guard(src.device());
    if (src.dim() == 0) {
      out.push_back(src.clone());
      continue;
    }
    std::optional<at::Tensor> r = rows[i];
    std::optional<at::Tensor> c = cols[i];
    auto opts = src.options().dtype(at::kLong);
    auto row_idx = r.has_value() ? r->contiguous() : at::arange(src.size(0), opts);
    auto sizes = src.sizes().vec();
    sizes[0] = row_idx.numel();
    at::Tensor col_idx;
    int64_t in_cols = 1, inner = 1;
    if (src.dim() >= 2) {
      in_cols = src.size(1);
      col_idx = c.has_value() ? c->contiguous() : at::arange(in_cols, opts);
      sizes[1] = col_idx.numel();
      for (int64_t d = 2; d < src.dim(); ++d) inner *= src.size(d);
    }
    auto dst = at::empty(sizes, src.options());
    switch (src.element_size()) {
      case 1: launch<uint8_t>(src, dst, row_idx, col_idx, in_cols, inner); break;
      case 2: launch<uint16_t>(src, dst, row_idx, col_idx, in_cols, inner); break;
      case 4: launch<uint32_t>(src, dst, row_idx, col_idx, in_cols, inner); break;
      case 8: launch<uint64_t>(src, dst, row_idx, col_idx, in_cols, inner); break;
      default: TORCH_CHECK(false, "gather_channels: unsupported element size ", src.element_size());
    }
    out.push_back(dst);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(qmixprune, CUDA, m) { m.impl("gather_channels", &gather_channels_cuda); }

}  // namespace qmixprune
