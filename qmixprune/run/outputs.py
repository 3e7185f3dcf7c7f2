"""What a run writes into OUT: every file name, and the one place each file is written.

The stages below ``run`` (the search, fine-tuning) write only the checkpoint and log paths
they are handed from here; ``outdir`` clears exactly ``OUTPUTS`` on ``--overwrite``. After
the pruned model is saved, each later output only warns when it fails: nothing that took
the search and the fine-tuning to make is lost to a failed plot or export. Importing it
loads neither torch nor numpy.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import write_json, write_text

if TYPE_CHECKING:  # the names above are read without torch (outdir, on --overwrite)
    import torch
    import torch.nn as nn

CONFIG = "config.json"  # the effective CompressConfig (a resumed run must match it)
SEARCH_CONFIG = "search_config.json"  # the effective SearchConfig of `qmixprune search`
PLAN = "plan.json"
SEARCH_LOG = "search_log.jsonl"
SEARCH_CHECKPOINT = "search_checkpoint.pt"
DISTILL_CHECKPOINT = "distill_checkpoint.pt"
MODEL = "model.safetensors"
ONNX = "model.onnx"
ENGINE = "model.engine"
INT8 = "model.int8.onnx"
INT8_ENGINE = "model.int8.engine"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CHANNELS_PLOT = "channels.png"
REWARD_PLOT = "reward_curve.png"
FINETUNE_PLOT = "finetune_curve.png"

CHECKPOINTS = (SEARCH_CHECKPOINT, DISTILL_CHECKPOINT)
# what report.md embeds, in order: (file in OUT, caption)
PLOTS = (
    (CHANNELS_PLOT, "Channels per group, original and pruned"),
    (REWARD_PLOT, "Search reward per episode"),
    (FINETUNE_PLOT, "Val accuracy (or the task's score) per distillation epoch"),
)
# Every name a run writes into OUT: --overwrite clears these and nothing else.
OUTPUTS = (
    CONFIG,
    SEARCH_CONFIG,
    PLAN,
    SEARCH_LOG,
    *CHECKPOINTS,
    MODEL,
    ONNX,
    ENGINE,
    INT8,
    INT8_ENGINE,
    REPORT_JSON,
    REPORT_MD,
    *(name for name, _ in PLOTS),
)


def write_record(out: Path, name: str, config: dict) -> None:
    """The effective configuration (``CONFIG`` or ``SEARCH_CONFIG``): a resumed run must
    match it (``outdir.check_same_config``)."""
    write_json(out / name, config)


def search_files(out: Path):
    """Where the search keeps its checkpoint and log in OUT."""
    from ..search import SearchFiles

    return SearchFiles(out / SEARCH_CHECKPOINT, out / SEARCH_LOG)


def write_search(out: Path, graph, plan, result, source: str = "search", pick=None) -> None:
    """plan.json (every group's kept channels and indices, where the plan came from and the
    final pick's record) and the reward curve."""
    from . import report

    doc = report.plan_json(graph, plan, result.macs_ratio)
    doc.update(
        reward=result.reward,
        evaluations=result.evaluations,
        episodes=result.episodes,
        evaluations_per_second=result.evaluations / max(result.seconds, 1e-9),
        source=source,
        pick=pick.summary() if pick is not None else None,
    )
    write_json(out / PLAN, doc)
    report.plot_rewards(result.log, out / REWARD_PLOT)


def save_model(out: Path, model: nn.Module) -> Path:
    """The pruned model, as data (no pickle): see ``serialize.save``."""
    from ..serialize import save

    return save(model, out / MODEL)


def write_deployment(
    out: Path,
    model: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    cfg,
    data,
    threads: int | None,
    log: Callable[[str], None],
) -> tuple[dict | None, dict | None]:
    """model.onnx (and model.int8.onnx with ``cfg.int8``), timed against the original with
    ONNX Runtime; returns report["latency"] and report["int8"]. A failure only warns."""
    if not cfg.export:
        return None, None
    from ..deploy.bench import bench
    from ..deploy.export import export_onnx

    int8 = None
    try:
        export_onnx(model, out / ONNX, x)
        files, names = [out / ONNX], ["original", "pruned"]
        if cfg.int8 and data is not None:
            int8 = _int8(out / ONNX, out / INT8, data, log)
            if "error" not in int8:
                files, names = [*files, out / INT8], [*names, "pruned-int8"]
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(teacher, Path(tmp) / "original.onnx", x)
            timed = bench(
                [str(Path(tmp) / "original.onnx"), *map(str, files)],
                (1, 32),
                threads=threads,
                runs=cfg.bench_runs,
                warmup=5,
            )
        rows = [{**r, "model": names[i % len(names)]} for i, r in enumerate(timed["results"])]
        return {"device": timed["device"], "threads": threads, "results": rows}, int8
    except Exception as exc:
        _skipped("ONNX export or benchmark", exc)
        return None, int8


def write_report(out: Path, doc: dict, metric: str) -> None:
    """The plots, report.json and report.md of a finished run (``Result.report()``)."""
    from . import report

    try:
        channels = doc["channels"]
        report.plot_channels(
            {k: v["before"] for k, v in channels.items()},
            {k: v["after"] for k, v in channels.items()},
            out / CHANNELS_PLOT,
        )
        name = "score" if metric == "score" else "accuracy"  # a task's own score
        report.plot_finetune(doc["finetune"], out / FINETUNE_PLOT, name)
    except Exception as exc:
        _skipped("plots", exc)
    try:
        write_json(out / REPORT_JSON, doc)
    except Exception as exc:
        _skipped("report.json", exc)
    try:
        plots = [(name, caption) for name, caption in PLOTS if (out / name).is_file()]
        write_text(out / REPORT_MD, report.markdown_report(doc, plots))
    except Exception as exc:
        _skipped("report.md", exc)


def remove_checkpoints(out: Path) -> None:
    """After success the checkpoints only take space (they resume an interrupted run); the
    names are ours: nothing else is deleted."""
    for name in CHECKPOINTS:
        (out / name).unlink(missing_ok=True)


def _skipped(stage: str, exc: Exception) -> None:
    """A stage after the pruned model was saved failed: say so and go on."""
    warnings.warn(
        f"{stage} skipped: {type(exc).__name__}: {exc} (model.safetensors is saved)",
        RuntimeWarning,
        stacklevel=3,
    )


def _int8(fp32: Path, path: Path, data, log) -> dict:
    """Quantize ``fp32`` to ``path``, calibrated on training batches, checked on the test set;
    a model outside the check's tolerance is not kept and the report says why."""
    from ..deploy.quantize import quantize_checked
    from ..errors import UserError

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
