"""Propagate channel layouts through a traced model and tie channel spaces into groups.

Every Conv/Linear output starts a new channel space. Ops that keep the channel axis pass
the layout on; binary element-wise ops tie their operands' spaces; concatenation along
the channel axis chains layouts; flatten spreads each channel over its spatial positions.
An op we cannot reason about blocks the spaces that reach it (with a warning naming it),
so everything else can still be pruned.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TraceError
from .ops import (
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    REDUCE,
    SHAPE_ONLY_METHODS,
)
from .parts import analyze_parts
from .trace import is_norm_leaf, trace
from .types import PRODUCER_KINDS, Graph, Group, Seg, Slot


@dataclass(frozen=True)
class Layout:
    """The channel structure of a tensor: which axis carries channels and from where."""

    axis: int
    ndim: int
    segs: tuple[Seg, ...]


def _tensor_meta(node: fx.Node):
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta if hasattr(meta, "shape") else None


def _shape(node) -> tuple[int, ...] | None:
    meta = _tensor_meta(node)
    return tuple(meta.shape) if meta is not None else None


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target} (node {node.name})"


class _Analyzer:
    def __init__(self, gm: fx.GraphModule | None = None) -> None:
        self.sizes: list[int] = []
        self.parent: list[int] = []
        self.blocked: dict[int, str] = {}
        self.period: dict[int, int] = {}  # root space -> blocks that keep equal positions
        self.slots: dict[tuple[str, str], Slot] = {}
        self.layouts: dict[fx.Node, Layout | None] = {}
        self.warnings: list[str] = []
        if gm is not None:
            self.use(gm)

    def use(self, gm: fx.GraphModule, prefix: str = "", outside=()) -> None:
        """Analyse ``gm`` next: the whole model, or a traced part named ``prefix`` (then
        ``outside``: full names of modules that code outside the part calls too)."""
        self.gm, self.modules = gm, dict(gm.named_modules())
        self.prefix, self.outside = prefix, set(outside)

    # -- channel spaces (union-find) ---------------------------------------------------
    def new_space(self, size: int, blocked: str = "") -> int:
        self.sizes.append(size)
        self.parent.append(len(self.parent))
        if blocked:
            self.blocked[len(self.sizes) - 1] = blocked
        return len(self.sizes) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.sizes[ra] != self.sizes[rb]:
            return False
        self.parent[rb] = ra
        reason = self.blocked.pop(rb, "") or self.blocked.get(ra, "")
        if reason:
            self.blocked[ra] = reason
        period = math.lcm(self.period.pop(rb, 1), self.period.get(ra, 1))
        if period > 1:
            self.period[ra] = period
        return True

    def set_period(self, space: int, groups: int) -> None:
        """The channels of ``space`` feed or leave a conv of ``groups`` groups."""
        root = self.find(space)
        self.period[root] = math.lcm(self.period.get(root, 1), groups)

    def block(self, layout: Layout | None, reason: str, warn: bool = True) -> None:
        if layout is None:
            return
        for seg in layout.segs:
            root = self.find(seg.space)
            if root not in self.blocked:
                self.blocked[root] = reason
                if warn:
                    self.warnings.append(f"channels reaching {reason} are left unpruned")

    def tie(self, a: Layout, b: Layout, reason: str) -> bool:
        """Tie two layouts channel by channel; block both if their structures differ."""
        same = (
            a.ndim - a.axis == b.ndim - b.axis
            and len(a.segs) == len(b.segs)
            and all(x.expand == y.expand for x, y in zip(a.segs, b.segs))
            and all(self.sizes[x.space] == self.sizes[y.space] for x, y in zip(a.segs, b.segs))
        )
        if same:
            for x, y in zip(a.segs, b.segs):
                self.union(x.space, y.space)
            return True
        self.block(a, reason)
        self.block(b, reason)
        return False

    def add_slot(self, module: str, kind: str, segs: tuple[Seg, ...]) -> None:
        key = (module, kind)
        old = self.slots.get(key)
        if old is None:
            self.slots[key] = Slot(module, kind, segs)
            return
        # A module called twice must see the same channels both times.
        a, b = (Layout(0, 1, s) for s in (old.segs, segs))
        self.tie(a, b, f"module {module} (called twice with different channels)")

    # -- propagation ---------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self.layouts[node] = None
            elif node.op == "output":
                for arg in _flat_nodes(node.args):
                    self.block(self.layouts.get(arg), "the model's output", warn=False)
            else:
                self.layouts[node] = self.visit(node)

    def layout_of(self, arg) -> Layout | None:
        return self.layouts.get(arg) if isinstance(arg, fx.Node) else None

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in _flat_nodes((node.args, node.kwargs)) if _tensor_meta(a) is not None]

    def unknown(self, node: fx.Node) -> None:
        for arg in self.tensor_inputs(node):
            self.block(self.layout_of(arg), _op_name(node))
        return None

    def visit(self, node: fx.Node) -> Layout | None:
        out_shape = _shape(node)
        inputs = self.tensor_inputs(node)
        if out_shape is None:  # shape queries need nothing; tuples (split, ...) are opaque
            if node.target in SHAPE_ONLY_METHODS or node.target is getattr:
                return None
            return self.unknown(node)
        if not inputs and node.op != "call_module":
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target], out_shape)
        target = node.target
        first = self.layout_of(node.args[0]) if node.args else None
        if target in PASS_FUNCTIONS or (node.op == "call_method" and target in PASS_METHODS):
            return self.passthrough(node, first, out_shape)
        if target in BINARY_FUNCTIONS or (node.op == "call_method" and target in BINARY_METHODS):
            return self.binary(node, out_shape)
        if target in (torch.flatten, "flatten", "view", "reshape"):
            return self.flatten(node, first, out_shape)
        if target is torch.cat:
            return self.cat(node, out_shape)
        if target in (torch.permute, "permute"):
            return self.permute(node, first, out_shape)
        if target in REDUCE:
            return self.reduce(node, first, out_shape)
        if getattr(target, "__name__", "") == "stochastic_depth":
            return self.passthrough(node, first, out_shape)
        return self.unknown(node)

    def passthrough(self, node, layout: Layout | None, out_shape) -> Layout | None:
        if layout is None:
            return None
        in_shape = _shape(node.args[0])
        if len(out_shape) == layout.ndim and out_shape[layout.axis] == in_shape[layout.axis]:
            return layout
        return self.unknown(node)

    def binary(self, node: fx.Node, out_shape) -> Layout | None:
        ndim = len(out_shape)
        result: Layout | None = None
        for arg in node.args[:2]:
            shape = _shape(arg)
            if shape is None:
                continue  # a Python scalar
            lay = self.layout_of(arg)
            if lay is None:
                continue
            lay = Layout(lay.axis + ndim - lay.ndim, ndim, lay.segs)
            if result is None:
                result = lay
            elif not self.tie(result, lay, _op_name(node)):
                return None
        if result is None:
            return None
        # An operand without a layout that spans the channel axis (a constant, a buffer)
        # cannot shrink with the channels.
        for arg in node.args[:2]:
            shape = _shape(arg)
            if shape is None or self.layout_of(arg) is not None:
                continue
            pos = result.axis - (ndim - len(shape))
            if 0 <= pos < len(shape) and shape[pos] != 1:
                if self.scale(arg, result, shape[pos]):
                    continue
                self.block(result, f"{_op_name(node)} with a constant operand")
                return None
        return result

    def scale(self, arg: fx.Node, layout: Layout, width: int) -> bool:
        """A per-channel parameter (ConvNeXt's layer scale) applied element-wise: it can be
        cut with the channels when it is used only here, through reshapes, with the
        channels along its first dim."""
        node, name = arg, None
        while isinstance(node, fx.Node) and len(node.users) == 1:
            if node.op == "get_attr":
                name = node.target
                break
            if node.target not in (torch.reshape, torch.unsqueeze, "reshape", "view", "unsqueeze"):
                return False
            node = node.args[0]
        if name is None or sum(n.target == name for n in self.gm.graph.nodes) != 1:
            return False
        try:
            param = self.gm.get_parameter(name)
        except AttributeError:
            return False  # a buffer or a plain tensor attribute
        channels = sum(self.sizes[s.space] * s.expand for s in layout.segs)
        if param.numel() != width or width != channels or param.shape[0] != width:
            return False
        self.add_slot(self.prefix + name, "scale", layout.segs)
        return True

    def flatten(self, node: fx.Node, layout: Layout | None, out_shape) -> Layout | None:
        if layout is None:
            return None
        in_shape = _shape(node.args[0])
        start = _merged_start(in_shape, out_shape)
        if start is None:
            return self.unknown(node)
        if node.target in ("view", "reshape"):
            dims = node.args[1:] if len(node.args) > 2 else node.args[1]
            dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
            # A literal width other than -1 would break once the channels shrink.
            literals = [d for d in dims[start:] if not isinstance(d, fx.Node)]
            if len(dims) != len(out_shape) or literals != [-1]:
                return self.unknown(node)
        if layout.axis < start:
            return Layout(layout.axis, len(out_shape), layout.segs)
        if layout.axis == start:
            spread = math.prod(in_shape[start + 1 :])
            segs = tuple(Seg(s.space, s.expand * spread) for s in layout.segs)
            return Layout(start, len(out_shape), segs)
        return self.unknown(node)

    def cat(self, node: fx.Node, out_shape) -> Layout | None:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ndim = len(out_shape)
        dim = dim % ndim
        lays = [self.layout_of(t) for t in tensors]
        axes = {lay.axis for lay in lays if lay is not None}
        if not axes:
            return None
        if axes != {dim}:  # joined along another axis: the parts share channels
            result = None
            for lay in lays:
                if lay is None:
                    return self.unknown(node)
                if result is not None and not self.tie(result, lay, _op_name(node)):
                    return None
                result = result or lay
            return result
        segs: list[Seg] = []
        for t, lay in zip(tensors, lays):
            if lay is None:  # an opaque part keeps its channels
                segs.append(Seg(self.new_space(_shape(t)[dim], f"{_op_name(node)} input")))
            else:
                segs.extend(lay.segs)
        return Layout(dim, ndim, tuple(segs))

    def permute(self, node: fx.Node, layout: Layout | None, out_shape) -> Layout | None:
        """Channels-last blocks (ConvNeXt) move the channel axis and back."""
        if layout is None:
            return None
        dims = node.args[1:] if len(node.args) > 2 else node.args[1:2] or node.kwargs.get("dims")
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = dims[0]
        if any(not isinstance(d, int) for d in dims) or len(dims) != layout.ndim:
            return self.unknown(node)
        dims = [d % layout.ndim for d in dims]
        return Layout(dims.index(layout.axis), layout.ndim, layout.segs)

    def reduce(self, node: fx.Node, layout: Layout | None, out_shape) -> Layout | None:
        if layout is None:
            return None
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            return self.unknown(node)
        dims = {d % layout.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
        if layout.axis in dims:
            return self.unknown(node)
        if len(out_shape) == layout.ndim:  # keepdim
            return layout
        axis = layout.axis - sum(d < layout.axis for d in dims)
        return Layout(axis, len(out_shape), layout.segs)

    def visit_module(self, node: fx.Node, mod: nn.Module, out_shape) -> Layout | None:
        name = self.prefix + node.target
        if name in self.outside:  # its weights must keep serving the untraced caller
            for arg in self.tensor_inputs(node):
                self.block(self.layout_of(arg), f"module {name} (also called outside its part)")
            return None
        inp = self.layout_of(node.args[0]) if node.args else None
        in_shape = _shape(node.args[0]) if node.args else None
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self.conv(name, mod, inp, in_shape, out_shape)
        if isinstance(mod, nn.Linear):
            if inp is not None:
                if inp.axis == inp.ndim - 1:
                    self.add_slot(name, "linear_in", inp.segs)
                else:
                    self.block(inp, f"module {name} (linear over a non-channel axis)")
            return self.produce(name, "linear_out", mod.out_features, len(out_shape) - 1, out_shape)
        if is_norm_leaf(mod) and not isinstance(mod, nn.LayerNorm):
            if inp is None:
                return None
            if inp.axis != 1:
                return self.unknown(node)
            self.add_slot(name, "bn", inp.segs)
            return inp
        if isinstance(mod, nn.LayerNorm):
            if inp is None:
                return None
            # timm's LayerNorm2d normalises the channels of NCHW tensors
            axis = 1 if type(mod).__name__ == "LayerNorm2d" else inp.ndim - 1
            if len(mod.normalized_shape) != 1 or inp.axis != axis:
                return self.unknown(node)
            if mod.weight is not None:
                self.add_slot(name, "ln", inp.segs)
            return inp
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, inp, out_shape)
        if isinstance(mod, PASS_MODULES):
            return self.passthrough(node, inp, out_shape)
        if not self.tensor_inputs(node):
            return None
        return self.unknown(node)

    def conv(self, name: str, mod, inp: Layout | None, in_shape, out_shape) -> Layout | None:
        if inp is not None and inp.axis != 1:
            self.block(inp, f"module {name} (conv over a non-channel axis)")
            inp = None
        if mod.groups == 1:
            if inp is not None:
                self.add_slot(name, "conv_in", inp.segs)
            return self.produce(name, "conv_out", mod.out_channels, 1, out_shape)
        if mod.groups == mod.in_channels == mod.out_channels:  # depthwise: channels pass
            if inp is None:
                return None
            self.add_slot(name, "dw", inp.segs)
            return Layout(1, len(out_shape), inp.segs)
        # A grouped conv: block i of the inputs feeds only block i of the outputs. Keeping the
        # same positions in every block of each side (as Torch-Pruning does) leaves a dense
        # grouped conv with the same groups, in and out channels pruned independently.
        if inp is not None:
            if len(inp.segs) == 1 and inp.segs[0].expand == 1:
                self.add_slot(name, "gconv_in", inp.segs)
                self.set_period(inp.segs[0].space, mod.groups)
            else:
                reason = f"module {name} (grouped conv over concatenated channels)"
                self.block(inp, reason, warn=False)
        out = self.produce(name, "conv_out", mod.out_channels, 1, out_shape)
        self.set_period(out.segs[0].space, mod.groups)
        return out

    def produce(self, name: str, kind: str, size: int, axis: int, out_shape) -> Layout:
        old = self.slots.get((name, kind))
        space = old.segs[0].space if old else self.new_space(size)
        self.slots[(name, kind)] = Slot(name, kind, (Seg(space),))
        return Layout(axis, len(out_shape), (Seg(space),))

    # -- result ------------------------------------------------------------------------------
    def graph(self, input_shape: tuple[int, ...]) -> Graph:
        slots = [
            Slot(s.module, s.kind, tuple(Seg(self.find(g.space), g.expand) for g in s.segs))
            for s in self.slots.values()
        ]
        members: dict[int, list[Slot]] = {}
        for slot in slots:
            for seg in slot.segs:
                members.setdefault(seg.space, []).append(slot)
        groups, used = [], set()
        for root, its in members.items():
            producers = [s for s in its if s.kind in PRODUCER_KINDS and s.kind != "dw"]
            if not producers:
                continue  # channels that come from the input or an opaque op
            name = producers[0].module
            while name in used:
                name += "'"
            used.add(name)
            spaces = tuple(i for i in range(len(self.parent)) if self.find(i) == root)
            reason = self.blocked.get(root, "")
            period = self.period.get(root, 1)
            if not reason and period == self.sizes[root]:
                reason = "grouped convs leave one channel per group"
            groups.append(
                Group(name, self.sizes[root], spaces, tuple(its), not reason, reason, period)
            )
        return Graph(groups, list(self.sizes), slots, input_shape, list(self.warnings))


def _flat_nodes(obj) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(obj, out.append)
    return out


def _merged_start(in_shape, out_shape) -> int | None:
    """The first of the trailing input dims that ``out_shape`` merges into one, if any."""
    if in_shape is None or not out_shape or len(out_shape) > len(in_shape):
        return None
    start = len(out_shape) - 1
    if tuple(in_shape[:start]) != tuple(out_shape[:start]):
        return None
    if math.prod(in_shape[start:]) != out_shape[start]:
        return None
    return start


def analyze(model: nn.Module, example_input: torch.Tensor, parts: list[str] | None = None) -> Graph:
    """Trace ``model`` and find the groups of channels that must be pruned together.

    Ops the analysis cannot reason about leave the channels that reach them unpruned and
    emit one warning each; the model's output channels are never prunable. A model that
    torch.fx cannot trace whole (detectors) is analysed by parts: the submodules named in
    ``parts`` or, by default, the largest ones that trace (see ``graph.parts``); channels
    between parts and everything outside them are left as they are.
    """
    if parts is not None:
        return _warned(analyze_parts(_Analyzer(), model, example_input, parts))
    try:
        gm = trace(model, example_input)
    except TraceError as exc:
        error = exc
    else:
        analyzer = _Analyzer(gm)
        analyzer.run()
        return _warned(analyzer.graph(tuple(example_input.shape[1:])))
    try:
        graph = analyze_parts(_Analyzer(), model, example_input, None, str(error))
    except TraceError:
        graph = None
    if graph is None or not graph.parts:  # nothing traceable: the whole model's reason
        raise error
    return _warned(graph)


def _warned(graph: Graph) -> Graph:
    for message in graph.warnings:
        warnings.warn(message, stacklevel=3)
    return graph
