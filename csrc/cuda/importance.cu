// CUDA kernels for filter importance and activation statistics (compiled here, run only
// where a GPU is present).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"

namespace qmixprune {
namespace {

constexpr int kThreads = 256;

__device__ double block_sum(double v) {
  __shared__ double part[kThreads];
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

template <typename scalar_t>
__global__ void channel_stats_kernel(const scalar_t* a, int64_t total, int64_t channels,
                                     int64_t inner, double* abs_sum,
                                     unsigned long long* zeros) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total;
       k += (int64_t)gridDim.x * blockDim.x) {
    int64_t c = (k / inner) % channels;
    double v = static_cast<double>(a[k]);
    atomicAdd(abs_sum + c, fabs(v));
    if (v == 0.0) atomicAdd(zeros + c, 1ULL);
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
    auto work = flat.scalar_type() == at::kDouble ? flat : flat.to(at::kFloat);
    auto gram = at::mm(work, work.t()).to(at::kDouble).contiguous();
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
  if (total == 0) return;
  int64_t inner = total / (a.size(0) * channels);
  int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 4096));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "channel_stats_", [&] {
    channel_stats_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        a.data_ptr<scalar_t>(), total, channels, inner, abs_sum.data_ptr<double>(),
        reinterpret_cast<unsigned long long*>(zeros.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(qmixprune, CUDA, m) {
  m.impl("filter_norms", &filter_norms_cuda);
  m.impl("fpgm", &fpgm_cuda);
  m.impl("bn_scale", &bn_scale_any);
  m.impl("channel_stats_", &channel_stats_cuda);
}

}  // namespace qmixprune
