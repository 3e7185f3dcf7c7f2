"""The FLOPs budget of a plan, without pruning: exact MACs from kept channel counts.

Pruning channels leaves spatial sizes alone, so each Conv/Linear call's MACs scale with
the fraction of its input channels and of its output channels that survive. That makes
the cost of any channel-count vector a cheap sum, which the search evaluates every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import UserError
from .flops import layer_table
from .graph import Graph
from .pruning import kept_count


@dataclass(frozen=True)
class _Layer:
    name: str
    macs: int
    in_segs: tuple  # ((group or None, size, expand), ...)
    out_segs: tuple


class CostModel:
    """``macs(counts)`` for ``counts`` = kept channels per group (absent = all kept)."""

    def __init__(self, model: nn.Module, graph: Graph, example_input: torch.Tensor) -> None:
        slots = {(s.module, s.kind): s for s in graph.slots}

        def segs(module: str, kinds: tuple[str, ...]) -> tuple:
            for kind in kinds:
                if (module, kind) in slots:
                    return tuple(
                        (graph.space_group.get(g.space), graph.space_sizes[g.space], g.expand)
                        for g in slots[(module, kind)].segs
                    )
            return ()

        self.layers = [
            _Layer(
                r.name,
                r.macs,
                segs(r.name, ("conv_in", "linear_in")),
                segs(r.name, ("conv_out", "linear_out", "dw")),
            )
            for r in layer_table(model, example_input)
        ]
        self.total = sum(layer.macs for layer in self.layers)
        self.group_channels = {g.name: g.channels for g in graph.groups}

    def layer_macs(self, counts: dict[str, int]) -> list[float]:
        return [
            layer.macs * _fraction(layer.in_segs, counts) * _fraction(layer.out_segs, counts)
            for layer in self.layers
        ]

    def macs(self, counts: dict[str, int]) -> float:
        return sum(self.layer_macs(counts))

    def ratio(self, counts: dict[str, int]) -> float:
        """MACs kept as a fraction of the unpruned model's."""
        return self.macs(counts) / self.total

    def group_macs(self) -> dict[str, float]:
        """MACs that touch each group's channels (a layer counts for its in and out groups)."""
        out = {name: 0.0 for name in self.group_channels}
        for layer in self.layers:
            for g, _, _ in {*layer.in_segs, *layer.out_segs}:
                if g is not None:
                    out[g] += layer.macs
        return out


def _fraction(segs: tuple, counts: dict[str, int]) -> float:
    if not segs:
        return 1.0
    full = sum(size * expand for _, size, expand in segs)
    kept = sum(counts.get(g, size) * expand for g, size, expand in segs)
    return kept / full


def uniform_counts(
    cost: CostModel, groups: list[str], target: float, round_to: int = 1, min_channels: int = 1
) -> dict[str, int]:
    """The same pruning ratio for every group, the smallest that keeps <= ``target`` MACs."""

    def counts(r: float) -> dict[str, int]:
        return {g: kept_count(cost.group_channels[g], r, round_to, min_channels) for g in groups}

    if cost.ratio(counts(0.999999)) > target:
        raise UserError(
            f"target {target:.3f} of the MACs is unreachable: pruning every group to its floor "
            f"keeps {cost.ratio(counts(0.999999)):.3f}"
        )
    lo, hi = 0.0, 0.999999
    for _ in range(50):
        mid = (lo + hi) / 2
        if cost.ratio(counts(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return counts(hi)


def floors(
    cost: CostModel,
    groups: list[str],
    round_to: int = 1,
    min_channels: int = 1,
    min_keep: float = 0.0,
) -> dict[str, int]:
    """The fewest channels each group may keep: ``min_keep`` of it, ``min_channels``, and a
    multiple of ``round_to``."""
    out = {}
    for g in groups:
        c = cost.group_channels[g]
        out[g] = kept_count(c, 1.0 - min_keep, round_to, max(min_channels, 1))
    return out


def check_reachable(cost: CostModel, low: dict[str, int], target: float) -> None:
    """Refuse, before any search, a target that the floors make impossible, naming why."""
    at_floor = cost.ratio(low)
    if at_floor <= target:
        return
    fixed = cost.ratio({g: 0 for g in low}) if low else 1.0
    shares = cost.group_macs()
    worst = sorted(low, key=lambda g: -shares[g] * low[g] / cost.group_channels[g])[:3]
    names = ", ".join(f"{g} (floor {low[g]} of {cost.group_channels[g]} ch)" for g in worst)
    raise UserError(
        f"target {target:.3f} of the MACs is unreachable: with every group at its floor the "
        f"model keeps {at_floor:.3f} (layers outside the prunable groups alone: {fixed:.3f}). "
        f"Largest floors: {names}. Lower --min-channels/--round-to or raise the target"
    )


def fit_to_budget(
    cost: CostModel,
    proposal: dict[str, float],
    low: dict[str, int],
    target: float,
    round_to: int = 1,
) -> dict[str, int]:
    """The budget wall: scale a proposed keep fraction per group toward its floor (or back
    toward full width) until the plan keeps at most ``target`` of the MACs, as close to it
    as the rounding allows. The proposal's shape (which groups keep more) is preserved."""
    names = list(proposal)
    full = {g: cost.group_channels[g] for g in names}
    # where each group sits between its floor (0) and full width (1); never exactly 0,
    # so that every group can grow back when the budget allows
    share = {
        g: min(1.0, max(1e-3, (proposal[g] * full[g] - low[g]) / max(full[g] - low[g], 1)))
        for g in names
    }

    def counts(alpha: float) -> dict[str, int]:
        out = {}
        for g in names:
            x = low[g] + (full[g] - low[g]) * min(1.0, share[g] * alpha)
            k = int(x / round_to + 0.5) * round_to if round_to > 1 else int(x + 0.5)
            out[g] = min(full[g], max(low[g], k))
        return out

    lo, hi = 0.0, 1.0 / min(share.values())
    if cost.ratio(counts(hi)) <= target:
        return counts(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost.ratio(counts(mid)) <= target:
            lo = mid
        else:
            hi = mid
    best = counts(lo)
    # fill what the rounding left: grow the groups furthest below their scaled proposal
    want = {g: low[g] + (full[g] - low[g]) * min(1.0, share[g] * hi) for g in names}
    grown = True
    while grown:
        grown = False
        for g in sorted(names, key=lambda n: best[n] - want[n]):
            step = min(round_to, full[g] - best[g])
            if step <= 0:
                continue
            trial = {**best, g: best[g] + step}
            if cost.ratio(trial) <= target:
                best, grown = trial, True
                break
    return best
