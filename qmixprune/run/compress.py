"""One ``compress`` run, stage by stage: search, prune, fine-tune, save, deploy, report.

``compress`` (the Python API) checks everything first (``preflight.check_compress``), then
runs ``run_stages``; the CLI makes the same check, claims OUT, then calls ``run_stages``
itself. Each stage gets what the previous one returned: the search hands over its plan with
the graph and ranking it was made from and the pruned, BN-recalibrated candidate its reward
saw; the teacher's shapes and MACs come from the checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..config import as_dict
from ..data import DataSplits
from ..distill import distill
from ..distributed import is_main
from ..flops import count
from ..graph import Graph
from ..progress import progress
from ..pruning import Plan, plan_for_counts
from ..search import SearchConfig, SearchResult, build_env, search
from ..search.baselines import global_l1, uniform
from ..search.pick import PickResult, low_tau_warning, pick
from ..train import accuracy
from . import outputs
from .config import CompressConfig
from .preflight import Ready, Score, check_compress
from .report import alignment_warning, describe_input, early_stop_text

__all__ = ["CompressConfig", "Found", "Result", "compress", "run_search", "run_stages"]


@dataclass
class Found:
    """What the search stage hands on: the best plan with the graph and importance ranking
    it was made from, and that plan pruned and BN-recalibrated as its reward saw it."""

    result: SearchResult
    graph: Graph
    plan: Plan
    student: nn.Module
    round_to: int
    predicted_latency: float | None  # the latency model's ratio for the plan, if any
    source: str = "search"  # search, search+pick, uniform or global: where the plan came from
    pick: PickResult | None = None  # the final pick's record, when it ran
    env: object | None = None  # the PruningEnv the plan was scored in


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
    score: Score | None = None,
    train_step: Callable[[nn.Module, nn.Module, object], torch.Tensor] | None = None,
    calib: Iterable | None = None,
    teacher_score: float | None = None,
    evaluate: Score | None = None,
) -> Result:
    """Search a per-group plan with QMIX, prune, distil from the original, evaluate, and
    (with ``out``) save, export to ONNX, benchmark and report.

    Classification on ``data`` is the default task. Any other task brings its callbacks:
    ``score(model) -> float`` (higher is better, e.g. mIoU or mAP on a validation set) is
    the search's reward and picks the best fine-tuning epoch; ``train_step(student,
    teacher, batch) -> loss`` drives fine-tuning on ``data.train``'s batches; ``calib``
    (model inputs, or batches whose first element is the input) recalibrates BatchNorm.
    ``data`` may be None when ``score`` and ``calib`` are given and
    ``config.distill.epochs`` is 0. ``teacher_score``: the model's test accuracy (or
    ``score``) when the caller has just measured it, so it is not measured twice.
    ``evaluate`` is the former name of ``score`` (deprecated)."""
    if evaluate is not None:
        warnings.warn("compress(evaluate=) is now score=", DeprecationWarning, stacklevel=2)
        score = score if score is not None else evaluate
    cfg = config or CompressConfig()
    if target_flops is not None:
        cfg = replace(cfg, target_flops=target_flops)
    cfg, ready = check_compress(
        model,
        data,
        cfg,
        out=out,
        resume=resume,
        latency_table=latency_table,
        score=score,
        train_step=train_step,
        calib=calib,
        teacher_score=teacher_score,
    )
    return run_stages(model, data, cfg, ready, out, resume, quiet, score, train_step)


def run_stages(
    model: nn.Module,
    data: DataSplits | None,
    cfg: CompressConfig,
    ready: Ready,
    out: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    score: Score | None = None,
    train_step: Callable | None = None,
) -> Result:
    """The stages of a checked run (``cfg`` and ``ready`` from ``check_compress``)."""
    log = (lambda *a: None) if quiet else print
    out = Path(out) if out is not None else None
    main = out is not None and is_main()  # rank 0 writes OUT; every rank resumes from it
    if main:
        outputs.write_record(out, outputs.CONFIG, as_dict(cfg))
    teacher, device, metric = model.eval(), ready.device, ready.metric
    label = metric.replace("_", " ")
    log(f"input: {describe_input(ready.input)}")
    log(
        f"original: {ready.macs:,} MACs, {ready.params:,} params, {label} {ready.teacher_score:.4f}"
    )

    found = run_search(
        teacher, data, cfg.search, ready, out, resume, quiet, score=score, plan=cfg.plan
    )
    if cfg.plan == "search":
        log(
            f"search: best val reward {found.result.reward:.4f} at {found.result.macs_ratio:.4f} "
            f"of the MACs{early_stop_text(found.result.early_stop)}"
        )
    else:
        log(f"plan: {cfg.plan} at {found.result.macs_ratio:.4f} of the MACs (no search)")
    if cfg.plan == "search" and cfg.pick.enabled:
        if data is not None and score is None and train_step is None:
            found = run_pick(found, teacher, data, cfg, out)
            p = found.pick
            tau = "n/a" if p.tau is None else f"{p.tau:.2f}"
            log(
                f"pick: plan {p.index} of the search's top {len(p.candidates)} after {p.steps} "
                f"distillation steps ({p.seconds:.0f} s); Kendall tau {tau}"
            )
        else:
            log("pick: skipped (it needs classification data, without score= or train_step=)")
    log(f"distilling {cfg.distill.epochs} epochs")
    student, history = found.student, []  # without data= there is nothing to fine-tune on
    with progress(cfg.distill.epochs, "distill", quiet) as update:
        if data is not None:
            student, history = distill(
                student,
                teacher,
                data,
                cfg.distill,
                out / outputs.DISTILL_CHECKPOINT if out is not None else None,
                resume,
                on_epoch=lambda e: update(1, f"val {e['val_acc']:.4f}"),
                train_step=train_step,
                score=score,
                device=device,
            )
    if main:  # first thing after fine-tuning: nothing later loses it
        log(f"saved the pruned model to {outputs.save_model(out, student)}")
    x = ready.example()
    macs, params = count(student, x)
    value = float(score(student)) if score is not None else accuracy(student, data.test)
    result = _result(cfg, ready, found, history, student, macs, params, value)
    if found.pick is not None and found.pick.low_tau():
        result.warnings.append(low_tau_warning(found.pick))
    if ready.untrained:
        result.warnings.append(
            f"the original model's test accuracy ({ready.teacher_score:.4f}) is at chance level "
            f"for {data.num_classes} classes: the accuracies compare noise"
        )
    if main:
        threads = ready.latency_table.get("threads") if ready.latency_table else None
        result.latency, result.int8 = outputs.write_deployment(
            out, student, teacher, x.cpu(), cfg, data, threads, log
        )
        outputs.write_report(out, result.report(), metric)
        result.out = out
    log(
        f"pruned: {macs:,} MACs ({macs / ready.macs:.3f}), {params:,} params, "
        f"{label} {value:.4f} ({value - ready.teacher_score:+.4f})"
    )
    warning = alignment_warning(result.channels, found.round_to)
    for text in [*result.warnings, *([warning] if warning else [])]:
        log(f"warning: {text}")
    if main and not cfg.keep_checkpoints:
        outputs.remove_checkpoints(out)
    return result


def run_search(
    model: nn.Module,
    data: DataSplits | None,
    cfg: SearchConfig,
    ready: Ready,
    out: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    *,
    score: Score | None = None,
    plan: str = "search",
) -> Found:
    """The QMIX search of a checked run (``ready``); with ``out``, rank 0 writes its
    config, log, checkpoint, plan.json and reward curve there (every rank resumes).
    ``plan`` "uniform" or "global" makes that one plan instead, with no search."""
    env = build_env(
        model,
        data,
        cfg.env,
        seed=cfg.seed,
        latency_table=ready.latency_table,
        score=score,
        calib=ready.calib,
        device=ready.device,
        measured=ready.measured,
    )
    main = out is not None and is_main()
    if plan != "search":
        return _fixed_plan(env, plan, out if main else None)
    if main:
        outputs.write_record(out, outputs.SEARCH_CONFIG, as_dict(cfg))
    files = outputs.search_files(out) if out is not None else None
    with progress(cfg.episodes, "search", quiet, every=cfg.checkpoint_every) as update:

        def on_episode(entry: dict) -> None:
            update(1, f"best {entry['best']:.4f}  evals {entry['evaluations']}")

        result = search(env, cfg, files, resume=resume, on_episode=on_episode)
    if main:
        plan = plan_for_counts(env.graph, result.counts, env.ranking)
        outputs.write_search(out, env.graph, plan, result, source="search")
    return _found(env, result, "search")


def _found(env, result: SearchResult, source: str, picked: PickResult | None = None) -> Found:
    return Found(
        result,
        env.graph,
        plan_for_counts(env.graph, result.counts, env.ranking),
        env.evaluator.candidate(result.counts),
        env.cfg.round_to,
        env.latency.ratio(result.counts) if env.latency else None,
        source,
        picked,
        env,
    )


def _fixed_plan(env, kind: str, out: Path | None) -> Found:
    """``--plan uniform|global``: that plan, scored once by the search's reward (no search)."""
    import time

    start = time.perf_counter()
    made = {"uniform": uniform, "global": global_l1}[kind](env)
    result = SearchResult(
        made.counts,
        made.reward,
        env.cost.ratio(made.counts),
        made.evaluations,
        0,
        time.perf_counter() - start,
        [],
    )
    found = _found(env, result, kind)
    if out is not None:
        outputs.write_search(out, env.graph, found.plan, result, source=kind)
    return found


def run_pick(
    found: Found, teacher: nn.Module, data: DataSplits, cfg: CompressConfig, out: Path | None
) -> Found:
    """The final pick over the search's best plans (``search.pick``); the winner as the
    plan to fine-tune, with plan.json rewritten to say so."""
    env = found.env
    picked = pick(env, teacher, data, cfg.pick, seed=cfg.seed)
    r = found.result
    result = replace(
        r,
        counts=picked.counts,
        reward=env.cache[tuple(picked.counts[g] for g in env.groups)],
        macs_ratio=env.cost.ratio(picked.counts),
    )
    new = _found(env, result, "search+pick", picked)
    if out is not None and is_main():
        outputs.write_search(out, env.graph, new.plan, result, source=new.source, pick=picked)
    return new


def _result(
    cfg: CompressConfig,
    ready: Ready,
    found: Found,
    history: list,
    student: nn.Module,
    macs: int,
    params: int,
    value: float,
) -> Result:
    counts, metric = found.result.counts, ready.metric
    channels = {
        g.name: {"before": g.channels, "after": counts.get(g.name, g.channels)}
        for g in found.graph.prunable
    }
    table = ready.latency_table
    return Result(
        target_flops=cfg.target_flops,
        target_latency=cfg.target_latency,
        original={"macs": ready.macs, "params": ready.params, metric: ready.teacher_score},
        pruned={"macs": macs, "params": params, metric: value},
        channels=channels,
        search={
            "reward": found.result.reward,
            "macs_ratio": found.result.macs_ratio,
            "evaluations": found.result.evaluations,
            "episodes": found.result.episodes,
            "seconds": round(found.result.seconds, 1),
            "round_to": found.round_to,
            "early_stop": found.result.early_stop,
            # the latency model's prediction, to set against the measured speed-up
            "predicted_latency": found.predicted_latency,
            "latency_table_batch": table.get("batch") if table else None,
            "source": found.source,
            "pick": found.pick.summary() if found.pick is not None else None,
        },
        finetune=history,
        latency=None,
        seed=cfg.seed,
        versions=_versions(),
        input=ready.input,
        device=str(ready.device),
        model=student,
    )


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
