"""Typed wrappers of the native ops, each with its pure-PyTorch reference.

``native_flag=None`` (the default) runs each device's tensors on that device's compiled
kernels when they are loaded (CPU tensors on the CPU kernels, CUDA tensors on the CUDA
kernels) and on the reference otherwise, with one warning per device; ``True`` requires the
kernels, ``False`` forces the reference. Tests use the reference as the answer key. Results
are float64, on the inputs' device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from . import native

# the kernels' message (csrc/checks.h) for an empty batch, shared by the reference path
EMPTY_BATCH = "channel_stats_: the batch is empty (N = 0): give at least one sample"


def _use_native(native_flag: bool | None, device: torch.device) -> bool:
    """Whether tensors on ``device`` go to the native kernels."""
    have = native.available(device.type)
    if native_flag is None:
        if not have:
            native.warn_reference(device.type)
        use = have
    else:
        use = native_flag
    if use and not have:
        raise RuntimeError(
            f"the native kernels were asked for but {device.type} tensors have none "
            f"({native.why_not(device.type)})"
        )
    if use:
        _register_fakes()
    return use


def _per_device(tensors: list, native_flag: bool | None, run_native, run_ref) -> list:
    """Results for ``tensors`` computed per device: ``run_native(positions)`` or
    ``run_ref(positions)`` on the positions of the tensors of one device (one native call
    each, as a model spread over devices would need)."""
    groups: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.device, []).append(i)
    out: list = [None] * len(tensors)
    for device, pos in groups.items():
        run = run_native if _use_native(native_flag, device) else run_ref
        for i, r in zip(pos, run(pos), strict=True):
            out[i] = r
    return out


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
    ws = list(weights)
    return _per_device(
        ws,
        native_flag,
        lambda pos: torch.ops.qmixprune.filter_norms([ws[i] for i in pos], p),
        lambda pos: [filter_norms_ref(ws[i], p) for i in pos],
    )


def filter_norms_ref(w: torch.Tensor, p: int) -> torch.Tensor:
    _check_ref(w, "filter_norms")
    if p not in (1, 2):
        raise RuntimeError(f"filter_norms: p must be 1 or 2, got {p}")
    rows = _rows(w)
    return rows.abs().sum(1) if p == 1 else rows.norm(dim=1)


def fpgm(weights: Sequence[torch.Tensor], native_flag: bool | None = None):
    """For each filter, the sum of its Euclidean distances to the other filters of its layer."""
    ws = list(weights)
    return _per_device(
        ws,
        native_flag,
        lambda pos: torch.ops.qmixprune.fpgm([ws[i] for i in pos]),
        lambda pos: [fpgm_ref(ws[i]) for i in pos],
    )


def fpgm_ref(w: torch.Tensor) -> torch.Tensor:
    _check_ref(w, "fpgm")
    rows = _rows(w)
    return torch.cdist(rows, rows).sum(1)


def bn_scale(gammas: Sequence[torch.Tensor], native_flag: bool | None = None):
    """|gamma| of every BatchNorm weight, float64."""
    gs = list(gammas)
    return _per_device(
        gs,
        native_flag,
        lambda pos: torch.ops.qmixprune.bn_scale([gs[i] for i in pos]),
        lambda pos: [gs[i].detach().double().abs() for i in pos],
    )


def channel_stats_(
    act: torch.Tensor, abs_sum: torch.Tensor, zeros: torch.Tensor, native_flag: bool | None = None
) -> None:
    """Add this batch's per-channel sum |a| (float64) and zero count (int64) in place; for
    activation criteria (mean |a|, APoZ) from forward hooks. An empty batch is an error."""
    if _use_native(native_flag, act.device):
        torch.ops.qmixprune.channel_stats_(act, abs_sum, zeros)
        return
    if act.dim() >= 2 and act.shape[0] == 0:
        raise RuntimeError(EMPTY_BATCH)
    dims = [d for d in range(act.dim()) if d != 1]
    abs_sum += act.detach().double().abs().sum(dims)
    zeros += (act.detach() == 0).sum(dims)


def gather_channels(
    tensors: Sequence[torch.Tensor],
    rows: Sequence[torch.Tensor | None],
    cols: Sequence[torch.Tensor | None],
    native_flag: bool | None = None,
):
    """New tensors keeping ``rows[i]`` along dim 0 and ``cols[i]`` along dim 1 of each
    (the index tensors on their tensor's device)."""
    ts, rs, cs = list(tensors), list(rows), list(cols)
    if not len(ts) == len(rs) == len(cs):
        raise RuntimeError(
            f"gather_channels: rows and cols need one entry per tensor ({len(ts)}), got "
            f"{len(rs)} and {len(cs)}"
        )
    return _per_device(
        ts,
        native_flag,
        lambda pos: torch.ops.qmixprune.gather_channels(
            [ts[i] for i in pos], [rs[i] for i in pos], [cs[i] for i in pos]
        ),
        lambda pos: [gather_ref(ts[i], rs[i], cs[i]) for i in pos],
    )


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
    return out.clone() if r is None and c is None else out.contiguous()  # never a view


def _rows(w: torch.Tensor) -> torch.Tensor:
    """Filters as float64 rows (an empty layer too)."""
    return w.detach().reshape(w.shape[0], math.prod(w.shape[1:])).double()


def _check_ref(w: torch.Tensor, op: str) -> None:
    if w.dim() < 1:
        raise RuntimeError(f"{op}: weights must have at least 1 dimension")
    if not w.is_floating_point():
        raise RuntimeError(f"{op}: weights must be floating point, got {w.dtype}")
