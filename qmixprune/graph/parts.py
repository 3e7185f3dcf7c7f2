"""Analyse a model that torch.fx cannot trace whole (detectors: data-dependent
post-processing) through the submodules that do trace: backbone, neck, heads.

One eager forward pass records each submodule's inputs; the largest submodules that trace
on them are analysed as parts of one graph. A part's inputs and outputs are left as they
are (the code between parts is not seen), and so is every module that code outside its
part calls too, so the model's output structure never changes.
"""

from __future__ import annotations

import inspect

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TraceError, UserError
from .fx_capture import trace
from .types import Graph


class _Calls:
    """What one eager forward pass saw: each module's first inputs, how many distinct
    input shapes it got, and which modules were running at every one of its calls."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        self.args: dict[str, tuple] = {}
        self.shapes: dict[str, set] = {}
        self.inside: dict[str, set[str]] = {}
        stack: list[str] = []
        names = {m: n for n, m in model.named_modules()}

        def pre(mod, args, kwargs):
            name = names[mod]
            if name not in self.args:
                self.args[name] = _positional(mod, args, kwargs)
            self.shapes.setdefault(name, set()).add(_shapes((args, kwargs)))
            active = set(stack)
            self.inside[name] = self.inside.get(name, active) & active
            stack.append(name)

        def post(mod, args, output):
            stack.pop()

        handles = []
        for mod in names:
            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(mod.register_forward_hook(post))
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()
            with torch.no_grad():
                model(example_input)
        except Exception as exc:
            raise TraceError(
                f"{type(model).__name__} fails on an example input of shape "
                f"{tuple(example_input.shape)}: {str(exc).strip().splitlines()[:1]}"
            ) from exc
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes.items():
                m.training = mode

    def outside(self, part: str, names: list[str]) -> list[str]:
        """Modules of ``part`` that some call made while ``part`` was not running."""
        return [n for n in names if n in self.inside and part not in self.inside[n]]


def _positional(mod: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    """The call's arguments as positional ones in the signature's order (None if the
    signature takes *args/**kwargs)."""
    if not kwargs:
        return tuple(args)
    try:
        sig = inspect.signature(mod.forward)
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
            return None
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def _shapes(obj) -> tuple:
    out: list = []

    def visit(o):
        if isinstance(o, torch.Tensor):
            out.append(tuple(o.shape))
        elif isinstance(o, (list, tuple)):
            for x in o:
                visit(x)
        elif isinstance(o, dict):
            for x in o.values():
                visit(x)

    visit(obj)
    return tuple(out)


def _reshapes(gm: fx.GraphModule) -> bool:
    """Whether the traced part flattens or reshapes (its analysis then depends on the
    spatial size, which must be the same at every call)."""
    for node in gm.graph.nodes:
        if node.target in (torch.flatten, "flatten", "view", "reshape"):
            return True
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Flatten):
            return True
    return False


def _traced(calls: _Calls, name: str, mod: nn.Module) -> fx.GraphModule | None:
    args = calls.args.get(name)
    if not args:
        return None
    try:
        gm = trace(mod, *args)
    except TraceError:
        return None
    if len(calls.shapes[name]) > 1 and _reshapes(gm):
        return None
    return gm


def _find_parts(calls: _Calls, model: nn.Module) -> list[tuple[str, fx.GraphModule]]:
    """Top-down: a submodule that traces is a part; one that does not is searched for
    parts among its children. Modules without children add nothing (their channels are
    the part's own inputs and outputs)."""
    found: list[tuple[str, fx.GraphModule]] = []

    def search(prefix: str, mod: nn.Module) -> None:
        for child_name, child in mod.named_children():
            name = prefix + child_name
            if not any(True for _ in child.children()):
                continue
            gm = _traced(calls, name, child)
            if gm is not None:
                found.append((name, gm))
            else:
                search(name + ".", child)

    search("", model)
    return found


def analyze_parts(
    analyzer,
    model: nn.Module,
    example_input: torch.Tensor,
    parts: list[str] | None,
    why: str = "",
) -> Graph:
    """Analyse the parts of ``model`` named in ``parts`` (or found) into one graph, with
    ``analyzer`` (a fresh ``propagate.Propagator``); ``why``: why the whole model could not
    be captured."""
    modules = dict(model.named_modules())
    missing = [p for p in parts or () if p not in modules or p == ""]
    if missing:  # before the forward pass
        children = [n for n, _ in model.named_children()]
        raise UserError(f"no submodule {missing[0]!r} to analyse; top-level: {children}")
    calls = _Calls(model, example_input)
    if parts is None:
        found = _find_parts(calls, model)
    else:
        found = []
        for name in parts:
            if name not in calls.args:
                raise UserError(f"part {name!r} is not called by the model's forward")
            gm = _traced(calls, name, modules[name])
            if gm is None:
                try:  # say why it does not trace
                    trace(modules[name], *calls.args[name])
                except TraceError as exc:
                    raise UserError(f"part {name!r}: {exc}") from None
                raise UserError(f"part {name!r} is called with inputs of several shapes")
            found.append((name, gm))
    for name, gm in found:
        inner = [name + "." + n for n, _ in gm.named_modules() if n]
        analyzer.use(gm.graph, modules[name], name + ".", calls.outside(name, inner))
        analyzer.run()
    graph = analyzer.graph(tuple(example_input.shape[1:]))
    graph.parts = [name for name, _ in found]
    graph.capture = "parts"
    shown = ", ".join(graph.parts[:6]) + (", ..." if len(graph.parts) > 6 else "")
    head = (
        f"{type(model).__name__} cannot be traced whole ({why})"
        if why
        else f"{type(model).__name__} analysed by the parts named"
    )
    graph.warnings.insert(
        0,
        f"{head}: analysed {len(found)} parts ({shown}); channels between parts and the "
        "code outside them are left unpruned",
    )
    return graph
