"""Models as data: save and load a pruned model without pickle, and read users' files.

Our format is one safetensors file. Its metadata holds the architecture spec (the
arguments of ``models.create``), the channel plan (kept channels per group), the input
shape and a SHA-256 digest of the tensors; ``load`` rebuilds the architecture, applies
the plan and loads the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from . import models
from .errors import UserError
from .graph import analyze
from .pruning import PLAN_ATTR, SHAPE_ATTR, apply_plan, plan_for_counts

FORMAT = "qmixprune/1"


def save(model: nn.Module, path: str | os.PathLike, input_shape=(3, 32, 32)) -> Path:
    """Write ``model`` (built by ``models.create``, pruned or not) to ``path`` atomically."""
    from safetensors.torch import save as st_save

    spec = models.arch_spec(model)
    if spec is None:
        raise UserError(
            "this model has no architecture spec, so it could not be rebuilt on load: build it "
            "with qmixprune.models.create (or load it with qmixprune.load_model_file --arch)"
        )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    shape = getattr(model, SHAPE_ATTR, None) or list(input_shape)
    meta = {
        "format": FORMAT,
        "arch": json.dumps(spec),
        "channels": json.dumps(getattr(model, PLAN_ATTR, {})),
        "input_shape": json.dumps(list(shape)),
        "digest": _digest(tensors),
    }
    return atomic_write_bytes(path, st_save(tensors, metadata=meta))


def load(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model written by :func:`save`, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    data = _read(path)
    try:
        tensors = st_load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a valid qmixprune model file (truncated?): {exc}") from exc
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is a safetensors file but not a qmixprune model ({FORMAT})")
    if _digest(tensors) != meta.get("digest"):
        raise UserError(f"{path} is corrupt: its tensors do not match the stored digest")
    try:
        spec = json.loads(meta["arch"])
        counts = json.loads(meta["channels"])
        shape = tuple(json.loads(meta["input_shape"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} has damaged metadata: {exc}") from exc
    model = models.create(**spec)
    if counts:
        with warnings.catch_warnings():  # the analysis warned when the model was pruned
            warnings.simplefilter("ignore")
            graph = analyze(model, torch.zeros(1, *shape))
        model = apply_plan(model, graph, plan_for_counts(graph, counts))
    # safetensors keeps no per-module state-dict versions; some modules (MNASNet) need them
    state = OrderedDict(tensors)
    state._metadata = getattr(model.state_dict(), "_metadata", None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit the architecture {spec}: {exc}") from exc
    setattr(model, SHAPE_ATTR, list(shape))
    return model.eval()


def load_model_file(
    path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    width: float = 1.0,
    trust_pickle: bool = False,
) -> nn.Module:
    """Load a user's model file, choosing the safe reader for what it is.

    Accepted: our own format; a state dict (weights only) with ``arch``; a TorchScript
    archive (usable for evaluation and export, not for pruning); a pickled ``nn.Module``
    only with ``trust_pickle=True``, since unpickling runs arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    with open(path, "rb") as f:  # the header says which reader applies; no full read here
        head = f.read(9)
    if _is_safetensors(head, path.stat().st_size):
        return load(path)
    if _is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu").eval()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust_pickle:
            raise UserError(
                f"{path} is not a plain state dict (it holds pickled Python objects, e.g. a "
                "whole module); unpickling runs arbitrary code, so pass --trust-pickle "
                "(trust_pickle=True) only if you trust the file, or save a state_dict instead"
            ) from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise UserError(f"{path} is not a PyTorch file: {exc2}") from exc2
    if isinstance(obj, nn.Module):
        return obj.eval()
    state = _state_dict(obj, path)
    if arch is None:
        raise UserError(f"{path} is a state dict: name its architecture with --arch (arch=...)")
    classes = num_classes or _guess_classes(state)
    model = models.create(arch, num_classes=classes, width=width)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(
            f"{path} does not match architecture {arch!r} (width {width}): "
            f"{' '.join(first[1:3]) if len(first) > 1 else first[0]}"
        ) from exc
    return model.eval()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its header's length (8 bytes) and then '{'."""
    if len(head) < 9 or size < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _metadata(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise UserError(f"{path} holds no state dict of tensors (found {type(obj).__name__})")


def _guess_classes(state: dict[str, torch.Tensor]) -> int:
    """Out-features of the last 2-D weight: the classifier of a state dict in module order."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else 10
