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
