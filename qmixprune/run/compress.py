"""Jobs that the CLI and the Python API share: the search, with its outputs."""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..config import as_dict
from ..data import DataSplits
from ..deploy.bench import bench
from ..deploy.export import export_onnx
from ..device import resolve
from ..distill import DistillConfig, distill
from ..distributed import is_main
from ..errors import UserError
from ..files import write_bytes, write_json
from ..flops import count
from ..progress import progress
from ..pruning import apply_plan, plan_for_counts
from ..search import PruningEnv, SearchConfig, SearchResult, build_env, search
from ..serialize import save
from ..train import evaluate as accuracy
from ..train import loader, recalibrate_bn
from .outdir import check_same_config
from .preflight import check_classes
from .report import (
    PLOTS,
    alignment_warning,
    describe_input,
    early_stop_text,
    markdown_report,
    plan_json,
    plot_channels,
    plot_finetune,
    plot_rewards,
)


def run_search(
    model: nn.Module,
    data: DataSplits,
    cfg: SearchConfig,
    out: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    latency_table: dict | None = None,
    *,
    score: Callable[[nn.Module], float] | None = None,
    calib: Iterable | None = None,
    device: torch.device | None = None,
) -> tuple[SearchResult, PruningEnv]:
    """QMIX search on ``model``; with ``out``: plan.json, search_log.jsonl, reward_curve.png,
    search_config.json and a checkpoint to resume from. Returns the result and the
    environment (its graph and importance ranking turn the result into a plan)."""
    env = build_env(
        model,
        data,
        cfg.env,
        seed=cfg.seed,
        latency_table=latency_table,
        score=score,
        calib=calib,
        device=device,
    )
    if out is not None and is_main():
        if resume:  # refuse another configuration before rewriting the record of this one
            check_same_config(out, "search_config.json", as_dict(cfg))
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

    target_flops: float | None = 0.4  # fraction of the MACs kept (None: no FLOPs target)
    target_latency: float | None = None  # fraction of the measured latency kept (needs a table)
    seed: int = 0  # seeds the search, the val split and fine-tuning (overrides the stages')
    importance: str = "l1"  # filter ranking: l1, l2, fpgm, bn_scale or random
    search: SearchConfig = field(default_factory=SearchConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    export: bool = True  # write model.onnx and time it against the original (ONNX Runtime)
    int8: bool = False  # also model.int8.onnx (Q/DQ, calibrated on training batches)
    bench_runs: int = 50  # timed runs per model and batch size for the report's latency
    allow_untrained: bool = False  # go on when the teacher's test accuracy is at chance level
    keep_checkpoints: bool = False  # keep the search/distillation checkpoints after success
    device: str = "auto"  # auto (the local GPU when one is visible, else cpu), cpu, cuda, cuda:N

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
    input: dict | None = None  # shape, mean, std the model was fed (and where they come from)
    warnings: list = field(default_factory=list)  # said at the end of the run and in report.md
    int8: dict | None = None  # the INT8 model's check: accuracies (ONNX Runtime), agreement
    device: str | None = None  # where the search, fine-tuning and evaluation ran (torch)
    model: nn.Module | None = None
    out: Path | None = None

    def report(self) -> dict:
        skip = {"model", "out"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def compress(
    model: nn.Module,
    data: DataSplits | None = None,
    target_flops: float | None = None,
    config: CompressConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    latency_table: dict | None = None,
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    train_step: Callable[[nn.Module, nn.Module, object], torch.Tensor] | None = None,
    calib: Iterable | None = None,
    teacher_score: float | None = None,
) -> Result:
    """Search a per-group plan with QMIX, prune, distil from the original, evaluate, and
    (with ``out``) save, export to ONNX, benchmark and report.

    Classification on ``data`` is the default task. Any other task brings its callbacks:
    ``evaluate(model) -> float`` (higher is better, e.g. mIoU or mAP on a validation set)
    is the search's reward and picks the best fine-tuning epoch; ``train_step(student,
    teacher, batch) -> loss`` drives fine-tuning on ``data.train``'s batches; ``calib``
    (model inputs, or batches whose first element is the input) recalibrates BatchNorm.
    ``data`` may be None when ``evaluate`` and ``calib`` are given and
    ``config.distill.epochs`` is 0. ``teacher_score``: the model's test accuracy (or
    ``evaluate`` score) when the caller has just measured it, so it is not measured twice."""
    cfg = config or CompressConfig()
    if target_flops is not None:
        cfg = replace(cfg, target_flops=target_flops)
    cfg = cfg.resolved()
    cfg.search.env.validate()
    device = resolve(cfg.device)  # the run's one device decision; every stage below gets it
    log = (lambda *a: None) if quiet else print
    out = Path(out) if out is not None else None
    if data is None and (evaluate is None or calib is None):
        raise UserError("compress needs data=, unless both evaluate= and calib= are given")
    if data is None and cfg.distill.epochs > 0:
        raise UserError(
            "fine-tuning needs training data: pass data= (its train split feeds train_step), "
            "or set config.distill.epochs to 0"
        )
    if calib is not None:  # read once: the search and the pruned model's BN both use them
        calib = list(itertools.islice(calib, max(cfg.search.env.calib_batches, 1)))
        if not calib:
            raise UserError("calib= is empty: give at least one batch of model inputs")
    if data is not None and evaluate is None and train_step is None:  # classification
        where = next(model.parameters(), torch.empty(0)).device
        x0 = torch.zeros(1, *data.input_shape, device=where)
        check_classes(model, data.num_classes, x0)
    if out is not None and is_main():  # everything checkable was checked: OUT is touched
        if resume:  # refuse another configuration before rewriting the record of this one
            check_same_config(out, "config.json", as_dict(cfg))
        write_json(out / "config.json", as_dict(cfg))
    metric = "score" if evaluate is not None else "test_acc"

    def score(m: nn.Module) -> float:
        return float(evaluate(m)) if evaluate is not None else accuracy(m, data.test)

    teacher = model.to(device).eval()
    shape = data.input_shape if data is not None else _first_input(calib).shape[1:]
    x = torch.zeros(1, *shape, device=device)
    inputs = _input_info(data) if data is not None else {"shape": list(x.shape[1:])}
    log(f"input: {describe_input(inputs)}")
    macs0, params0 = count(teacher, x)
    acc0 = score(teacher) if teacher_score is None else float(teacher_score)
    log(f"original: {macs0:,} MACs, {params0:,} params, {metric.replace('_', ' ')} {acc0:.4f}")
    untrained = evaluate is None and at_chance(acc0, data.num_classes, len(data.test))
    if untrained and not cfg.allow_untrained:
        check_teacher(acc0, data.num_classes, len(data.test))

    found, env = run_search(
        teacher,
        data,
        cfg.search,
        out,
        resume,
        quiet,
        latency_table,
        score=evaluate,
        calib=calib,
        device=device,
    )
    graph = env.graph  # the search's own analysis and importance ranking serve the pruning
    plan = plan_for_counts(graph, found.counts, env.ranking)
    student = apply_plan(teacher, graph, plan)
    recalibrate_bn(
        student,
        calib if calib is not None else loader(data.train, cfg.distill.batch_size, True, cfg.seed),
    )
    log(
        f"search: best val reward {found.reward:.4f} at {found.macs_ratio:.4f} of the MACs"
        f"{early_stop_text(found.early_stop)}; distilling {cfg.distill.epochs} epochs"
    )

    history: list[dict] = []  # without data= there is nothing to fine-tune on (epochs 0)
    with progress(cfg.distill.epochs, "distill", quiet) as update:
        if data is not None:
            student, history = distill(
                student,
                teacher,
                data,
                cfg.distill,
                out,
                resume,
                on_epoch=lambda e: update(1, f"val {e['val_acc']:.4f}"),
                train_step=train_step,
                evaluate=evaluate,
                device=device,
            )
    if out is not None and is_main():  # first thing after fine-tuning: nothing later loses it
        save(student, out / "model.safetensors")
        log(f"saved the pruned model to {out / 'model.safetensors'}")
    (macs1, params1), acc1 = count(student, x), score(student)
    result = Result(
        target_flops=cfg.target_flops,
        target_latency=cfg.target_latency,
        original={"macs": macs0, "params": params0, metric: acc0},
        pruned={"macs": macs1, "params": params1, metric: acc1},
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
            "early_stop": found.early_stop,
            # the latency model's prediction, to set against the measured speed-up below
            "predicted_latency": env.latency.ratio(found.counts) if env.latency else None,
            "latency_table_batch": latency_table.get("batch") if latency_table else None,
        },
        finetune=history,
        latency=None,
        seed=cfg.seed,
        versions=_versions(),
        input=inputs,
        device=str(device),
        model=student,
    )
    if untrained:
        result.warnings.append(
            f"the original model's test accuracy ({acc0:.4f}) is at chance level for "
            f"{data.num_classes} classes: the accuracies compare noise"
        )
    if out is not None and is_main():
        # time the result as the latency table was measured, when there is one
        threads = latency_table.get("threads") if latency_table else None
        _write_outputs(result, teacher, cfg, out, x.cpu(), log, threads, data)
    log(
        f"pruned: {macs1:,} MACs ({macs1 / macs0:.3f}), {params1:,} params, "
        f"{metric.replace('_', ' ')} {acc1:.4f} ({acc1 - acc0:+.4f})"
    )
    warning = alignment_warning(result.channels, env.cfg.round_to)
    for text in [*result.warnings, *([warning] if warning else [])]:
        log(f"warning: {text}")
    if out is not None and is_main() and not cfg.keep_checkpoints:
        _remove_checkpoints(out)
    return result


def at_chance(acc: float, num_classes: int, n: int) -> bool:
    """Whether a test accuracy on ``n`` samples is within 3 standard errors of chance
    (1 / classes): an untrained model, or inputs sized or normalised unlike its training."""
    chance = 1.0 / max(num_classes, 1)
    return acc <= chance + 3 * (chance * (1 - chance) / max(n, 1)) ** 0.5


def check_teacher(acc: float, num_classes: int, n: int) -> None:
    """Refuse a teacher at chance level (see at_chance): pruning it would report noise as
    gains."""
    chance = 1.0 / max(num_classes, 1)
    if at_chance(acc, num_classes, n):
        raise UserError(
            f"the model's test accuracy is {acc:.4f}, chance level for {num_classes} classes "
            f"({chance:.3f}): is it trained, and do --input-size/--mean/--std match its training? "
            "(--allow-untrained, or allow_untrained=True in Python, goes on anyway)"
        )


def _input_info(data: DataSplits) -> dict:
    """report["input"]: what the model was fed."""
    mean = getattr(data, "mean", None)
    return {
        "shape": list(data.input_shape),
        "mean": list(mean) if mean is not None else None,
        "std": list(data.std) if mean is not None else None,
        "source": getattr(data, "norm_source", ""),
    }


def _remove_checkpoints(out: Path) -> None:
    """After success the checkpoints only take space (they resume an interrupted run); the
    names are ours: nothing else is deleted."""
    from ..distill import CHECKPOINT as DISTILL_CKPT
    from ..search.runner import CHECKPOINT as SEARCH_CKPT

    for name in (SEARCH_CKPT, DISTILL_CKPT):
        (out / name).unlink(missing_ok=True)


def _write_outputs(
    result: Result,
    teacher,
    cfg: CompressConfig,
    out: Path,
    x,
    log,
    threads: int | None = None,
    data: DataSplits | None = None,
):
    # model.safetensors is saved already: each stage below only warns when it fails
    if cfg.export:
        try:
            export_onnx(result.model, out / "model.onnx", x)
            files, names = [out / "model.onnx"], ["original", "pruned"]
            if cfg.int8 and data is not None:
                result.int8 = _int8(out / "model.onnx", out / "model.int8.onnx", data, log)
                if "error" not in result.int8:
                    files, names = [*files, out / "model.int8.onnx"], [*names, "pruned-int8"]
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(teacher, Path(tmp) / "original.onnx", x)
                report = bench(
                    [str(Path(tmp) / "original.onnx"), *map(str, files)],
                    (1, 32),
                    threads=threads,
                    runs=cfg.bench_runs,
                    warmup=5,
                )
            rows = report["results"]
            result.latency = {
                "device": report["device"],
                "threads": threads,
                "results": [{**r, "model": names[i % len(names)]} for i, r in enumerate(rows)],
            }
        except Exception as exc:
            _skipped("ONNX export or benchmark", exc)
    try:
        plot_channels(
            {k: v["before"] for k, v in result.channels.items()},
            {k: v["after"] for k, v in result.channels.items()},
            out / "channels.png",
        )
        metric = "score" if "score" in result.original else "accuracy"  # a task's evaluate
        plot_finetune(result.finetune, out / "finetune_curve.png", metric)
    except Exception as exc:
        _skipped("plots", exc)
    try:
        write_json(out / "report.json", result.report())
    except Exception as exc:
        _skipped("report.json", exc)
    try:
        plots = [name for name, _ in PLOTS if (out / name).is_file()]
        write_bytes(out / "report.md", markdown_report(result.report(), plots).encode())
    except Exception as exc:
        _skipped("report.md", exc)
    result.out = out


def _skipped(stage: str, exc: Exception) -> None:
    """A stage after the pruned model was saved failed: say so and go on."""
    warnings.warn(
        f"{stage} skipped: {type(exc).__name__}: {exc} (model.safetensors is saved)",
        RuntimeWarning,
        stacklevel=3,
    )


def _first_input(calib: list) -> torch.Tensor:
    """The model input of the first calibration batch (a tensor, or its first element)."""
    first = calib[0]
    return first[0] if isinstance(first, (list, tuple)) else first


def _int8(fp32: Path, path: Path, data: DataSplits, log) -> dict:
    """Quantize ``fp32`` to ``path``, calibrated on training batches, checked on the test set;
    a model outside the check's tolerance is not kept and the report says why."""
    from ..deploy.quantize import quantize_checked

    try:
        res = quantize_checked(
            fp32,
            path,
            (data.train[i] for i in range(len(data.train))),
            (data.test[i] for i in range(len(data.test))),
        )
    except UserError as exc:  # the fp32 model and its timings are still worth having
        log(f"warning: no INT8 model: {exc}")
        return {"error": str(exc)}
    log(res.summary())
    return {
        "quantizer": res.quantizer,
        "calib_samples": res.calib_samples,
        "agreement": res.agreement,
        "relative_rms": res.relative_rms,
        "fp32_test_acc": res.fp32_acc,
        "int8_test_acc": res.int8_acc,
    }


def _versions() -> dict:
    import platform

    from .. import __version__, native

    return {
        "qmixprune": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backend": native.backend(),  # native kernels or the PyTorch reference path
        "backends": native.backends(),  # per device: native, or reference (why)
    }
