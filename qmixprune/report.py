"""Outputs of a run: plan.json, plots, and an output folder that is never left half-written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import UserError
from .graph import Graph
from .pruning import Plan
from .serialize import atomic_write_bytes


def prepare_out(out: str | Path, overwrite: bool, resume: bool) -> Path:
    """Check the output folder: refuse to clobber a previous run unless told to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise UserError(f"{out} is not empty: pass --overwrite to replace it or --resume to go on")
    if out.exists() and overwrite and not resume:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write into {out}: {exc}") from exc
    return out


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def plan_json(graph: Graph, plan: Plan, macs_ratio: float) -> dict:
    """group -> kept channel count and indices (every prunable group, pruned or not)."""
    groups = {}
    for g in graph.prunable:
        kept = plan.keep.get(g.name, tuple(range(g.channels)))
        groups[g.name] = {"channels": g.channels, "kept": len(kept), "indices": list(kept)}
    return {"macs_ratio": macs_ratio, "groups": groups}


def plot_curve(
    log: list[dict], x_key: str, y_keys: list[str], path: Path, ylabel: str = ""
) -> Path | None:
    """Lines of ``y_keys`` against ``x_key`` as a PNG; None where matplotlib is missing."""
    plt = _pyplot()
    if plt is None or not log:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [e[x_key] for e in log]
    for key in y_keys:
        style = "." if key == "reward" else "-"
        ax.plot(xs, [e[key] for e in log], style, ms=3, label=key.replace("_", " "))
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right")
    return _save(plt, fig, path)


def plot_rewards(log: list[dict], path: Path) -> Path | None:
    """Search reward per episode (val, pruned and BN-recalibrated) and best so far."""
    return plot_curve(
        log, "episode", ["reward", "best"], path, "val reward (pruned, BN recalibrated)"
    )


def markdown_report(report: dict) -> str:
    """A short human-readable report.md from report.json's fields."""
    o, p = report["original"], report["pruned"]
    lines = [
        "# qmixprune report",
        "",
        f"Target: keep {_targets(report)} (seed {report['seed']}).",
        "",
        "| | MACs | params | test acc |",
        "|---|---|---|---|",
        f"| original | {o['macs']:,} | {o['params']:,} | {o['test_acc']:.4f} |",
        f"| pruned | {p['macs']:,} ({p['macs'] / o['macs']:.3f}) | {p['params']:,} "
        f"({p['params'] / o['params']:.3f}) | {p['test_acc']:.4f} |",
        "",
        f"Search: best val reward {report['search']['reward']:.4f} after "
        f"{report['search']['evaluations']} evaluations in {report['search']['seconds']} s.",
    ]
    search = report["search"]
    if search.get("predicted_latency") is not None:
        lines += [
            "",
            f"Predicted latency (table at batch {search['latency_table_batch']}): "
            f"{search['predicted_latency']:.3f} of the original's, a speed-up of "
            f"{1 / search['predicted_latency']:.2f}x; channels in multiples of "
            f"{search['round_to']}.",
        ]
    if report.get("latency"):
        dev = report["latency"]["device"]
        lines += [
            "",
            f"Latency (ONNX Runtime {dev['onnxruntime']}, {dev['cpu']}, {dev['cores']} cores):",
            "",
            "| model | batch | p50 ms | speed-up |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} | {r['batch']} | {r['p50_ms']:.3f} | {r['speedup']:.2f}x |"
            for r in report["latency"]["results"]
        ]
    lines += ["", "| group | channels before | after |", "|---|---|---|"]
    lines += [f"| {g} | {c['before']} | {c['after']} |" for g, c in report["channels"].items()]
    return "\n".join(lines) + "\n"


def _targets(report: dict) -> str:
    parts = []
    if report.get("target_flops") is not None:
        parts.append(f"{report['target_flops']:.2f} of the MACs")
    if report.get("target_latency") is not None:
        parts.append(f"{report['target_latency']:.2f} of the measured latency")
    return " and ".join(parts) or "the plan given"


def plot_channels(before: dict[str, int], after: dict[str, int], path: Path) -> Path | None:
    """Channels per group before and after pruning, as a PNG."""
    plt = _pyplot()
    if plt is None:
        return None
    names = list(before)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 3.5))
    xs = range(len(names))
    ax.bar(xs, [before[n] for n in names], color="#ccc", label="original")
    ax.bar(xs, [after.get(n, before[n]) for n in names], color="#3a7", label="pruned")
    ax.set_xticks(list(xs), names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.legend()
    return _save(plt, fig, path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
