"""Importance criteria: one score per channel of a group (higher = keep).

A criterion is a callable ``(model, group) -> Tensor[channels]``; the score of a group sums
over every layer that makes its channels (tied convs of a residual stage, depthwise convs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from . import ops
from .errors import UserError
from .graph import Group
from .graph.types import PRODUCER_KINDS

Criterion = Callable[[nn.Module, Group], torch.Tensor]


def filter_rows(model: nn.Module, group: Group) -> list[torch.Tensor]:
    """The weights that make the group's channels, one ``[channels, -1]`` matrix per layer."""
    modules = dict(model.named_modules())
    rows = []
    for slot in group.slots:
        if slot.kind in PRODUCER_KINDS:
            w = modules[slot.module].weight.detach()
            if slot.kind == "convT_out":  # a transposed conv's filters are its dim 1
                w = w.transpose(0, 1)
            w = w.reshape(w.shape[0], -1)
            # a layer whose output was cut into pieces (a chunk) makes the group's
            # channels once per piece of it
            ranges = slot.ranges(set(group.spaces)) if slot.widths else [(0, len(w))]
            rows.extend(w[a:b] for a, b in ranges)
    return rows


def l1(model: nn.Module, group: Group) -> torch.Tensor:
    return sum(ops.filter_norms(filter_rows(model, group), 1))


def l2(model: nn.Module, group: Group) -> torch.Tensor:
    return sum(ops.filter_norms(filter_rows(model, group), 2))


def fpgm(model: nn.Module, group: Group) -> torch.Tensor:
    """Sum of each filter's distances to the other filters of its layer (geometric median):
    filters near the median are the most replaceable, so they score lowest."""
    return sum(ops.fpgm(filter_rows(model, group)))


def bn_scale(model: nn.Module, group: Group) -> torch.Tensor:
    modules = dict(model.named_modules())
    gammas = [
        modules[s.module].weight
        for s in group.slots
        if s.kind == "bn" and len(s.segs) == 1 and modules[s.module].weight is not None
    ]
    return sum(ops.bn_scale(gammas)) if gammas else l1(model, group)


def random_scores(seed: int = 0) -> Criterion:
    def score(model: nn.Module, group: Group) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + sum(map(ord, group.name)))
        return torch.rand(group.channels, generator=g, dtype=torch.float64)

    return score


CRITERIA: dict[str, Criterion] = {"l1": l1, "l2": l2, "fpgm": fpgm, "bn_scale": bn_scale}


def get_criterion(name_or_fn: str | Criterion) -> Criterion:
    """A criterion by name (``l1``, ``l2``, ``fpgm``, ``bn_scale``, ``random``) or as given."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn == "random":
        return random_scores()
    if name_or_fn not in CRITERIA:
        raise UserError(f"unknown importance {name_or_fn!r}; choose one of {[*CRITERIA, 'random']}")
    return CRITERIA[name_or_fn]


def group_scores(model: nn.Module, groups: list[Group], criterion: str | Criterion):
    """Scores of every group; the filter criteria go through ONE native call for the whole
    model (``ops``), summed back per group."""
    if not groups:
        return {}
    if criterion in _BATCHED:
        rows = [filter_rows(model, g) for g in groups]
        flat = [r for rs in rows for r in rs]
        scores = _BATCHED[criterion](flat)
        out, i = {}, 0
        for g, rs in zip(groups, rows):
            out[g.name] = sum(scores[i : i + len(rs)])
            i += len(rs)
        return out
    fn = get_criterion(criterion)
    return {g.name: fn(model, g) for g in groups}


def ranks(
    model: nn.Module,
    groups: list[Group],
    criterion: str | Criterion,
    all_scores: dict[str, torch.Tensor] | None = None,
) -> dict[str, list]:
    """For each group, its channel indices from most to least important (ties: lower index);
    ``all_scores`` (from ``group_scores``) when the caller has them already. A grouped group
    (``period`` blocks) ranks block positions by their scores summed over the blocks and
    lists each position in every block in turn, so any prefix of a multiple of ``period``
    keeps the same positions in every block."""
    out = {}
    if all_scores is None:
        all_scores = group_scores(model, groups, criterion)
    for g in groups:
        block = g.channels // g.period
        scores = all_scores[g.name].reshape(g.period, block).sum(0).tolist()
        order = sorted(range(block), key=lambda i: (-scores[i], i))
        out[g.name] = [b * block + i for i in order for b in range(g.period)]
    return out


_BATCHED = {
    "l1": lambda ws: ops.filter_norms(ws, 1),
    "l2": lambda ws: ops.filter_norms(ws, 2),
    "fpgm": ops.fpgm,
}
