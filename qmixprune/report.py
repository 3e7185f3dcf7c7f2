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


def plot_rewards(log: list[dict], path: Path) -> Path | None:
    """Reward per episode and best so far, as a PNG; None where matplotlib is missing."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [e["episode"] for e in log]
    ax.plot(ep, [e["reward"] for e in log], ".", ms=3, alpha=0.5, label="episode reward")
    ax.plot(ep, [e["best"] for e in log], "-", label="best so far")
    ax.set_xlabel("episode")
    ax.set_ylabel("val reward (pruned, BN recalibrated)")
    ax.legend(loc="lower right")
    return _save(plt, fig, path)


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
