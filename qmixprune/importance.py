"""Importance criteria: one score per channel of a group (higher = keep).

A criterion is a callable ``(model, group) -> Tensor[channels]``; the score of a group sums
over every layer that makes its channels (tied convs of a residual stage, depthwise convs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

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
            rows.append(w.reshape(w.shape[0], -1))
    return rows


def l1(model: nn.Module, group: Group) -> torch.Tensor:
    return sum(r.abs().sum(1, dtype=torch.float64) for r in filter_rows(model, group))


def l2(model: nn.Module, group: Group) -> torch.Tensor:
    return sum(r.double().norm(dim=1) for r in filter_rows(model, group))


def fpgm(model: nn.Module, group: Group) -> torch.Tensor:
    """Sum of each filter's distances to the other filters of its layer (geometric median):
    filters near the median are the most replaceable, so they score lowest."""
    return sum(torch.cdist(r.double(), r.double()).sum(1) for r in filter_rows(model, group))


def bn_scale(model: nn.Module, group: Group) -> torch.Tensor:
    modules = dict(model.named_modules())
    scores = [
        modules[s.module].weight.detach().abs().double()
        for s in group.slots
        if s.kind == "bn" and len(s.segs) == 1 and modules[s.module].weight is not None
    ]
    return sum(scores) if scores else l1(model, group)


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


def ranks(model: nn.Module, groups: list[Group], criterion: str | Criterion) -> dict[str, list]:
    """For each group, its channel indices from most to least important (ties: lower index)."""
    fn = get_criterion(criterion)
    out = {}
    for g in groups:
        scores = fn(model, g)
        out[g.name] = sorted(range(g.channels), key=lambda i: (-float(scores[i]), i))
    return out
