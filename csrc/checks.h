// Argument checks shared by the CPU and CUDA kernels: every bad input becomes a Python
// exception with a message naming the op and the argument, never a crash.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

namespace qmixprune {

inline void check_weights(at::TensorList ws, const char* op) {
  for (size_t i = 0; i < ws.size(); ++i) {
    const auto& w = ws[i];
    TORCH_CHECK(w.dim() >= 1, op, ": weights[", i, "] must have at least 1 dimension (filters "
                "along dim 0), got a scalar");
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), op, ": weights[", i,
                "] must be floating point, got ", w.scalar_type());
    TORCH_CHECK(w.device() == ws[0].device(), op, ": weights[", i, "] is on ", w.device(),
                " but weights[0] is on ", ws[0].device());
  }
}

// Validates one index tensor for gather_channels against the size it indexes into.
inline void check_index(const at::Tensor& idx, int64_t size, const at::Tensor& t, size_t i,
                        const char* which) {
  TORCH_CHECK(idx.dim() == 1, "gather_channels: ", which, "[", i, "] must be 1-D, got ",
              idx.dim(), "-D");
  TORCH_CHECK(idx.scalar_type() == at::kLong, "gather_channels: ", which, "[", i,
              "] must be int64, got ", idx.scalar_type());
  TORCH_CHECK(idx.device() == t.device(), "gather_channels: ", which, "[", i, "] is on ",
              idx.device(), " but tensors[", i, "] is on ", t.device());
  if (idx.numel() == 0) return;
  auto cpu = idx.device().is_cpu() ? idx.contiguous() : idx.cpu().contiguous();
  // one pass: range and duplicates (a bitmap), no sort and no temporaries per check
  const int64_t* p = cpu.data_ptr<int64_t>();
  std::vector<bool> seen(static_cast<size_t>(size), false);
  for (int64_t k = 0; k < cpu.numel(); ++k) {
    int64_t v = p[k];
    TORCH_CHECK(v >= 0, "gather_channels: ", which, "[", i, "] holds a negative index ", v);
    TORCH_CHECK(v < size, "gather_channels: ", which, "[", i, "] holds index ", v,
                " but the dimension has size ", size);
    TORCH_CHECK(!seen[v], "gather_channels: ", which, "[", i, "] holds duplicated indices");
    seen[v] = true;
  }
}

inline void check_stats_args(const at::Tensor& act, const at::Tensor& abs_sum,
                             const at::Tensor& zeros) {
  TORCH_CHECK(act.dim() >= 2, "channel_stats_: activations need [N, C, ...], got ", act.dim(), "-D");
  // the mean over the batch would divide by zero (and the CPU kernel's inner size too)
  TORCH_CHECK(act.size(0) > 0, "channel_stats_: the batch is empty (N = 0): give at least one sample");
  TORCH_CHECK(at::isFloatingType(act.scalar_type()), "channel_stats_: activations must be floating point");
  auto channels = act.size(1);
  TORCH_CHECK(abs_sum.dim() == 1 && abs_sum.size(0) == channels && abs_sum.scalar_type() == at::kDouble,
              "channel_stats_: abs_sum must be float64 of shape [", channels, "]");
  TORCH_CHECK(zeros.dim() == 1 && zeros.size(0) == channels && zeros.scalar_type() == at::kLong,
              "channel_stats_: zeros must be int64 of shape [", channels, "]");
  TORCH_CHECK(abs_sum.is_contiguous() && zeros.is_contiguous(), "channel_stats_: outputs must be contiguous");
  TORCH_CHECK(abs_sum.device() == act.device() && zeros.device() == act.device(),
              "channel_stats_: outputs must be on the activations' device");
}

// |gamma| in float64: the same few ATen ops on every device.
inline std::vector<at::Tensor> bn_scale_any(at::TensorList gammas) {
  check_weights(gammas, "bn_scale");
  std::vector<at::Tensor> out;
  for (const auto& g : gammas) {
    TORCH_CHECK(g.dim() == 1, "bn_scale: BatchNorm weights are 1-D, got ", g.dim(), "-D");
    out.push_back(g.to(at::kDouble).abs());
  }
  return out;
}

inline void check_plan(at::TensorList tensors, const c10::List<std::optional<at::Tensor>>& rows,
                       const c10::List<std::optional<at::Tensor>>& cols) {
  TORCH_CHECK(rows.size() == tensors.size() && cols.size() == tensors.size(),
              "gather_channels: rows and cols need one entry per tensor (", tensors.size(),
              "), got ", rows.size(), " and ", cols.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    std::optional<at::Tensor> r = rows[i];
    std::optional<at::Tensor> c = cols[i];
    if (r.has_value()) {
      TORCH_CHECK(t.dim() >= 1, "gather_channels: tensors[", i, "] is a scalar; it has no rows");
      check_index(*r, t.size(0), t, i, "rows");
    }
    if (c.has_value()) {
      TORCH_CHECK(t.dim() >= 2, "gather_channels: tensors[", i, "] has ", t.dim(),
                  " dimension(s); cols needs at least 2");
      check_index(*c, t.size(1), t, i, "cols");
    }
  }
}

}  // namespace qmixprune
