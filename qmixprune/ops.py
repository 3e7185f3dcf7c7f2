"""Typed wrappers of the native ops, each with its pure-PyTorch reference.

``native=None`` (the default) uses the compiled kernels when they are loaded and the
reference otherwise; tests use the reference as the answer key. Results are float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from . import native


def _use_native(native_flag: bool | None) -> bool:
    use = native.available() if native_flag is None else native_flag
    if use and not native.available():
        raise RuntimeError("the native kernels were asked for but qmixprune._C is not built")
    if use:
        _register_fakes()
    return use


@functools.cache
def _register_fakes() -> None:
    """Shape-only kernels, so the ops work under FakeTensor / torch.compile tracing."""
    lib = "qmixprune::"

    @torch.library.register_fake(lib + "filter_norms")
    def _(weights, p):
        return [w.new_empty(w.shape[0], dtype=torch.float64) for w in weights]

    @torch.library.register_fake(lib + "fpgm")
    def _(weights):
        return [w.new_empty(w.shape[0], dtype=torch.float64) for w in weights]

    @torch.library.register_fake(lib + "bn_scale")
    def _(gammas):
        return [g.new_empty(g.shape[0], dtype=torch.float64) for g in gammas]

    @torch.library.register_fake(lib + "channel_stats_")
    def _(act, abs_sum, zeros):
        return None

    @torch.library.register_fake(lib + "gather_channels")
    def _(tensors, rows, cols):
        out = []
        for t, r, c in zip(tensors, rows, cols):
            shape = list(t.shape)
            if r is not None:
                shape[0] = r.shape[0]
            if c is not None:
                shape[1] = c.shape[0]
            out.append(t.new_empty(shape))
        return out


def filter_norms(weights: Sequence[torch.Tensor], p: int = 1, native_flag: bool | None = None):
    """Per-filter L1 (p=1) or L2 (p=2) norms of every weight (filters along dim 0)."""
    if _use_native(native_flag):
        return list(torch.ops.qmixprune.filter_norms(list(weights), p))
    return [filter_norms_ref(w, p) for w in weights]


def filter_norms_ref(w: torch.Tensor, p: int) -> torch.Tensor:
    _check_ref(w, "filter_norms")
    if p not in (1, 2):
        raise RuntimeError(f"filter_norms: p must be 1 or 2, got {p}")
    rows = _rows(w)
    return rows.abs().sum(1) if p == 1 else rows.norm(dim=1)


def fpgm(weights: Sequence[torch.Tensor], native_flag: bool | None = None):
    """For each filter, the sum of its Euclidean distances to the other filters of its layer."""
    if _use_native(native_flag):
        return list(torch.ops.qmixprune.fpgm(list(weights)))
    return [fpgm_ref(w) for w in weights]


def fpgm_ref(w: torch.Tensor) -> torch.Tensor:
    _check_ref(w, "fpgm")
    rows = _rows(w)
    return torch.cdist(rows, rows).sum(1)


def bn_scale(gammas: Sequence[torch.Tensor], native_flag: bool | None = None):
    if _use_native(native_flag):
        return list(torch.ops.qmixprune.bn_scale(list(gammas)))
    return [g.detach().double().abs() for g in gammas]


def channel_stats_(
    act: torch.Tensor, abs_sum: torch.Tensor, zeros: torch.Tensor, native_flag: bool | None = None
) -> None:
    """Add this batch's per-channel sum |a| (float64) and zero count (int64) in place; for
    activation criteria (mean |a|, APoZ) from forward hooks."""
    if _use_native(native_flag):
        torch.ops.qmixprune.channel_stats_(act, abs_sum, zeros)
        return
    dims = [d for d in range(act.dim()) if d != 1]
    abs_sum += act.detach().double().abs().sum(dims)
    zeros += (act.detach() == 0).sum(dims)


def gather_channels(
    tensors: Sequence[torch.Tensor],
    rows: Sequence[torch.Tensor | None],
    cols: Sequence[torch.Tensor | None],
    native_flag: bool | None = None,
):
    """New tensors keeping ``rows[i]`` along dim 0 and ``cols[i]`` along dim 1 of each."""
    if _use_native(native_flag):
        return list(torch.ops.qmixprune.gather_channels(list(tensors), list(rows), list(cols)))
    return [gather_ref(t, r, c) for t, r, c in zip(tensors, rows, cols, strict=True)]


def gather_ref(t: torch.Tensor, r: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
    for idx, dim, name in ((r, 0, "rows"), (c, 1, "cols")):
        if idx is None:
            continue
        if t.dim() <= dim:
            raise RuntimeError(f"gather_channels: {name} needs a tensor with dim > {dim}")
        if idx.dtype != torch.long or idx.dim() != 1:
            raise RuntimeError(f"gather_channels: {name} must be 1-D int64")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= t.shape[dim]):
            raise RuntimeError(f"gather_channels: {name} index out of range")
        if idx.unique().numel() != idx.numel():
            raise RuntimeError(f"gather_channels: {name} holds duplicated indices")
    out = t.detach()
    if r is not None:
        out = out.index_select(0, r)
    if c is not None:
        out = out.index_select(1, c)
    return out.contiguous() if out is not t else out.clone()


def _rows(w: torch.Tensor) -> torch.Tensor:
    """Filters as float64 rows (an empty layer too)."""
    return w.detach().reshape(w.shape[0], math.prod(w.shape[1:])).double()


def _check_ref(w: torch.Tensor, op: str) -> None:
    if w.dim() < 1:
        raise RuntimeError(f"{op}: weights must have at least 1 dimension")
    if not w.is_floating_point():
        raise RuntimeError(f"{op}: weights must be floating point, got {w.dtype}")
