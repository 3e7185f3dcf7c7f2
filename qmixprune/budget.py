"""The FLOPs budget of a plan, without pruning: exact MACs from kept channel counts.

Pruning channels leaves spatial sizes alone, so each Conv/Linear call's MACs scale with
the fraction of its input channels and of its output channels that survive. That makes
the cost of any channel-count vector a cheap sum, which the search evaluates every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import UserError
from .flops import LayerCount, layer_table
from .graph import Graph
from .pruning import kept_count
from .rounding import round_to_multiple


@dataclass(frozen=True)
class _Layer:
    name: str
    macs: int
    in_segs: tuple  # ((group or None, size, expand), ...)
    out_segs: tuple


class CostModel:
    """``macs(counts)`` for ``counts`` = kept channels per group (absent = all kept)."""

    def __init__(
        self,
        model: nn.Module,
        graph: Graph,
        example_input: torch.Tensor,
        rows: list[LayerCount] | None = None,
    ) -> None:
        """``rows``: ``flops.measure``'s for ``model`` on ``example_input``, when the caller
        has them (the model is then not run again)."""
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
                segs(r.name, ("conv_in", "gconv_in", "linear_in", "convT_in")),
                segs(r.name, ("conv_out", "linear_out", "dw", "convT_out")),
            )
            for r in (rows if rows is not None else layer_table(model, example_input))
        ]
        self.total = sum(layer.macs for layer in self.layers)
        self.group_channels = {g.name: g.channels for g in graph.groups}

    def layer_macs(self, counts: dict[str, int]) -> list[float]:
        return [
            layer.macs
            * kept_fraction(layer.in_segs, counts)
            * kept_fraction(layer.out_segs, counts)
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


def kept_fraction(segs: tuple, counts: dict[str, int]) -> float:
    if not segs:
        return 1.0
    full = sum(size * expand for _, size, expand in segs)
    kept = sum(counts.get(g, size) * expand for g, size, expand in segs)
    return kept / full


class Budget:
    """The targets a plan must meet, each a fraction of the unpruned model's cost (MACs,
    measured latency, or both). ``load(counts) <= 1`` means every target is met."""

    def __init__(
        self,
        cost: CostModel,
        target_flops: float | None = None,
        latency=None,
        target_latency: float | None = None,
    ) -> None:
        self.cost, self.group_channels = cost, cost.group_channels
        self.parts: list[tuple[str, object, float]] = []
        if target_flops is not None:
            self.parts.append(("MACs", cost, target_flops))
        if target_latency is not None:
            if latency is None:
                raise UserError("a latency target needs a latency table (--latency-table)")
            self.parts.append(("latency", latency, target_latency))
        if not self.parts:
            raise UserError("set a FLOPs target, a latency target, or both")
        for label, _, t in self.parts:
            if not 0.0 < t < 1.0:
                raise UserError(f"the {label} target must be in (0, 1), got {t}")

    def load(self, counts: dict[str, int]) -> float:
        return max(model.ratio(counts) / t for _, model, t in self.parts)

    def ratios(self, counts: dict[str, int]) -> dict[str, float]:
        return {label: model.ratio(counts) for label, model, _ in self.parts}


def uniform_counts(
    budget: Budget, groups: list[str], round_to: int = 1, min_channels: int = 1
) -> dict[str, int]:
    """The same pruning ratio for every group, the smallest that meets the budget."""

    def counts(r: float) -> dict[str, int]:
        return {g: kept_count(budget.group_channels[g], r, round_to, min_channels) for g in groups}

    check_reachable(budget, counts(0.999999))
    ratio, _ = _boundary(lambda r: budget.load(counts(r)) <= 1.0, good=0.999999, bad=0.0)
    return counts(ratio)


def _boundary(ok, good: float, bad: float, steps: int = 50) -> tuple[float, float]:
    """Bisect between a point where ``ok`` holds and one where it fails (``ok`` monotone
    between them); returns the closest pair (good, bad)."""
    for _ in range(steps):
        mid = (good + bad) / 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, bad


def multiples(graph: Graph, groups: list[str], round_to: int) -> dict[str, int]:
    """What each group keeps a multiple of: ``round_to``, and its period (a group feeding
    grouped convs keeps the same positions in each of its blocks)."""
    return {g: math.lcm(round_to, graph.group(g).period) for g in groups}


def _multiple(round_to: int | dict[str, int], group: str) -> int:
    return round_to[group] if isinstance(round_to, dict) else round_to


def floors(
    cost: CostModel,
    groups: list[str],
    round_to: int | dict[str, int] = 1,
    min_channels: int = 1,
    min_keep: float = 0.0,
) -> dict[str, int]:
    """The fewest channels each group may keep: ``min_keep`` of it, ``min_channels``, and a
    multiple of ``round_to`` (one for all, or per group: ``multiples``)."""
    out = {}
    for g in groups:
        c = cost.group_channels[g]
        out[g] = kept_count(c, 1.0 - min_keep, _multiple(round_to, g), max(min_channels, 1))
    return out


def reachable_round_to(
    budget: Budget, groups: list[str], round_to: int, min_channels: int = 1, min_keep=0.0
) -> int:
    """``round_to``, halved until the floors it implies let ``budget`` be met (a coarse
    multiple can make a low target impossible for narrow layers: 16 channels rounded to
    16 cannot be pruned)."""
    while round_to > 1:
        if budget.load(floors(budget.cost, groups, round_to, min_channels, min_keep)) <= 1.0:
            break
        round_to //= 2
    return round_to


def check_reachable(budget: Budget, low: dict[str, int]) -> None:
    """Refuse, before any search, targets that the floors make impossible, naming why."""
    if budget.load(low) <= 1.0:
        return
    cost = budget.cost
    shares = cost.group_macs()
    worst = sorted(low, key=lambda g: -shares[g] * low[g] / cost.group_channels[g])[:3]
    names = ", ".join(f"{g} (floor {low[g]} of {cost.group_channels[g]} ch)" for g in worst)
    zero = {g: 0 for g in low}
    missed = "; ".join(
        f"target {t:g} of the {label} is unreachable: with every group at its floor the "
        f"model keeps {model.ratio(low):.3f} (what no pruning removes: {model.ratio(zero):.3f})"
        for label, model, t in budget.parts
        if model.ratio(low) > t
    )
    raise UserError(
        f"{missed}. Largest floors: {names}. Lower --min-channels/--round-to or raise the target"
    )


def fit_to_budget(
    budget: Budget,
    proposal: dict[str, float],
    low: dict[str, int],
    round_to: int | dict[str, int] = 1,
) -> dict[str, int]:
    """The budget wall: scale a proposed keep fraction per group toward its floor (or back
    toward full width) until the plan just meets the budget, as close to it as the
    rounding allows. The proposal's shape (which groups keep more) is preserved."""
    names = list(proposal)
    full = {g: budget.group_channels[g] for g in names}
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
            out[g] = min(full[g], max(low[g], round_to_multiple(x, _multiple(round_to, g))))
        return out

    top = 1.0 / min(share.values())
    if budget.load(counts(top)) <= 1.0:
        return counts(top)
    lo, hi = _boundary(lambda a: budget.load(counts(a)) <= 1.0, good=0.0, bad=top, steps=40)
    best = counts(lo)
    # fill what the rounding left: grow the groups furthest below their scaled proposal
    want = {g: low[g] + (full[g] - low[g]) * min(1.0, share[g] * hi) for g in names}
    grown = True
    while grown:
        grown = False
        for g in sorted(names, key=lambda n: best[n] - want[n]):
            step = min(_multiple(round_to, g), full[g] - best[g])
            if step <= 0:
                continue
            trial = {**best, g: best[g] + step}
            if budget.load(trial) <= 1.0:
                best, grown = trial, True
                break
    return best
