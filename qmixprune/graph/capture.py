"""Which capture of a model the analysis uses: torch.fx where it traces, else
torch.export (non-strict), else the parts of the model that fx traces."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from ..errors import TraceError
from .export_capture import export_capture
from .fx_capture import trace
from .parts import analyze_parts
from .propagate import Propagator
from .types import Graph


def analyze(model: nn.Module, example_input: torch.Tensor, parts: list[str] | None = None) -> Graph:
    """Capture ``model`` and find the groups of channels that must be pruned together.

    Ops the analysis cannot reason about leave the channels that reach them unpruned and
    emit one warning each; the model's output channels are never prunable. A model that
    torch.fx cannot trace (data-dependent Python, iterated tensors) is captured with
    torch.export; one that neither captures whole (detectors with data-dependent
    post-processing) is analysed by parts: the submodules named in ``parts`` or, by
    default, the largest ones that trace (see ``graph.parts``); channels between parts and
    everything outside them are left as they are.
    """
    if parts is not None:
        return _warned(analyze_parts(Propagator(), model, example_input, parts))
    shape = tuple(example_input.shape[1:])
    try:
        gm = trace(model, example_input)
    except TraceError as exc:
        fx_error = exc
    else:
        return _warned(_propagate(gm.graph, model, shape))
    if isinstance(model, torch.jit.ScriptModule):
        raise fx_error
    try:
        captured = export_capture(model, example_input)
    except TraceError as exc:
        export_error = exc
    else:
        graph = _propagate(captured, model, shape)
        graph.capture = "export"
        graph.warnings.insert(
            0,
            f"{_reason(fx_error)}; captured with torch.export (non-strict) instead",
        )
        return _warned(graph)
    why = f"{_reason(fx_error)}; {_reason(export_error)}"
    try:
        graph = analyze_parts(Propagator(), model, example_input, None, why)
    except TraceError:
        graph = None
    if graph is None or not graph.parts:  # nothing traceable: the whole model's reason
        raise fx_error
    return _warned(graph)


def _propagate(captured, model: nn.Module, shape: tuple):
    """The channel graph of one whole-model capture (fx's graph or export's op list), read
    against the user's modules (their attributes too)."""
    propagator = Propagator()
    propagator.use(captured, model)
    propagator.run()
    return propagator.graph(shape)


def _reason(error: TraceError) -> str:
    """The first sentence of a capture's error."""
    return str(error).split(". ")[0]


def _warned(graph: Graph) -> Graph:
    for message in graph.warnings:
        warnings.warn(message, stacklevel=3)
    return graph
