"""Models as data: save and load a pruned model without pickle, and read users' files.

Our format is one safetensors file. Its metadata holds the channel plan (the kept channel
indices of each group, under the group names of ``analyze``), the input shape, a SHA-256
digest of the tensors and, for our built-in architectures, the spec (the arguments of
``models.create``). ``load`` rebuilds the architecture (or takes the user's unpruned
instance), applies the plan and loads the weights.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import pickletools
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from . import models
from .errors import UserError
from .files import write_bytes
from .graph import Graph, analyze
from .pruning import PARTS_ATTR, SHAPE_ATTR, Plan, apply_plan, carried_plan, plan_for_counts

FORMAT = "qmixprune/1"


def save(model: nn.Module, path: str | os.PathLike, input_shape=(3, 32, 32)) -> Path:
    """Write ``model`` (pruned or not, ours or the user's class) to ``path`` atomically.

    A model of the user's own class is restored with ``load(path, model=Class(...))``.
    """
    from safetensors.torch import save as st_save

    if isinstance(model, torch.jit.ScriptModule):
        raise UserError("a TorchScript module cannot be saved as a qmixprune model file")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    plan = carried_plan(model)
    shape = getattr(model, SHAPE_ATTR, None) or list(input_shape)
    cls = type(model)
    meta = {
        "format": FORMAT,
        "arch": json.dumps(models.arch_spec(model)),
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "plan": json.dumps(plan),
        "channels": json.dumps({k: len(v["keep"]) for k, v in plan.items()}),
        "input_shape": json.dumps(list(shape)),
        "parts": json.dumps(getattr(model, PARTS_ATTR, None)),
        "digest": tensors_digest(tensors),
    }
    meta["meta_digest"] = _meta_digest(meta)
    return write_bytes(path, st_save(tensors, metadata=meta))


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model written by :func:`save`, in eval mode.

    ``model``: an unpruned instance of the saved model's class (needed for the user's own
    classes; optional for our built-in architectures). It is left untouched: the plan is
    applied to a copy, which then receives the saved weights.
    """
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
    if tensors_digest(tensors) != meta.get("digest"):
        raise UserError(f"{path} is corrupt: its tensors do not match the stored digest")
    # files written before the plan carried indices have no digest of their metadata
    if "meta_digest" in meta and _meta_digest(meta) != meta["meta_digest"]:
        raise UserError(f"{path} is corrupt: its metadata (plan, architecture) was changed")
    try:
        spec = json.loads(meta["arch"])
        shape = tuple(json.loads(meta["input_shape"]))
        parts = json.loads(meta.get("parts", "null"))
        # files written before plans carried indices hold kept counts only
        plan = json.loads(meta["plan"]) if "plan" in meta else None
        counts = json.loads(meta["channels"]) if plan is None else None
    except (KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} has damaged metadata: {exc}") from exc
    if model is None:
        if spec is None:
            raise UserError(
                f"{path} holds a model of your own class ({meta.get('class', 'unknown')}): "
                "pass model= an unpruned instance of it (CLI: --model-factory pkg.module:function)"
            )
        model = models.create(**spec)
    elif carried_plan(model):
        raise UserError("model= must be an unpruned instance (this one was pruned already)")
    if plan or counts:
        graph = _graph(model, shape, parts)
        if plan is not None:
            _check_fits(plan, graph, path)
            model = apply_plan(model, graph, Plan({k: tuple(v["keep"]) for k, v in plan.items()}))
        else:
            model = apply_plan(model, graph, plan_for_counts(graph, counts))
    # safetensors keeps no per-module state-dict versions; some modules (MNASNet) need them
    state = OrderedDict(tensors)
    state._metadata = getattr(model.state_dict(), "_metadata", None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        what = f"the architecture {spec}" if spec is not None else f"{type(model).__name__}"
        raise UserError(f"{path}: weights do not fit {what}: {_first_problem(exc)}") from exc
    setattr(model, SHAPE_ATTR, list(shape))
    return model.eval()


def model_factory(text: str) -> Callable[[], nn.Module]:
    """``pkg.module:function`` -> that function (it builds the user's unpruned model).

    Importing runs the user's code: naming it on the command line is their explicit choice.
    The current folder is searched first, as ``python -m`` would.
    """
    mod_name, sep, attr = text.partition(":")
    if not sep or not mod_name or not attr:
        raise UserError(
            f"--model-factory {text!r}: write it as pkg.module:function (a function that "
            "returns the unpruned model)"
        )
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:
        raise UserError(f"--model-factory: cannot import {mod_name}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise UserError(f"--model-factory: {mod_name} has no function {attr}")

    def build() -> nn.Module:
        made = fn()
        if not isinstance(made, nn.Module):
            raise UserError(f"--model-factory: {text} returned {type(made).__name__}, not a module")
        return made

    return build


def _graph(model: nn.Module, shape, parts: list[str] | None = None) -> Graph:
    param = next(model.parameters(), None)
    x = torch.zeros(1, *shape, device=param.device if param is not None else None)
    with warnings.catch_warnings():  # the analysis warned when the model was pruned
        warnings.simplefilter("ignore")
        return analyze(model, x, parts or None)


def _check_fits(plan: dict[str, dict], graph: Graph, path: Path) -> None:
    """One clear error for the first group of ``plan`` that ``graph`` does not have as saved."""
    names = {g.name for g in graph.groups}
    for name, entry in plan.items():
        if name not in names:
            raise UserError(
                f"{path}: the saved plan does not fit this model: it has no channel group "
                f"{name!r} (another architecture?); its groups: {sorted(names)[:8]}"
            )
        group = graph.group(name)
        if group.channels != entry["channels"]:
            raise UserError(
                f"{path}: the saved plan does not fit this model: group {name!r} has "
                f"{group.channels} channels here but {entry['channels']} in the saved model's "
                "original (pass an unpruned instance with the same widths)"
            )
        if not group.prunable:
            raise UserError(
                f"{path}: the saved plan does not fit this model: group {name!r} cannot be "
                f"pruned here ({group.reason})"
            )
        if any(not 0 <= i < group.channels for i in entry["keep"]):
            raise UserError(f"{path} has damaged metadata: group {name!r} keeps no such channel")


def _first_problem(exc: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else "mismatch")


def load_model_file(
    path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    width: float = 1.0,
    trust_pickle: bool = False,
    factory: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Load a user's model file, choosing the safe reader for what it is.

    Accepted: our own format; a state dict (weights only) with ``arch`` or ``factory`` (a
    function returning the user's unpruned model, which also restores our format's plan
    onto the user's class); a TorchScript archive (usable for evaluation and export, not
    for pruning); a pickled ``nn.Module`` only with ``trust_pickle=True``, since unpickling
    runs arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    if arch is not None and factory is not None:
        raise UserError("give --arch or --model-factory, not both")
    with open(path, "rb") as f:  # the header says which reader applies; no full read here
        head = f.read(9)
    if _is_safetensors(head, path.stat().st_size):
        return load(path, model=factory() if factory is not None else None)
    if _is_torchscript(path):
        if not trust_pickle:  # PyTorch treats TorchScript as a program, like a pickle
            raise UserError(
                f"{path} is a TorchScript archive: loading it runs code from the file, so pass "
                "--trust-pickle (trust_pickle=True) only if you trust the file"
            )
        return torch.jit.load(str(path), map_location="cpu").eval()
    what_else = _not_pytorch(path)
    if what_else:
        raise UserError(
            f"{path} {what_else}: give our .safetensors, a state dict saved with "
            "torch.save(model.state_dict(), path), or a TorchScript archive"
        )
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: not one line
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not isinstance(exc, pickle.UnpicklingError):  # not refused: broken
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"{path} is damaged or truncated ({first}): save it again") from exc
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
    if factory is not None:
        model, what = factory(), "the model of --model-factory"
    elif arch is None:
        raise UserError(
            f"{path} is a state dict: name its architecture with --arch (arch=...), or for "
            "your own class --model-factory pkg.module:function (factory=...)"
        )
    else:
        classes = num_classes or _guess_classes(state)
        model = models.create(arch, num_classes=classes, width=width)
        what = f"architecture {arch!r} (width {width})"
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        hint = _closest_arch(state, classes) if factory is None else ""
        raise UserError(f"{path} does not match {what}: {_mismatch(model, state)}{hint}") from exc
    return model.eval()


def _not_pytorch(path: Path) -> str | None:
    """Why ``path`` is neither a PyTorch file nor a pickle, or None. Reads the opcodes of
    the first pickle without running any (pickletools only parses)."""
    if path.stat().st_size == 0:
        return "is empty"
    if zipfile.is_zipfile(path):
        return None  # torch.save's format; torch.load says whether it is damaged
    with open(path, "rb") as f:
        try:
            for _ in pickletools.genops(f):
                pass
        except Exception:
            return "is neither a PyTorch file nor a pickle (another format, damaged or truncated)"
    return None


def _mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """The first few differences between a state dict and a model, in one short clause."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing from the file (e.g. {missing[:2]})")
    if unexpected:
        parts.append(f"{len(unexpected)} keys the model lacks (e.g. {unexpected[:2]})")
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} shapes differ (e.g. {k}: {tuple(state[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in the model)"
        )
    return "; ".join(parts) or "the weights do not load"


def _closest_arch(state: dict[str, torch.Tensor], classes: int) -> str:
    """'; it fits --arch A --width W' for the built-in architecture (and width) whose keys
    the state dict shares most, or '' when none shares most of them."""
    best, best_share = None, 0.5
    for name in models.list_models():
        try:
            keys = set(models.create(name, num_classes=classes).state_dict())
        except Exception:
            continue
        share = len(keys & set(state)) / len(keys | set(state))
        if share > best_share:
            best, best_share = name, share
    if best is None:
        return ""
    full = models.create(best, num_classes=classes).state_dict()
    conv = next((k for k, v in full.items() if v.dim() == 4 and k in state), None)
    if conv is not None:
        width = round(state[conv].shape[0] / full[conv].shape[0], 4)
        try:
            fit = models.create(best, num_classes=classes, width=width).state_dict()
            if all(k in fit and fit[k].shape == v.shape for k, v in state.items()):
                return f"; it fits --arch {best} --width {width:g}"
        except Exception:
            pass
    return f"; the closest built-in architecture is --arch {best}"


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The digest a model file stores of its tensors (checked on load)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _meta_digest(meta: dict[str, str]) -> str:
    """SHA-256 of the metadata (the plan, architecture, shapes and the tensors' digest)."""
    fields = {k: v for k, v in meta.items() if k != "meta_digest"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


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
