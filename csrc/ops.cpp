// Schemas of qmixprune's native ops. Kernels register themselves per dispatch key in
// cpu/*.cpp and cuda/*.cu, so one Python call routes by the tensors' device.
#include <torch/library.h>

TORCH_LIBRARY(qmixprune, m) {
  // Per-filter L1 (p=1) or L2 (p=2) norm of every weight, filters along dim 0: float64.
  m.def("filter_norms(Tensor[] weights, int p) -> Tensor[]");
  // Per-filter sum of Euclidean distances to the other filters of its layer: float64.
  m.def("fpgm(Tensor[] weights) -> Tensor[]");
  // |gamma| of every BatchNorm weight: float64.
  m.def("bn_scale(Tensor[] gammas) -> Tensor[]");
  // Accumulate per-channel sum |a| and count of zeros of activations [N, C, ...].
  m.def("channel_stats_(Tensor act, Tensor(a!) abs_sum, Tensor(b!) zeros) -> ()");
  // New tensors keeping rows[i] along dim 0 and cols[i] along dim 1 (None keeps all).
  m.def("gather_channels(Tensor[] tensors, Tensor?[] rows, Tensor?[] cols) -> Tensor[]");
}
