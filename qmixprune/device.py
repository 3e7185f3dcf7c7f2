"""The one device decision: which torch device a run uses, and moving batches there.

``resolve`` is called once per run (CLI, ``compress``, ``distill``); everything below it receives
the resulting ``torch.device`` and moves its tensors with ``to_device``. Nothing else in the
package picks a device or calls ``.cuda()``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch

from .errors import UserError

CHOICES = "auto, cpu, cuda or cuda:N"


def _local_rank() -> int | None:
    """This process's GPU slot under torchrun (``LOCAL_RANK``), or None outside torchrun."""
    value = os.environ.get("LOCAL_RANK")
    if value is None or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(value)


def _cuda(index: int | None, spec: str) -> torch.device:
    if not torch.cuda.is_available():
        raise UserError(
            f"--device {spec}: no CUDA GPU is visible to torch; use --device cpu "
            "(or install a CUDA build of torch and check CUDA_VISIBLE_DEVICES)"
        )
    count = torch.cuda.device_count()
    if index is None:
        rank = _local_rank()
        index = rank if rank is not None else 0
    if not 0 <= index < count:
        raise UserError(
            f"--device {spec}: GPU {index} is not visible ({count} visible); "
            f"use cuda:0..cuda:{count - 1}, or start torchrun with at most {count} processes "
            "per node"
        )
    return torch.device("cuda", index)


def resolve(spec: str | torch.device | None = "auto") -> torch.device:
    """The device a run uses. ``auto``/None: the local GPU when one is visible (under torchrun
    ``cuda:$LOCAL_RANK``), else the CPU; ``cpu``, ``cuda`` (this process's GPU) and ``cuda:N``
    as given. A CUDA request without a visible GPU raises ``UserError``."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return _cuda(None, "auto") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda":
        return _cuda(None, text)
    if text.startswith("cuda:"):
        index = text[len("cuda:") :]
        if not index.isdigit():
            raise UserError(f"--device {spec}: not a device; use {CHOICES}")
        return _cuda(int(index), text)
    raise UserError(f"--device {spec}: not a device; use {CHOICES}")


def device_context(device: torch.device):
    """A context in which ``device`` is the current CUDA device (nothing for other devices):
    pinned-memory threads, ``torch.cuda`` calls without a device and new CUDA contexts use
    the current device, which is GPU 0 unless bound."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor moved to ``device``, recursively through tuples, lists and
    dicts (named tuples keep their type); other objects are returned as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters (or buffers) live; the CPU for a module without any."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
