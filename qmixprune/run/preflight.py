"""Every check of a run that can be made before OUT is touched or any long work starts,
made once, by the CLI and the Python API alike.

``check_compress`` and ``check_search`` refuse, each with one line (``UserError``): a bad
configuration, a device that is not there, the data's classes against the model's outputs,
a training set smaller than one batch, a latency table made for another model, a target
that no plan can reach, on ``--resume`` another configuration or a damaged checkpoint, and
(compress) a teacher at chance level. What they measured on the way (the model's layers
and MACs, its channel graph, the search's bounds, the teacher's score) is returned as a
``Ready`` for the stages, so that nothing is measured twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from ..config import as_dict
from ..deploy.bench import onnxruntime
from ..device import resolve
from ..errors import UserError
from ..flops import LayerCount, measure, totals
from ..search import SearchConfig
from ..search.env import Measured
from ..search.env import measure as measure_for_search
from ..train import accuracy
from . import outputs
from .config import CompressConfig
from .outdir import check_same_config

Score = Callable[[nn.Module], float]  # a task's own metric of a model, higher is better


@dataclass
class Ready:
    """A run that passed every check, and what the checks measured on the way."""

    device: torch.device  # the run's one device decision; every stage gets it
    input_shape: tuple[int, ...]  # one sample, as the model takes it
    measured: Measured  # layers, channel graph, plan costs and the search's bounds
    macs: int  # the teacher's
    params: int
    metric: str  # "test_acc", or "score" for a task's own score
    teacher_score: float | None  # the teacher's test accuracy (or score); None: not measured
    untrained: bool  # the teacher is at chance level (allowed by allow_untrained)
    calib: list | None  # the caller's calibration batches, read once
    input: dict  # report["input"]: shape, normalisation and where it comes from
    latency_table: dict | None

    def example(self) -> torch.Tensor:
        """A zero input of one sample on the run's device."""
        return torch.zeros(1, *self.input_shape, device=self.device)


def check_compress(
    model: nn.Module,
    data,
    cfg: CompressConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    latency_table: dict | None = None,
    score: Score | None = None,
    train_step: Callable | None = None,
    calib: Iterable | None = None,
    teacher_score: float | None = None,
) -> tuple[CompressConfig, Ready]:
    """Every check of a ``compress`` run (see the module docstring); returns the resolved
    config (its device decided) and what was measured. Moves ``model`` to that device."""
    cfg = cfg.resolved()
    cfg.validate()
    cfg.search.env.validate()
    cfg.distill.validate()
    check_latency_table(cfg.target_latency, latency_table)
    if cfg.export or cfg.int8:  # the export's parity check and timing run in ONNX Runtime
        onnxruntime("compress's ONNX export (config.export; or set it to false)")
    device = resolve(cfg.device)
    cfg = replace(cfg, device=str(device))
    if data is None and (score is None or calib is None):
        raise UserError("compress needs data=, unless both score= and calib= are given")
    if data is None and cfg.distill.epochs > 0:
        raise UserError(
            "fine-tuning needs training data: pass data= (its train split feeds train_step), "
            "or set config.distill.epochs to 0"
        )
    calib = _read_calib(calib, cfg.search.env.calib_batches)
    if out is not None and resume:
        check_same_config(out, outputs.CONFIG, as_dict(cfg))
        check_checkpoints(out)
    classify = data is not None and score is None and train_step is None
    ready = _measure(model, data, cfg.search, device, calib, latency_table, classify)
    if data is not None and cfg.distill.epochs > 0:
        check_batch(len(data.train), cfg.distill.batch_size)
    if score is not None:
        ready.metric = "score"
    if teacher_score is None:
        teacher = model.eval()
        teacher_score = float(score(teacher)) if score is not None else accuracy(teacher, data.test)
    ready.teacher_score = float(teacher_score)
    if score is None:
        ready.untrained = at_chance(ready.teacher_score, data.num_classes, len(data.test))
        if ready.untrained and not cfg.allow_untrained:
            check_teacher(ready.teacher_score, data.num_classes, len(data.test))
    return cfg, ready


def check_search(
    model: nn.Module,
    data,
    cfg: SearchConfig,
    *,
    device: str | torch.device | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    latency_table: dict | None = None,
) -> Ready:
    """Every check of a ``search`` run (a plan only: no teacher score, no fine-tuning)."""
    cfg.env.validate()
    check_latency_table(cfg.env.target_latency, latency_table)
    device = resolve(device)
    if out is not None and resume:
        check_same_config(out, outputs.SEARCH_CONFIG, as_dict(cfg))
        check_checkpoints(out, fine_tuned=False)
    return _measure(model, data, cfg, device, None, latency_table, classify=True)


def _measure(model, data, cfg: SearchConfig, device, calib, latency_table, classify) -> Ready:
    """The model run once on a zero input (its layers, MACs and outputs), analysed once,
    and the search's bounds: each a check as well as a measurement."""
    model.to(device).eval()
    shape = tuple(data.input_shape) if data is not None else tuple(_first_input(calib).shape[1:])
    rows, output = run_once(model, torch.zeros(1, *shape, device=device))
    if classify:
        check_classes(data.num_classes, output)
    if latency_table is not None:
        from ..latency import check_table

        check_table(latency_table, model, None, rows)
    measured = measure_for_search(model, shape, cfg.env, latency_table, rows)
    macs, params = totals(model, rows)
    info = _input_info(data) if data is not None else {"shape": list(shape)}
    return Ready(
        device, shape, measured, macs, params, "test_acc", None, False, calib, info, latency_table
    )


def run_once(model: nn.Module, x: torch.Tensor) -> tuple[list[LayerCount], object]:
    """``flops.measure`` of ``model`` on ``x``; a model that fails on it is one line naming
    the input size it runs at."""
    try:
        return measure(model, x)
    except Exception as exc:  # the user's model: any failure is a mismatch of inputs
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        hint = "check --input-size and --data"
        if x.dim() == 4:
            from ..inputs import expected_size

            size = expected_size(model, x.shape[-1], x.shape[1])
            if size is not None:  # digits/CIFAR are 32 px: only imagefolder can be resized
                hint = f"it runs at {size} px: --data imagefolder --input-size {size}"
        raise UserError(
            f"the model does not accept the data's inputs of shape {tuple(x.shape[1:])}: "
            f"{first} ({hint})"
        ) from exc


def check_classes(num_classes: int, output) -> None:
    """Refuse data whose labels do not match the classifier's ``output`` (its last dim when
    it is 2-D), and data with one class (its accuracy is 1.0 whatever the model does)."""
    if num_classes < 2:
        raise UserError(
            f"the data has {num_classes} class: accuracy would mean nothing; give data with "
            "at least 2 classes (one sub-folder per class)"
        )
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] != num_classes:
        raise UserError(
            f"the data has {num_classes} classes but the model has {output.shape[1]} outputs: "
            "use the data the model was trained on (or a state dict with --num-classes "
            "matching)"
        )


def check_latency_table(target_latency: float | None, table: dict | None) -> None:
    """A latency target is a fraction of a latency measured on the device: it needs the
    table ``qmixprune profile`` made there."""
    if target_latency is not None and table is None:
        raise UserError(
            "--target-latency needs --latency-table (latency_table= in Python), made on the "
            "device by `qmixprune profile`"
        )


def check_batch(train_size: int, batch_size: int, key: str = "distill.batch_size") -> None:
    """Fine-tuning drops incomplete batches: a training set smaller than one would train
    nothing, and would only be found after the whole search."""
    if train_size < batch_size:
        raise UserError(
            f"the training set has {train_size} samples, fewer than one batch ({key} "
            f"{batch_size}): give more data or lower {key} in --config"
        )


def check_checkpoints(out: str | Path, fine_tuned: bool = True) -> None:
    """On ``--resume``: a missing search checkpoint or a damaged (truncated) one is refused
    now, not after the model and data are loaded and the search environment is built."""
    first = Path(out) / outputs.SEARCH_CHECKPOINT
    if not first.is_file():  # what the search would say after minutes
        raise UserError(
            f"nothing to resume: no {first.name} in {out} (the run stopped before its first "
            "checkpoint, or finished): rerun without --resume, with --overwrite to replace it"
        )
    for name in outputs.CHECKPOINTS if fine_tuned else (first.name,):
        path = Path(out) / name
        if not path.is_file():
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(
                f"{path} is damaged ({type(exc).__name__}): delete it to redo that stage, or "
                "start afresh with --overwrite"
            ) from exc


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


def _read_calib(calib: Iterable | None, n: int) -> list | None:
    """The caller's calibration batches, read once: the search and the pruned model's BN
    both use them."""
    if calib is None:
        return None
    calib = list(itertools.islice(calib, max(n, 1)))
    if not calib:
        raise UserError("calib= is empty: give at least one batch of model inputs")
    return calib


def _first_input(calib: list) -> torch.Tensor:
    """The model input of the first calibration batch (a tensor, or its first element)."""
    first = calib[0]
    return first[0] if isinstance(first, (list, tuple)) else first


def _input_info(data) -> dict:
    """report["input"]: what the model was fed."""
    mean = getattr(data, "mean", None)
    return {
        "shape": list(data.input_shape),
        "mean": list(mean) if mean is not None else None,
        "std": list(data.std) if mean is not None else None,
        "source": getattr(data, "norm_source", ""),
    }
