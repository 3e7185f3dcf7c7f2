"""Capture a model with torch.fx (the first capture tried) and record every node's output
shape."""

from __future__ import annotations

import traceback

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import TraceError


def trace(model: nn.Module, example_input: torch.Tensor, *more_inputs) -> fx.GraphModule:
    """Symbolically trace ``model`` and annotate nodes with ``meta['tensor_meta']``
    (``more_inputs``: further positional arguments of its forward, for submodules).

    The model's train/eval flags and BN statistics are left as they were.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TraceError(
            "a TorchScript module cannot be analysed: torch.fx needs the Python module; "
            "load the weights as a state dict with --arch instead"
        )
    modes = {m: m.training for m in model.modules()}
    try:
        # Traced in training mode so that branches used only in training (auxiliary heads)
        # are in the graph and pruned consistently; shapes are recorded in eval mode.
        model.train()
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types; all mean "cannot trace"
        raise TraceError(
            f"cannot trace {type(model).__name__} with torch.fx: {first_line(exc)}"
            f"{_user_frame(exc)}. Data-dependent control flow and Python ops on tensor values "
            "cannot be traced: rewrite them, or wrap the function with torch.fx.wrap"
        ) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    gm = fx.GraphModule(model, graph)
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input, *more_inputs)
    except Exception as exc:
        shape = tuple(getattr(example_input, "shape", ()))
        raise TraceError(
            f"{type(model).__name__} fails on an example input of shape {shape}: {first_line(exc)}"
        ) from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
    return gm


class _Tracer(fx.Tracer):
    """Keeps norm layers whole: subclasses that fuse an activation (timm's BatchNormAct2d),
    timm's LayerNorm/LayerNorm2d and torchvision's FrozenBatchNorm2d (detection backbones)
    would otherwise be traced into functional calls on their buffers, which the analysis
    cannot follow."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_norm_leaf(m) or super().is_leaf_module(m, qualname)


def is_norm_leaf(m: nn.Module) -> bool:
    """A per-channel normalisation the analysis treats as one norm layer: a batch norm (or
    FrozenBatchNorm2d) or layer norm whose extra parts (activation, dropout) hold no
    parameters."""
    if not isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and (
        type(m).__name__ != "FrozenBatchNorm2d"
    ):
        return False
    return all(not any(True for _ in c.parameters()) for c in m.children())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type if it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _user_frame(exc: BaseException) -> str:
    """' (at file:line in func)' for the innermost frame outside torch, if any."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename}:{f.lineno} in {f.name}: {f.line})"
