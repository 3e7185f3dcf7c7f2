"""Physical pruning: a plan (kept channel indices per group) applied to a copy of a model.

The result is a smaller dense model of the same Python classes, with every coupled tensor
sliced; nothing is masked.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import ops
from .errors import UserError
from .graph import Graph, Group, analyze
from .importance import Criterion, ranks
from .rounding import round_to_multiple

# A pruned model carries its plan relative to the unpruned model, so that it can be saved
# as data and restored onto a fresh instance of the user's class: {group: {"channels":
# width before any pruning, "keep": kept indices of those}}.
PLAN_ATTR = "qmixprune_plan"
SHAPE_ATTR = "qmixprune_input_shape"
# the submodules analysed when the model could not be traced whole (restored the same way)
PARTS_ATTR = "qmixprune_parts"


@dataclass(frozen=True)
class Plan:
    """Kept channel indices (sorted) for each pruned group; absent groups are kept whole."""

    keep: dict[str, tuple[int, ...]]

    def channels(self) -> dict[str, int]:
        return {name: len(idx) for name, idx in self.keep.items()}


def kept_count(channels: int, ratio: float, round_to: int = 1, min_channels: int = 1) -> int:
    """How many of ``channels`` survive removing ``ratio`` of them, rounded to a multiple of
    ``round_to`` (nearest, never below one multiple) and never below ``min_channels``."""
    keep = channels - int(ratio * channels + 1e-9)
    if keep < channels and round_to > 1:  # an untouched group keeps its odd width
        keep = round_to_multiple(keep, round_to)
    return max(1, min(channels, max(keep, min_channels)))


def make_plan(
    model: nn.Module,
    graph: Graph,
    ratios: float | dict[str, float],
    importance: str | Criterion = "l1",
    round_to: int = 1,
    min_channels: int = 1,
) -> Plan:
    """Choose the channels to keep: the most important ``1 - ratio`` of each group."""
    if round_to < 1 or min_channels < 1:
        raise UserError("round_to and min_channels must be >= 1")
    per_group = _ratios(graph, ratios)
    counts = {}
    for name, r in per_group.items():
        g = graph.group(name)
        multiple = math.lcm(round_to, g.period)
        counts[name] = period_count(g, kept_count(g.channels, r, multiple, min_channels))
    return plan_for_counts(
        graph, counts, ranks(model, [graph.group(n) for n in counts], importance)
    )


def plan_for_counts(
    graph: Graph, counts: dict[str, int], ranking: dict[str, list[int]] | None = None
) -> Plan:
    """Keep ``counts[group]`` channels of each group: the first ones of ``ranking[group]``
    (most important first), or simply the first ones (to rebuild a saved shape). A grouped
    group keeps a multiple of its period (``period_count``)."""
    keep = {}
    for name, k in counts.items():
        g = graph.group(name)
        if not g.prunable and k != g.channels:
            raise UserError(f"group {name} cannot be pruned: {g.reason}")
        if not 1 <= k <= g.channels:
            raise UserError(f"group {name} cannot keep {k} of its {g.channels} channels")
        k = period_count(g, k)
        if k < g.channels:
            order = ranking[name] if ranking is not None else _periodic_order(g)
            keep[name] = tuple(sorted(order[:k]))
    return Plan(keep)


def period_count(group: Group, k: int) -> int:
    """``k`` rounded to a multiple of the group's period (grouped convs keep the same
    positions in each of ``period`` blocks): nearest, never below one per block."""
    if k % group.period == 0:
        return k
    return min(group.channels, round_to_multiple(k, group.period))


def _periodic_order(group: Group) -> list[int]:
    """Channel order whose every prefix of a multiple of ``period`` channels keeps the same
    positions in every block: position 0 of each block, then position 1, ..."""
    block = group.channels // group.period
    return [b * block + i for i in range(block) for b in range(group.period)]


def _check_periods(graph: Graph, plan: Plan) -> None:
    for name, kept in plan.keep.items():
        g = graph.group(name)
        if g.period == 1:
            continue
        block = g.channels // g.period
        ok = len(kept) % g.period == 0
        if ok:  # kept is sorted: row b holds block b's channels
            idx = torch.tensor(kept, dtype=torch.long).reshape(g.period, -1)
            ok = torch.equal(idx, idx[0] + block * torch.arange(g.period)[:, None])
        if not ok:
            raise UserError(
                f"group {name} feeds grouped convs: its kept channels must be the same positions "
                f"in each of its {g.period} blocks of {block}"
            )


def _ratios(graph: Graph, ratios: float | dict[str, float]) -> dict[str, float]:
    if isinstance(ratios, (int, float)):
        per_group = {g.name: float(ratios) for g in graph.prunable}
    else:
        unknown = [n for n in ratios if n not in graph.space_group.values()]
        if unknown:
            raise UserError(
                f"no group named {unknown}; prunable groups: {[g.name for g in graph.prunable]}"
            )
        blocked = [n for n in ratios if not graph.group(n).prunable and ratios[n] > 0]
        if blocked:
            reasons = "; ".join(f"{n}: {graph.group(n).reason}" for n in blocked)
            raise UserError(f"groups cannot be pruned: {reasons}")
        per_group = {n: float(r) for n, r in ratios.items() if graph.group(n).prunable}
    bad = {n: r for n, r in per_group.items() if not 0.0 <= r < 1.0}
    if bad:
        raise UserError(f"pruning ratios must be in [0, 1): got {bad}")
    return per_group


def slot_indices(
    graph: Graph, plan: Plan, segs, device: torch.device | None = None
) -> torch.Tensor | None:
    """Indices along one tensor dimension that survive ``plan``; None if all survive. Made
    on ``device``, the indexed tensor's (a GPU tensor's cut runs on the GPU)."""
    parts, offset, changed = [], 0, False
    for seg in segs:
        size = graph.space_sizes[seg.space]
        kept = plan.keep.get(graph.space_group.get(seg.space, ""))
        if kept is None:
            idx = torch.arange(size, device=device)
        else:
            idx, changed = torch.tensor(kept, dtype=torch.long, device=device), True
        if seg.expand > 1:
            step = torch.arange(seg.expand, device=device)
            idx = (idx[:, None] * seg.expand + step).reshape(-1)
        parts.append(idx + offset)
        offset += size * seg.expand
    return torch.cat(parts) if changed else None


def _device(m: nn.Module) -> torch.device | None:
    """Where a module's own tensors are (None: it has none)."""
    t = next(m.parameters(recurse=False), None)
    t = t if t is not None else next(m.buffers(recurse=False), None)
    return t.device if t is not None else None


def plan_cuts(model: nn.Module, graph: Graph, plan: Plan):
    """What removing ``plan`` cuts: ``(keys, tensors, rows, cols, sizes)`` where ``keys[i]``
    is (module, tensor name) of ``tensors[i]``, kept along dim 0 by ``rows[i]`` and dim 1 by
    ``cols[i]`` (None: all), and ``sizes`` the new size attributes per module."""
    _check_periods(graph, plan)
    modules = dict(model.named_modules())
    cuts: dict[tuple[str, str], list] = {}
    sizes: dict[str, dict[str, int]] = {}
    for slot in graph.slots:
        m = modules[slot.owner]
        idx = slot_indices(graph, plan, slot.segs, _device(m))
        if idx is None:
            continue
        if slot.kind == "scale":  # a per-channel parameter (layer scale): its dim 0
            cuts.setdefault((slot.owner, slot.module.rpartition(".")[2]), [None, None])[0] = idx
            continue
        if slot.kind == "gconv_in":  # every block keeps these positions (_check_periods)
            cuts.setdefault((slot.module, "weight"), [None, None])[1] = idx[: len(idx) // m.groups]
            sizes.setdefault(slot.module, {})["in_channels"] = len(idx)
            continue
        for name, dim in _TENSORS[slot.kind]:
            if getattr(m, name, None) is not None:
                cuts.setdefault((slot.module, name), [None, None])[dim] = idx
        for attr in _ATTRS[slot.kind]:
            sizes.setdefault(slot.module, {})[attr] = len(idx)
    keys = list(cuts)
    tensors = [getattr(modules[m], n).data for m, n in keys]
    return keys, tensors, [cuts[k][0] for k in keys], [cuts[k][1] for k in keys], sizes


def apply_plan(model: nn.Module, graph: Graph, plan: Plan) -> nn.Module:
    """A pruned deep copy of ``model``; the original is untouched. Every tensor of the plan
    is cut in one ``ops.gather_channels`` call (native kernels where built)."""
    keys, tensors, rows, cols, sizes = plan_cuts(model, graph, plan)
    # the native op cannot dispatch on an empty list (a plan that keeps everything)
    cut = ops.gather_channels(tensors, rows, cols) if keys else []
    source = dict(model.named_modules())
    originals = [getattr(source[m], n) for m, n in keys]
    # the tensors about to be replaced by their cut are not copied (most of the weights:
    # a search prunes hundreds of plans): the copy holds the originals until replaced
    memo = _SkipMemo([_own(source[m], n) for m, n in keys])
    new = copy.deepcopy(model, memo)
    if not memo.each_reached_once():  # the copy would share an original: copy everything
        new = copy.deepcopy(model)
    modules = dict(new.named_modules())
    for (m, n), old, data in zip(keys, originals, cut):
        if isinstance(old, nn.Parameter):
            setattr(modules[m], n, nn.Parameter(data, requires_grad=old.requires_grad))
        else:
            setattr(modules[m], n, data)
    for m, attrs in sizes.items():
        for attr, n in attrs.items():
            setattr(modules[m], attr, (n,) if attr == "normalized_shape" else n)
    for s in graph.sizes:  # the splits' sizes follow the kept counts
        counts = [_kept_width(graph, plan, piece) for piece in s.pieces]
        old = getattr(modules[s.module], s.attr)
        setattr(modules[s.module], s.attr, counts[0] if s.whole else type(old)(counts))
    setattr(new, PLAN_ATTR, compose_plans(carried_plan(model), graph, plan))
    setattr(new, SHAPE_ATTR, list(graph.input_shape))
    if graph.parts:
        setattr(new, PARTS_ATTR, list(graph.parts))
    return new


def _kept_width(graph: Graph, plan: Plan, segs) -> int:
    """How many entries a run of segments keeps under ``plan``."""
    width = 0
    for seg in segs:
        kept = plan.keep.get(graph.space_group.get(seg.space, ""))
        width += (graph.space_sizes[seg.space] if kept is None else len(kept)) * seg.expand
    return width


def _own(m: nn.Module, name: str) -> torch.Tensor | None:
    """The module's own parameter or buffer ``name`` (None: a computed attribute, e.g. a
    parametrization's output)."""
    return m._parameters.get(name, m._buffers.get(name))


class _SkipMemo(dict):
    """A deepcopy memo under which ``tensors`` are not copied, counting how often the copy
    reaches each: more than once (tied to another module, also held in a list) and the copy
    would share that original, so the caller copies everything instead."""

    def __init__(self, tensors: list[torch.Tensor | None]) -> None:
        super().__init__({id(t): t for t in tensors if t is not None})
        self.reached = dict.fromkeys(self, 0)

    def get(self, key, default=None):
        if key in self.reached:
            self.reached[key] += 1
        return super().get(key, default)

    def each_reached_once(self) -> bool:
        # 0 reaches (a deepcopy that bypasses ``get``) fails safe too
        return all(n == 1 for n in self.reached.values())


def carried_plan(model: nn.Module) -> dict[str, dict]:
    """The plan a pruned model carries, relative to the unpruned model ({} if unpruned):
    ``{group: {"channels": original width, "keep": [kept original indices]}}``."""
    return {k: dict(v) for k, v in getattr(model, PLAN_ATTR, {}).items()}


def compose_plans(before: dict[str, dict], graph: Graph, plan: Plan) -> dict[str, dict]:
    """The carried plan after pruning ``plan`` on a model that carried ``before``: indices
    of a second pruning are positions among the channels the first one kept."""
    out = {k: dict(v) for k, v in before.items()}
    for name, kept in plan.keep.items():
        width = graph.group(name).channels
        old = out.get(name, {"channels": width, "keep": list(range(width))})
        if len(old["keep"]) != width:
            raise UserError(
                f"group {name} has {width} channels but the model's carried plan kept "
                f"{len(old['keep'])}: the model was changed after pruning"
            )
        out[name] = {"channels": old["channels"], "keep": [old["keep"][i] for i in kept]}
    return out


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    ratios: float | dict[str, float],
    importance: str | Criterion = "l1",
    round_to: int = 1,
    min_channels: int = 1,
    parts: list[str] | None = None,
) -> nn.Module:
    """Remove the least important ``ratios`` of channels of every group (or of the named
    groups) and return a new, smaller dense model. ``parts``: the submodules to analyse
    when the model cannot be traced whole (default: found; see ``analyze``)."""
    graph = analyze(model, example_input, parts)
    plan = make_plan(model, graph, ratios, importance, round_to, min_channels)
    return apply_plan(model, graph, plan)


# Which tensors (and along which dim) and which size attributes each slot kind cuts.
_TENSORS = {
    "conv_out": (("weight", 0), ("bias", 0)),
    "conv_in": (("weight", 1),),
    "convT_out": (("weight", 1), ("bias", 0)),
    "convT_in": (("weight", 0),),
    "dw": (("weight", 0), ("bias", 0)),
    "linear_out": (("weight", 0), ("bias", 0)),
    "linear_in": (("weight", 1),),
    "bn": (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
    "ln": (("weight", 0), ("bias", 0)),
}
_ATTRS = {
    "conv_out": ("out_channels",),
    "conv_in": ("in_channels",),
    "convT_out": ("out_channels",),
    "convT_in": ("in_channels",),
    "dw": ("in_channels", "out_channels", "groups"),
    "linear_out": ("out_features",),
    "linear_in": ("in_features",),
    "bn": ("num_features",),
    "ln": ("normalized_shape",),
}
