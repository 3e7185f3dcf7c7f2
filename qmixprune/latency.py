"""Measured latency as a budget: the latency model of a plan, from a profiled table.

``LatencyModel`` interpolates the per-layer grid of a table made by ``qmixprune profile``
(``deploy/profile.py``), calibrates the sum of layers against the whole-model timings and
fits how much slower layers at each finer alignment ran. ``load_table`` and ``check_table``
refuse, before any work, a file that is not such a table or one made for another model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .budget import CostModel, kept_fraction
from .errors import UserError


def load_table(path: str | Path) -> dict:
    path = Path(path)
    try:
        table = json.loads(path.read_text())
        assert isinstance(table["layers"], dict) and table["total_ms"] > 0
    except (OSError, ValueError, KeyError, AssertionError, TypeError) as exc:
        raise UserError(f"{path} is not a latency table from `qmixprune profile`: {exc}") from exc
    return table


def check_table(
    table: dict, model: nn.Module, example_input: torch.Tensor, rows: list | None = None
) -> None:
    """Refuse, before any work, a table profiled for another model or for this one at
    another width (its layers' full channel counts must be the model's). ``rows``:
    ``flops.measure``'s for ``model``, when the caller has them."""
    from .flops import layer_table

    modules = dict(model.named_modules())
    rows = rows if rows is not None else layer_table(model, example_input)
    names = list(dict.fromkeys(r.name for r in rows))
    missing = [n for n in names if n not in table["layers"]]
    if missing:
        raise UserError(
            f"the latency table was made for another model (no layers {missing[:3]}): "
            "profile this model with `qmixprune profile`"
        )
    for name in names:
        m, t = modules[name], table["layers"][name]
        full = (m.in_features, m.out_features) if isinstance(m, nn.Linear) else None
        if isinstance(m, nn.Conv2d):
            full = (m.in_channels, m.out_channels)
        if full is not None and (t["in"][-1], t["out"][-1]) != full:
            raise UserError(
                f"the latency table was profiled at another width: layer {name} has "
                f"{t['in'][-1]}->{t['out'][-1]} channels there, {full[0]}->{full[1]} here "
                "(another --width?): profile this model with `qmixprune profile`"
            )


class LatencyModel:
    """Predicted latency (ms) of a plan, and its ratio to the unpruned model's."""

    def __init__(self, table: dict, cost: CostModel) -> None:
        missing = [layer.name for layer in cost.layers if layer.name not in table["layers"]]
        if missing:
            raise UserError(
                f"the latency table does not cover layers {missing[:5]}: "
                "profile this model (`qmixprune profile`)"
            )
        self.table, self.cost = table, cost
        self.full = {name: (t["in"][-1], t["out"][-1]) for name, t in table["layers"].items()}
        self.multiple = int(table.get("round_to", 1))
        self.penalty: dict[int, float] = {}  # none while fitting: calibration is aligned
        self.offset, self.scale = self._fit(table)
        self.penalty = self._fit_penalties(table.get("misaligned", []))
        self.base = self.ms({})

    def _fit(self, table: dict) -> tuple[float, float]:
        """Whole-model ms ~ offset + scale * (sum of isolated layers), least squares over the
        unpruned model and the calibration points; proportional when they cannot fit."""
        xs = [self._sum({})] + [self._sum(p["channels"]) for p in table.get("calibration", [])]
        ys = [table["total_ms"]] + [p["ms"] for p in table.get("calibration", [])]
        if len(xs) >= 2 and max(xs) > min(xs):
            scale, offset = np.polyfit(xs, ys, 1)
            if scale > 0 and offset >= 0:
                return float(offset), float(scale)
        return 0.0, (ys[0] / xs[0] if xs[0] > 0 else 1.0)

    def _parts(self, counts: dict[str, int]) -> tuple[float, dict[int, float]]:
        """Sum of isolated-layer times: of layers whose pruned widths are multiples of the
        profiled multiple, and of the others by the coarsest alignment they have."""
        aligned, other = 0.0, {}
        for layer in self.cost.layers:
            t = self.table["layers"][layer.name]
            fin, fout = self.full[layer.name]
            ci = fin * kept_fraction(layer.in_segs, counts)
            co = fout * kept_fraction(layer.out_segs, counts)
            ms = _bilinear(t["in"], t["out"], t["ms"], ci, co)
            a = self._alignment(ci, co, fin, fout)
            if a is None:
                aligned += ms
            else:
                other[a] = other.get(a, 0.0) + ms
        return aligned, other

    def _alignment(self, ci: float, co: float, fin: int, fout: int) -> int | None:
        """None when every pruned width is a multiple of the profiled multiple (widths left
        whole are the model's own: the first conv's 3 image channels cost nothing extra);
        else the largest power of two dividing them all."""
        pruned = [round(w) for w, full in ((ci, fin), (co, fout)) if round(w) != full]
        a = self.multiple
        while a > 1 and not all(w % a == 0 for w in pruned):
            a //= 2
        return None if a == self.multiple else a

    def _fit_penalties(self, points: list[dict]) -> dict[int, float]:
        """Per alignment finer than the profiled multiple: how much slower its layers ran in
        the whole-model timings of uniform plans rounded to it, once the calibrated model
        accounts for the aligned layers (geometric mean over the points; at least 1)."""
        found: dict[int, list[float]] = {}
        for p in points:
            aligned, other = self._parts(p["channels"])
            slow = sum(other.values())
            if slow <= 0:
                continue
            excess = (p["ms"] - self.offset - self.scale * aligned) / (self.scale * slow)
            found.setdefault(min(other), []).append(max(excess, 1.0))
        return {a: float(np.exp(np.mean(np.log(v)))) for a, v in found.items()}

    def _sum(self, counts: dict[str, int]) -> float:
        aligned, other = self._parts(counts)
        return aligned + sum(ms * self._penalty(a) for a, ms in other.items())

    def _penalty(self, a: int) -> float:
        """Measured penalty of alignment ``a``, else of the nearest finer one measured."""
        finer = [b for b in self.penalty if b <= a]
        if finer:
            return self.penalty[max(finer)]
        return max(self.penalty.values(), default=1.0)

    def ms(self, counts: dict[str, int]) -> float:
        return self.offset + self.scale * self._sum(counts)

    def ratio(self, counts: dict[str, int]) -> float:
        return self.ms(counts) / self.base

    def group_shares(self) -> dict[str, float]:
        """Share of the layer latency that touches each group's channels."""
        out = {g: 0.0 for g in self.cost.group_channels}
        total = self._sum({}) or 1.0
        for layer in self.cost.layers:
            t = self.table["layers"][layer.name]
            ms = t["ms"][-1][-1]
            for g, _, _ in {*layer.in_segs, *layer.out_segs}:
                if g is not None:
                    out[g] += ms / total
        return out


def _interp(xs: list, ys: list, x: float) -> float:
    """Linear between grid points; proportional below the smallest (work scales with width)."""
    if len(xs) == 1:
        return ys[0]
    if x < xs[0]:
        return ys[0] * x / xs[0]
    return float(np.interp(x, xs, ys))


def _bilinear(xs: list, ys: list, grid: list, x: float, y: float) -> float:
    return _interp(xs, [_interp(ys, row, y) for row in grid], x)
