"""What a run says in words and pictures: report.md, plan.json's content and the plots
(``outputs`` decides the file names and writes them)."""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_path
from ..graph import Graph
from ..pruning import Plan


def plan_json(graph: Graph, plan: Plan, macs_ratio: float) -> dict:
    """group -> kept channel count and indices (every prunable group, pruned or not)."""
    groups = {}
    for g in graph.prunable:
        kept = plan.keep.get(g.name, tuple(range(g.channels)))
        groups[g.name] = {"channels": g.channels, "kept": len(kept), "indices": list(kept)}
    return {"macs_ratio": macs_ratio, "groups": groups}


def plot_curve(
    log: list[dict], x_key: str, y_keys: list[str], path: Path, ylabel: str = "", title: str = ""
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
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(plt, fig, path)


def plot_rewards(log: list[dict], path: Path) -> Path | None:
    """Search reward per episode (val, pruned and BN-recalibrated) and best so far."""
    return plot_curve(
        log,
        "episode",
        ["reward", "best"],
        path,
        "val reward (pruned, BN recalibrated)",
        "QMIX search: reward of each episode's plan, and the best so far",
    )


def plot_finetune(history: list[dict], path: Path, metric: str = "accuracy") -> Path | None:
    """The pruned model's val ``metric`` (accuracy, or the task's own score) per
    distillation epoch."""
    return plot_curve(
        history, "epoch", ["val_acc"], path, metric, f"Distillation: val {metric} per epoch"
    )


ALIGN = 8  # the channel multiple below which widths are called unaligned (see docs/method.md)


def unaligned(channels: dict[str, dict], multiple: int = ALIGN) -> list[str]:
    """Pruned groups whose kept width is not a multiple of ``multiple`` (slow on most
    hardware: vector units and GEMM tiles work in blocks of channels)."""
    return [
        g for g, c in channels.items() if c["after"] != c["before"] and c["after"] % multiple != 0
    ]


def alignment_warning(channels: dict[str, dict], round_to: int | None) -> str | None:
    """One sentence when pruned widths are unaligned, naming the fix; else None."""
    multiple = max(ALIGN, round_to or 1)
    bad = unaligned(channels, multiple)
    if not bad:
        return None
    pruned = sum(c["after"] != c["before"] for c in channels.values())
    first = bad[0]
    return (
        f"{len(bad)} of {pruned} pruned groups keep widths that are not multiples of {multiple} "
        f"(e.g. {first}: {channels[first]['before']} -> {channels[first]['after']}); such widths "
        f"run slower than their MACs suggest: --round-to {multiple} (or a latency target) "
        "aligns them"
    )


def markdown_report(report: dict, plots: list[tuple[str, str]] | tuple = ()) -> str:
    """A short human-readable report.md from report.json's fields; ``plots`` are the image
    files (beside report.md) that it embeds, each with its caption."""
    o, p = report["original"], report["pruned"]
    lines = [
        "# qmixprune report",
        "",
        f"Target: keep {_targets(report)} (seed {report['seed']}).",
        "",
    ]
    if report.get("input"):
        lines += [f"Input: {describe_input(report['input'])}.", ""]
    warning = alignment_warning(report["channels"], report["search"].get("round_to"))
    for text in [*report.get("warnings", []), *([warning] if warning else [])]:
        lines += [f"**Warning**: {text}.", ""]
    metric = "test_acc" if "test_acc" in o else "score"  # score: the task's evaluate()
    lines += [
        f"| | MACs | params | {metric.replace('_', ' ')} |",
        "|---|---|---|---|",
        f"| original | {o['macs']:,} | {o['params']:,} | {o[metric]:.4f} |",
        f"| pruned | {p['macs']:,} ({p['macs'] / o['macs']:.3f}) | {p['params']:,} "
        f"({p['params'] / o['params']:.3f}) | {p[metric]:.4f} |",
        "",
        f"Search: best val reward {report['search']['reward']:.4f} after "
        f"{report['search']['evaluations']} evaluations in {report['search']['seconds']} s"
        f"{early_stop_text(report['search'].get('early_stop'))}.",
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
    for name, caption in plots:
        lines += ["", f"![{caption}]({name})"]
    if (report.get("int8") or {}).get("error"):
        lines += ["", f"INT8: none kept ({report['int8']['error']})."]
    elif report.get("int8"):
        q = report["int8"]
        lines += [
            "",
            f"INT8 (model.int8.onnx, {q['quantizer']}, {q['calib_samples']} calibration samples): "
            f"test acc {q['int8_test_acc']:.4f} against {q['fp32_test_acc']:.4f} for the fp32 "
            f"pruned model (both in ONNX Runtime); same class on {q['agreement']:.1%}.",
        ]
    lines += ["", "| group | channels before | after |", "|---|---|---|"]
    lines += [f"| {g} | {c['before']} | {c['after']} |" for g, c in report["channels"].items()]
    return "\n".join(lines) + "\n"


def early_stop_text(stop: dict | None) -> str:
    """``; stopped early at episode 64: ...`` for a search that stopped early, else ``""``."""
    if not stop:
        return ""
    return (
        f"; stopped early at episode {stop['episode']}: no better plan in the "
        f"{stop['patience']} evaluations after the best (evaluation {stop['best_evaluation']})"
    )


def describe_input(inp: dict) -> str:
    """report["input"] in words (see inputs.describe)."""
    from ..inputs import describe

    return describe(inp["shape"], inp.get("mean"), inp.get("std"), inp.get("source", ""))


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
    ax.set_title("Channels per group: original and pruned")
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
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
