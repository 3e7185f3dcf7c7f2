"""Profiling latency on this device: the table the latency model reads.

``profile`` times the whole model at a few uniform widths rounded to each channel multiple
(``ALIGNMENTS``), then every Conv/Linear layer alone on a grid of (input, output) channel
counts that are multiples of the multiple with the lowest time per MAC. The multiple the
table recommends is the smallest whose fitted penalty (``latency.LatencyModel``) is within
the timings' own noise. Timing goes through a ``Timer`` (ONNX Runtime by default, TensorRT
engines for a Jetson), so the choice can be tested on fixed timings.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..budget import CostModel
from ..errors import UserError
from ..files import write_bytes
from ..latency import LatencyModel
from ..rounding import round_to_multiple
from .bench import caller, device_info, session, take_turns

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)
ALIGNMENTS = (1, 2, 4, 8, 16, 32)


def _widths(full: int, grid, round_to: int, prunable: bool) -> list[int]:
    if not prunable:
        return [full]
    ws = {min(full, round_to_multiple(full * f, round_to)) for f in grid}
    return sorted(ws | {full})


def _onnx_session(module: nn.Module, shape, provider: str, threads):
    import tempfile

    buf = io.BytesIO()
    param = next(module.parameters(), None)  # traced where the module is (--device)
    x = torch.randn(*shape, device=param.device if param is not None else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, input_names=["input"])
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(buf.getvalue())
        f.flush()
        return session(f.name, provider, threads)


Timer = Callable[[list[nn.Module], tuple], list[np.ndarray]]
"""Times modules on an input of a shape, taking turns; per module, its timings in ms."""


def ort_timer(provider: str = "cpu", threads: int | None = None, runs: int = 20) -> Timer:
    """ONNX Runtime on this device: ``runs`` timed runs per module, several modules taking
    turns in blocks of 5 (one module: one block), each turn after 3 untimed runs."""

    def timer(modules: list[nn.Module], shape: tuple) -> list[np.ndarray]:
        feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        calls = [caller(_onnx_session(m, shape, provider, threads), feed) for m in modules]
        blocks = take_turns(calls, runs, block=5 if len(calls) > 1 else runs)
        return [np.concatenate(b) * 1e3 for b in blocks]

    return timer


def engine_timer(precision: str = "fp16", runs: int = 20, run=None) -> Timer:
    """TensorRT on this device: each module becomes its own engine (a free batch axis, a
    profile around the timed batch; float16 weights and I/O for ``fp16``, so that strongly
    typed builds run it in fp16), timed by trtexec or TensorRT's runtime (``deploy.tensorrt``).
    Not run here (no GPU): written against the documented API, tested up to the tools."""
    import subprocess
    import tempfile

    from . import tensorrt
    from .export import to_fp16

    if not tensorrt.available():
        raise UserError(tensorrt.INSTALL_HINT)
    if precision not in ("fp32", "fp16"):
        raise UserError(f"profiling engines takes fp32 or fp16, got {precision!r}")
    run = run or subprocess.run

    def timer(modules: list[nn.Module], shape: tuple) -> list[np.ndarray]:
        import onnx

        out = []
        batch = shape[0]
        profile = tensorrt.BatchProfile(1, batch, max(batch, 1))
        with tempfile.TemporaryDirectory() as d:
            for i, m in enumerate(modules):
                path = Path(d) / f"m{i}.onnx"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # a copy: the first module is the user's own, still in use on its device
                    torch.onnx.export(
                        copy.deepcopy(m).eval().cpu(),
                        (torch.randn(*shape),),
                        str(path),
                        dynamo=False,
                        input_names=["input"],
                        output_names=["output"],
                        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                    )
                if precision == "fp16":
                    onnx.save(to_fp16(onnx.load(str(path))), str(path))
                engine = tensorrt.build_engine(
                    path, Path(d) / f"m{i}.engine", precision, profile, run=run
                )
                row = tensorrt.time_engine(engine, batch, runs, run=run)
                out.append(np.array([row["p50_ms"]]))
        return out

    return timer


def _layer(m: nn.Module, c_in: int, c_out: int) -> nn.Module:
    if isinstance(m, nn.Linear):
        return nn.Linear(c_in, c_out, bias=m.bias is not None)
    depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
    return nn.Conv2d(
        c_in if not depthwise else c_out,
        c_out,
        m.kernel_size,
        m.stride,
        m.padding,
        m.dilation,
        groups=c_out if depthwise else 1,
        bias=m.bias is not None,
    )


def _signature(m: nn.Module) -> tuple:
    if isinstance(m, nn.Linear):
        return ("linear", m.bias is not None)
    return ("conv", m.kernel_size, m.stride, m.padding, m.dilation, m.bias is not None)


def profile(
    model: nn.Module,
    cost: CostModel,
    example_input: torch.Tensor,
    provider="cpu",
    threads: int | None = None,
    batch: int = 1,
    round_to: int | None = None,
    runs: int = 20,
    grid=GRID,
    progress=None,
    timer: Timer | None = None,
) -> dict:
    """Latency table of ``model`` on this device (see the module docstring); ``round_to``
    None measures the alignment, an integer imposes it. ``timer`` defaults to
    ``ort_timer(provider, threads, runs)``."""
    if (round_to is not None and round_to < 1) or runs < 1 or batch < 1:
        raise UserError(
            f"profile needs --round-to >= 1 (or none, to measure it), --runs >= 1 and "
            f"--batch >= 1; got {round_to}, {runs}, {batch}"
        )
    shape = (batch, *example_input.shape[1:])
    timer = timer or ort_timer(provider, threads, runs)
    aligns = ALIGNMENTS if round_to is None else (round_to,)
    points = whole_model_points(model, cost, example_input, shape, timer, aligns)
    measured = round_to is None
    if measured:
        round_to = best_per_mac(points)  # the layer grid's multiple; the pick is <= it
    if progress:
        progress(f"layer grid in multiples of {round_to}")
    modules = dict(model.named_modules())
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(mod, inputs, output):
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))  # a hook must return None

        return hook

    hooks = [modules[layer.name].register_forward_hook(record(layer.name)) for layer in cost.layers]
    with torch.no_grad():
        model.eval()(example_input[:1])
    for h in hooks:
        h.remove()
    memo: dict[tuple, float] = {}

    def timed(m, ci: int, co: int, shape: tuple, dw: bool) -> float:
        # layers of one shape (a ResNet stage's blocks) are timed once
        key = (_signature(m), ci, co, shape[1:], dw)
        if key not in memo:
            x_shape = (batch, co if dw else ci, *shape[1:])
            memo[key] = float(np.median(timer([_layer(m, ci, co)], x_shape)[0]))
        return memo[key]

    layers = {}
    for layer in cost.layers:
        if layer.name in layers:
            continue
        m = modules[layer.name]
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        full_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        full_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        dw = isinstance(m, nn.Conv2d) and m.groups > 1
        ins = [full_in] if dw else _widths(full_in, grid, round_to, bool(layer.in_segs))
        outs = _widths(full_out, grid, round_to, any(g for g, _, _ in layer.out_segs))
        shape = shapes[layer.name]
        ms = [[timed(m, ci, co, shape, dw) for co in outs] for ci in ins]
        layers[layer.name] = {"in": ins, "out": outs, "ms": ms, "depthwise": dw}
        if progress:
            progress(f"timed {layer.name} ({len(layers)} layers)")
    noise = points_noise(points)
    for p in points:
        p.pop("samples", None)
    table = _table(points, layers, round_to)
    table.update(device=device_info(provider), batch=batch, threads=threads, noise=noise)
    if measured:
        penalties = LatencyModel(table, cost).penalty
        table["penalties"] = {str(a): v for a, v in sorted(penalties.items())}
        pick = pick_alignment(penalties, table["alignment"], round_to, noise)
        table.update(_table(points, layers, pick))
    return table


def _table(points: list[dict], layers: dict, round_to: int) -> dict:
    return {
        "round_to": round_to,
        "total_ms": points[0]["ms"],
        "layers": layers,
        # plans in coarser multiples are aligned to this one too
        "calibration": [p for p in points[1:] if p["round_to"] >= round_to],
        "misaligned": [p for p in points[1:] if p["round_to"] < round_to],
        "alignment": alignment_costs(points),
    }


def whole_model_points(
    model, cost, example_input, shape, timer: Timer, alignments, keep=(0.25, 0.5)
) -> list[dict]:
    """Whole-model latency of the unpruned model (first) and of uniformly pruned copies at
    each ``keep`` fraction of the MACs with widths rounded to each of ``alignments``, all
    timed taking turns. They calibrate the sum of isolated layers (fixed overheads, fusions)
    against what the device really runs, and show which alignment it rewards."""
    from ..budget import Budget, uniform_counts
    from ..graph import analyze
    from ..pruning import apply_plan, plan_for_counts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = analyze(model, example_input[:1])
    groups = [g.name for g in graph.prunable]
    points = [{"keep": 1.0, "round_to": 1, "channels": {}, "macs": 1.0, "model": model}]
    for target in keep:
        for a in alignments:
            try:
                counts = uniform_counts(Budget(cost, target), groups, round_to=a)
            except UserError:
                continue  # this model's floors do not go that low
            pruned = apply_plan(model, graph, plan_for_counts(graph, counts))
            row = {"keep": target, "round_to": a, "channels": counts, "model": pruned}
            points.append({**row, "macs": cost.ratio(counts)})
    for p, ms in zip(points, timer([p.pop("model") for p in points], shape)):
        p["ms"], p["samples"] = float(np.median(ms)), ms
    return points


def points_noise(points: list[dict]) -> float:
    """Relative standard error of a whole-model median timing, typical over the points
    (median absolute deviation as the spread: robust to the odd slow run)."""
    errs = []
    for p in points:
        ms = np.asarray(p.get("samples", [p["ms"]]), dtype=float)
        if len(ms) > 1 and np.median(ms) > 0:
            mad = 1.4826 * np.median(np.abs(ms - np.median(ms)))
            errs.append(1.2533 * mad / np.median(ms) / np.sqrt(len(ms)))
    return float(np.median(errs)) if errs else 0.0


def alignment_costs(points: list[dict]) -> dict[str, float]:
    """Per alignment: time per MAC relative to the best alignment at the same keep fraction,
    averaged (geometric mean) over the keep fractions measured."""
    rel: dict[int, list[float]] = {}
    for keep in {p["keep"] for p in points if p["keep"] < 1.0}:
        rows = [p for p in points if p["keep"] == keep]
        best = min(p["ms"] / p["macs"] for p in rows)
        for p in rows:
            rel.setdefault(p["round_to"], []).append(p["ms"] / p["macs"] / best)
    return {str(a): float(np.exp(np.mean(np.log(v)))) for a, v in sorted(rel.items())}


def best_per_mac(points: list[dict]) -> int:
    """The channel multiple with the lowest time per MAC (averaged over keep fractions; the
    smaller multiple on a tie): the layer grid is timed in multiples of it."""
    costs = alignment_costs(points)
    if not costs:
        return 1
    best = min(costs.values())
    return min(int(a) for a, c in costs.items() if c == best)


def pick_alignment(
    penalties: dict[int, float], costs: dict[str, float], reference: int, noise: float
) -> int:
    """The smallest multiple ``a`` (a power of two dividing ``reference``) such that at every
    measured alignment from ``a`` up to ``reference``, layers ran no slower than the aligned
    model predicts (fitted penalty) and whole models no slower per MAC than at
    ``reference`` (``costs``, from ``alignment_costs``), both within two standard errors of
    the timings (``noise``, measured in the same run; nothing hand-set). The per-MAC check
    guards the penalties against a latency model that fits its own calibration poorly
    (measured on torchvision's ResNet-18 at batch 1 on a loaded machine: penalties of 1.03
    for multiples of 4 and 8, yet 1.24x the time per MAC of multiples of 16)."""
    limit = 1 + 2 * noise + 1e-9  # the epsilon: a ratio of exactly 1 in floating point
    base = costs.get(str(reference), 1.0)
    pick = reference
    measured = {int(a) for a in costs} | set(penalties)
    for a in sorted((b for b in measured if b < reference), reverse=True):
        if penalties.get(a, 1.0) > limit or costs.get(str(a), base) > base * limit:
            break
        pick = a
    return pick


def format_table(table: dict) -> str:
    """The profile as text: per channel multiple, the whole-model time per MAC against the
    best and the fitted penalty; per layer, its timed widths and times."""
    costs, pens = table.get("alignment", {}), table.get("penalties", {})
    lines = [
        f"whole model at batch {table['batch']}: {table['total_ms']:.3f} ms; timing noise "
        f"{table.get('noise', 0.0):.1%} (standard error of a median)",
        f"{'multiple':>8} {'ms/MAC vs best':>14} {'fitted penalty':>14}",
    ]
    for a in sorted({*costs, *pens}, key=int):
        pen = f"{pens[a]:.3f}" if a in pens else "-"
        cost = f"{costs[a]:.3f}" if a in costs else "-"
        mark = "  <- used" if int(a) == table["round_to"] else ""
        lines.append(f"{a:>8} {cost:>14} {pen:>14}{mark}")
    lines.append(f"{'layer':<28} {'in':>14} {'out':>14} {'ms full':>9} {'ms least':>9}")
    for name, t in table["layers"].items():
        ins = f"{t['in'][0]}..{t['in'][-1]}" if len(t["in"]) > 1 else str(t["in"][0])
        outs = f"{t['out'][0]}..{t['out'][-1]}" if len(t["out"]) > 1 else str(t["out"][0])
        lines.append(
            f"{name[-28:]:<28} {ins:>14} {outs:>14} {t['ms'][-1][-1]:>9.4f} {t['ms'][0][0]:>9.4f}"
        )
    return "\n".join(lines)


def save_table(table: dict, path: str | Path) -> Path:
    return write_bytes(path, json.dumps(table, indent=1).encode())
