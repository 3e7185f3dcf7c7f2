// CUDA kernels for filter importance and activation statistics (compiled here, run only
// where a GPU is present). Built as the separate extension qmixprune._C_cuda: it adds
// CUDA kernels to the ops that qmixprune._C defines (csrc/ops.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"

namespace qmixprune {
namespace {

constexpr int kThreads = 256;

// Sum over the block's kThreads threads (a power of two), returned to every thread. The
// first barrier lets a second call in the same kernel reuse the shared array safely.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T part[kThreads];
  __syncthreads();
  part[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  return part[0];
}

template <typename scalar_t>
__global__ void row_norm_kernel(const scalar_t* w, int64_t cols, int p, double* out) {
  const scalar_t* row = w + blockIdx.x * cols;
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    double v = static_cast<double>(row[c]);
    acc += p == 1 ? fabs(v) : v * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[blockIdx.x] = p == 1 ? acc : sqrt(acc);
}

__global__ void fpgm_kernel(const double* gram, int64_t n, double* out) {
  int64_t i = blockIdx.x;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    if (j == i) continue;
    double d2 = gram[i * n + i] + gram[j * n + j] - 2.0 * gram[i * n + j];
    acc += d2 > 0.0 ? sqrt(d2) : 0.0;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) out[i] = acc;
}

// Block (c, y) reduces the y-th strided share of channel c's n * inner elements (layout
// [n, channels, inner]) in registers and shared memory, and writes ONE partial per block:
// no atomics, and the same launch always adds in the same order (deterministic).
template <typename scalar_t>
__global__ void channel_stats_kernel(const scalar_t* a, int64_t n, int64_t channels,
                                     int64_t inner, double* part_sum, int64_t* part_zeros) {
  int64_t c = blockIdx.x;
  int64_t per_channel = n * inner;
  double acc = 0.0;
  int64_t zc = 0;
  for (int64_t k = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; k < per_channel;
       k += (int64_t)gridDim.y * blockDim.x) {
    int64_t b = k / inner, e = k - b * inner;
    double v = static_cast<double>(a[(b * channels + c) * inner + e]);
    acc += fabs(v);
    zc += v == 0.0;
  }
  acc = block_sum(acc);
  zc = block_sum(zc);
  if (threadIdx.x == 0) {
    part_sum[c * gridDim.y + blockIdx.y] = acc;
    part_zeros[c * gridDim.y + blockIdx.y] = zc;
  }
}

std::vector<at::Tensor> filter_norms_cuda(at::TensorList weights, int64_t p) {
  TORCH_CHECK(p == 1 || p == 2, "filter_norms: p must be 1 or 2, got ", p);
  check_weights(weights, "filter_norms");
  std::vector<at::Tensor> out;
  for (const auto& w0 : weights) {
    c10::cuda::CUDAGuard guard(w0.device());
    auto rows = w0.size(0);
    auto w = w0.contiguous();
    auto res = at::zeros({rows}, w.options().dtype(at::kDouble));
    if (rows > 0 && w.numel() > 0) {
      auto stream = c10::cuda::getCurrentCUDAStream();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "filter_norms", [&] {
        row_norm_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
            w.data_ptr<scalar_t>(), w.numel() / rows, static_cast<int>(p), res.data_ptr<double>());
      });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    out.push_back(res);
  }
  return out;
}

std::vector<at::Tensor> fpgm_cuda(at::TensorList weights) {
  check_weights(weights, "fpgm");
  std::vector<at::Tensor> out;
  for (const auto& w : weights) {
    c10::cuda::CUDAGuard guard(w.device());
    auto rows = w.size(0);
    auto flat = w.contiguous().reshape({rows, rows ? w.numel() / rows : 0});
    // float64 Gram product: a float32 matmul runs in TF32 where the user allowed it
    // (set_float32_matmul_precision("high"), common on Ampere/Hopper), ~1e-3 relative, and
    // d2 = g_ii + g_jj - 2 g_ij cancels that error into the distances
    auto work = flat.to(at::kDouble);
    auto gram = at::mm(work, work.t()).contiguous();
    auto res = at::zeros({rows}, w.options().dtype(at::kDouble));
    if (rows > 0) {
      fpgm_kernel<<<rows, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          gram.data_ptr<double>(), rows, res.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    out.push_back(res);
  }
  return out;
}

void channel_stats_cuda(const at::Tensor& act, at::Tensor& abs_sum, at::Tensor& zeros) {
  check_stats_args(act, abs_sum, zeros);
  auto channels = act.size(1);
  c10::cuda::CUDAGuard guard(act.device());
  auto a = act.contiguous();
  int64_t total = a.numel();
  if (total == 0) return;  // channels or spatial size 0 (an empty batch was refused above)
  int64_t n = a.size(0);
  int64_t inner = total / (n * channels);
  // enough blocks per channel to fill the GPU when channels are few (gridDim.y <= 65535),
  // each still reducing several elements per thread
  int64_t per_channel = n * inner;
  int64_t shares = std::max<int64_t>(1, 1024 / channels);
  shares = std::min<int64_t>({shares, (per_channel + 4 * kThreads - 1) / (4 * kThreads), 65535});
  shares = std::max<int64_t>(shares, 1);
  TORCH_CHECK(channels <= 2147483647, "channel_stats_: too many channels for one grid");
  auto part_sum = at::empty({channels, shares}, abs_sum.options());
  auto part_zeros = at::empty({channels, shares}, zeros.options());
  dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(shares));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "channel_stats_", [&] {
    channel_stats_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<scalar_t>(), n, channels, inner, part_sum.data_ptr<double>(),
        part_zeros.data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  abs_sum.add_(part_sum.sum(1));  // a fixed-order reduction of the partials
  zeros.add_(part_zeros.sum(1));
}

}  // namespace

TORCH_LIBRARY_IMPL(qmixprune, CUDA, m) {
  m.impl("filter_norms", &filter_norms_cuda);
  m.impl("fpgm", &fpgm_cuda);
  m.impl("bn_scale", &bn_scale_any);
  m.impl("channel_stats_", &channel_stats_cuda);
}

}  // namespace qmixprune
