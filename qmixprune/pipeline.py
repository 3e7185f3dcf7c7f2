"""Jobs that the CLI and the Python API share: the search, with its outputs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from .bench import bench
from .config import as_dict
from .data import DataSplits
from .distill import DistillConfig, distill
from .distributed import is_main
from .errors import UserError
from .export import export_onnx
from .flops import count
from .progress import progress
from .pruning import apply_plan, plan_for_counts
from .report import markdown_report, plan_json, plot_channels, plot_curve, plot_rewards, write_json
from .search import PruningEnv, SearchConfig, SearchResult, build_env, search
from .serialize import atomic_write_bytes, save
from .train import evaluate, loader, recalibrate_bn


def run_search(
    model: nn.Module,
    data: DataSplits,
    cfg: SearchConfig,
    out: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    latency_table: dict | None = None,
) -> tuple[SearchResult, PruningEnv]:
    """QMIX search on ``model``; with ``out``: plan.json, search_log.jsonl, reward_curve.png,
    search_config.json and a checkpoint to resume from. Returns the result and the
    environment (its graph and importance ranking turn the result into a plan)."""
    env = build_env(model, data, cfg.env, seed=cfg.seed, latency_table=latency_table)
    if out is not None and is_main():
        write_json(out / "search_config.json", as_dict(cfg))
    with progress(cfg.episodes, "search", quiet, every=cfg.checkpoint_every) as update:

        def on_episode(entry: dict) -> None:
            update(1, f"best {entry['best']:.4f}  evals {entry['evaluations']}")

        result = search(env, cfg, out, resume=resume, on_episode=on_episode)
    if out is not None and is_main():
        plan = plan_for_counts(env.graph, result.counts, env.ranking)
        doc = plan_json(env.graph, plan, result.macs_ratio)
        doc.update(
            reward=result.reward,
            evaluations=result.evaluations,
            episodes=result.episodes,
            evaluations_per_second=result.evaluations / max(result.seconds, 1e-9),
        )
        write_json(out / "plan.json", doc)
        plot_rewards(result.log, out / "reward_curve.png")
    return result, env


@dataclass(frozen=True)
class CompressConfig:
    """Every option of ``compress``; the targets, seed and importance override the stages'.
    ``target_flops`` None with a ``target_latency`` means a latency-only budget."""

    target_flops: float | None = 0.4
    target_latency: float | None = None
    seed: int = 0
    importance: str = "l1"
    search: SearchConfig = field(default_factory=SearchConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: bool = True
    bench_runs: int = 50

    def resolved(self) -> CompressConfig:
        """The config with the top-level target, seed and importance pushed into the stages."""
        env = replace(
            self.search.env,
            target_flops=self.target_flops,
            target_latency=self.target_latency,
            importance=self.importance,
        )
        search_cfg = replace(self.search, seed=self.seed, env=env)
        return replace(self, search=search_cfg, distill=replace(self.distill, seed=self.seed))


@dataclass
class Result:
    """What ``compress`` made; the same fields as ``report.json``."""

    target_flops: float | None
    target_latency: float | None
    original: dict
    pruned: dict
    channels: dict
    search: dict
    finetune: list
    latency: dict | None
    seed: int
    versions: dict
    model: nn.Module | None = None
    out: Path | None = None

    def report(self) -> dict:
        skip = {"model", "out"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def compress(
    model: nn.Module,
    data: DataSplits,
    target_flops: float | None = None,
    config: CompressConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    latency_table: dict | None = None,
) -> Result:
    """Search a per-group plan with QMIX, prune, distil from the original, evaluate, and
    (with ``out``) save, export to ONNX, benchmark and report."""
    cfg = config or CompressConfig()
    if target_flops is not None:
        cfg = replace(cfg, target_flops=target_flops)
    cfg = cfg.resolved()
    cfg.search.env.validate()
    log = (lambda *a: None) if quiet else print
    out = Path(out) if out is not None else None
    if out is not None and is_main():
        write_json(out / "config.json", as_dict(cfg))
    teacher = model.eval()
    x = torch.zeros(1, *data.input_shape)
    (macs0, params0), acc0 = count(teacher, x), evaluate(teacher, data.test)
    log(f"original: {macs0:,} MACs, {params0:,} params, test acc {acc0:.4f}")

    found, env = run_search(teacher, data, cfg.search, out, resume, quiet, latency_table)
    graph = env.graph  # the search's own analysis and importance ranking serve the pruning
    plan = plan_for_counts(graph, found.counts, env.ranking)
    student = apply_plan(teacher, graph, plan)
    recalibrate_bn(student, loader(data.train, cfg.distill.batch_size, True, cfg.seed))
    log(
        f"search: best val reward {found.reward:.4f} at {found.macs_ratio:.4f} of the MACs; "
        f"distilling {cfg.distill.epochs} epochs"
    )

    with progress(cfg.distill.epochs, "distill", quiet) as update:
        student, history = distill(
            student,
            teacher,
            data,
            cfg.distill,
            out,
            resume,
            on_epoch=lambda e: update(1, f"val {e['val_acc']:.4f}"),
        )
    (macs1, params1), acc1 = count(student, x), evaluate(student, data.test)
    result = Result(
        target_flops=cfg.target_flops,
        target_latency=cfg.target_latency,
        original={"macs": macs0, "params": params0, "test_acc": acc0},
        pruned={"macs": macs1, "params": params1, "test_acc": acc1},
        channels={
            g.name: {"before": g.channels, "after": found.counts.get(g.name, g.channels)}
            for g in graph.prunable
        },
        search={
            "reward": found.reward,
            "macs_ratio": found.macs_ratio,
            "evaluations": found.evaluations,
            "episodes": found.episodes,
            "seconds": round(found.seconds, 1),
            "round_to": env.cfg.round_to,
            # the latency model's prediction, to set against the measured speed-up below
            "predicted_latency": env.latency.ratio(found.counts) if env.latency else None,
            "latency_table_batch": latency_table.get("batch") if latency_table else None,
        },
        finetune=history,
        latency=None,
        seed=cfg.seed,
        versions=_versions(),
        model=student,
    )
    if out is not None and is_main():
        # time the result as the latency table was measured, when there is one
        threads = latency_table.get("threads") if latency_table else None
        _write_outputs(result, teacher, cfg, out, x, log, threads)
    log(
        f"pruned: {macs1:,} MACs ({macs1 / macs0:.3f}), {params1:,} params, "
        f"test acc {acc1:.4f} ({acc1 - acc0:+.4f})"
    )
    return result


def _write_outputs(
    result: Result, teacher, cfg: CompressConfig, out: Path, x, log, threads: int | None = None
):
    save(result.model, out / "model.safetensors")
    if cfg.export:
        try:
            export_onnx(result.model, out / "model.onnx", x)
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(teacher, Path(tmp) / "original.onnx", x)
                report = bench(
                    [str(Path(tmp) / "original.onnx"), str(out / "model.onnx")],
                    (1, 32),
                    threads=threads,
                    runs=cfg.bench_runs,
                    warmup=5,
                )
            rows = report["results"]
            result.latency = {
                "device": report["device"],
                "threads": threads,
                "results": [
                    {**r, "model": "original" if i % 2 == 0 else "pruned"}
                    for i, r in enumerate(rows)
                ],
            }
        except UserError as exc:
            log(f"warning: ONNX export or benchmark skipped: {exc}")
    plot_channels(
        {k: v["before"] for k, v in result.channels.items()},
        {k: v["after"] for k, v in result.channels.items()},
        out / "channels.png",
    )
    plot_curve(result.finetune, "epoch", ["val_acc"], out / "finetune_curve.png", "accuracy")
    write_json(out / "report.json", result.report())
    atomic_write_bytes(out / "report.md", markdown_report(result.report()).encode())
    result.out = out


def _versions() -> dict:
    import platform

    from . import __version__, native

    return {
        "qmixprune": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backend": native.backend(),  # native kernels or the PyTorch reference path
    }
