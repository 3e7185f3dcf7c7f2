"""A run's inputs checked against each other before OUT is touched or any long work starts:
the data's classes against the model's outputs, the training set against one batch, a
latency table against the model's layers and widths. Each refusal is one line."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError


def model_outputs(model: nn.Module, example_input: torch.Tensor) -> int | None:
    """The class count of a classifier (last dim of a 2-D output), None for other outputs."""
    try:
        with torch.no_grad():
            y = model.eval()(example_input)
    except Exception as exc:  # the user's model: any failure is a mismatch of inputs
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        hint = "check --input-size and --data"
        if example_input.dim() == 4:
            from ..inputs import expected_size

            size = expected_size(model, example_input.shape[-1], example_input.shape[1])
            if size is not None:  # digits/CIFAR are 32 px: only imagefolder can be resized
                hint = f"it runs at {size} px: --data imagefolder --input-size {size}"
        raise UserError(
            f"the model does not accept the data's inputs of shape "
            f"{tuple(example_input.shape[1:])}: {first} ({hint})"
        ) from exc
    if isinstance(y, torch.Tensor) and y.dim() == 2:
        return int(y.shape[1])
    return None


def check_classes(model: nn.Module, num_classes: int, example_input: torch.Tensor) -> None:
    """Refuse data whose labels do not match the classifier's outputs, and data with one
    class (its accuracy is 1.0 whatever the model does)."""
    if num_classes < 2:
        raise UserError(
            f"the data has {num_classes} class: accuracy would mean nothing; give data with "
            "at least 2 classes (one sub-folder per class)"
        )
    outputs = model_outputs(model, example_input)
    if outputs is not None and outputs != num_classes:
        raise UserError(
            f"the data has {num_classes} classes but the model has {outputs} outputs: use the "
            "data the model was trained on (or a state dict with --num-classes matching)"
        )


def check_batch(train_size: int, batch_size: int, key: str = "distill.batch_size") -> None:
    """Fine-tuning drops incomplete batches: a training set smaller than one would train
    nothing, and would only be found after the whole search."""
    if train_size < batch_size:
        raise UserError(
            f"the training set has {train_size} samples, fewer than one batch ({key} "
            f"{batch_size}): give more data or lower {key} in --config"
        )


def check_run(
    model: nn.Module,
    data,
    latency_table: dict | None = None,
    batch_size: int | None = None,
) -> None:
    """Every cross-check of a compress/search run that needs no search (see module doc)."""
    from ..device import module_device

    x = torch.zeros(1, *data.input_shape, device=module_device(model))  # where the model is
    check_classes(model, data.num_classes, x)
    if batch_size is not None:
        check_batch(len(data.train), batch_size)
    if latency_table is not None:
        from ..latency import check_table

        check_table(latency_table, model, x)


CHECKPOINTS = ("search_checkpoint.pt", "distill_checkpoint.pt")


def check_checkpoints(out) -> None:
    """On ``--resume``: a missing search checkpoint or a damaged (truncated) one is refused
    now, not after the model and data are loaded and the search environment is built."""
    from pathlib import Path

    if not (Path(out) / CHECKPOINTS[0]).is_file():  # what the search would say after minutes
        raise UserError(
            f"nothing to resume: no {CHECKPOINTS[0]} in {out} (the run stopped before its first "
            "checkpoint, or finished): rerun without --resume, with --overwrite to replace it"
        )
    for name in CHECKPOINTS:
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
