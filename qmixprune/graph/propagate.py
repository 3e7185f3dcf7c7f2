"""Propagate channel layouts through a captured graph and tie channel spaces together.

Every Conv/Linear output starts a new channel space. Ops that keep the channel axis pass
the layout on; binary element-wise ops tie their operands' spaces; concatenation along
the channel axis chains layouts; a chunk of the channel axis cuts it into pieces the
pruned model cuts alike; flatten spreads each channel over its spatial positions. An op
we cannot reason about blocks the spaces that reach it (with a warning naming it), so
everything else can still be pruned.
"""

from __future__ import annotations

import operator

import torch.fx as fx
import torch.nn as nn

from .groups import build_graph
from .layouts import Layout, channel_width, flat_nodes, merged_start, op_name, shape, tensor_meta
from .ops import (
    ATEN_VIEWS,
    BINARY_FUNCTIONS,
    BINARY_METHODS,
    CAT,
    CHUNK,
    FLATTEN,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PERMUTE,
    REDUCE,
    SHAPE_ONLY_METHODS,
    SLICE,
    SLICE_WHOLE,
    SPLIT,
)
from .slots import SlotRules
from .spaces import Spaces
from .types import Graph, Seg, Sizes, Slot

# what a node's layout can be: none, one, or one per piece of a tuple (a chunk's)
Value = Layout | tuple | None


class Propagator(SlotRules):
    """Walks captured graphs (one whole model, or several parts of one) node by node."""

    def __init__(self) -> None:
        self.spaces = Spaces()
        self.slots: dict[tuple[str, str], Slot] = {}
        self.layouts: dict[fx.Node, Value] = {}
        self.warnings: list[str] = []
        self.sizes: list[Sizes] = []

    def use(self, graph: fx.Graph, root: nn.Module, prefix: str = "", outside=()) -> None:
        """Analyse ``graph`` next, whose modules and attributes are those of ``root``: the
        whole model, or a captured part named ``prefix`` (then ``outside``: full names of
        modules that code outside the part calls too)."""
        self.nodes, self.root = graph.nodes, root
        self.modules = dict(root.named_modules())
        self.prefix, self.outside = prefix, set(outside)

    # -- blocking and tying ------------------------------------------------------------
    def block(self, layout: Value, reason: str, warn: bool = True) -> None:
        if isinstance(layout, tuple):
            for piece in layout:
                self.block(piece, reason, warn)
            return
        if layout is None:
            return
        for seg in layout.segs:
            root = self.spaces.find(seg.space)
            if root not in self.spaces.blocked:
                self.spaces.blocked[root] = reason
                if warn:
                    self.warnings.append(f"channels reaching {reason} are left unpruned")

    def tie(self, a: Layout, b: Layout, reason: str) -> bool:
        """Tie two layouts channel by channel; block both if their structures differ."""
        sizes = self.spaces.sizes
        same = (
            a.ndim - a.axis == b.ndim - b.axis
            and len(a.segs) == len(b.segs)
            and all(x.expand == y.expand for x, y in zip(a.segs, b.segs))
            and all(sizes[x.space] == sizes[y.space] for x, y in zip(a.segs, b.segs))
        )
        if same and all(self.spaces.union(x.space, y.space) for x, y in zip(a.segs, b.segs)):
            return True
        if not same and self.tie_cut(a, b):
            return True
        self.block(a, reason)
        self.block(b, reason)
        return False

    def tie_cut(self, a: Layout, b: Layout) -> bool:
        """Tie two layouts of the same width made of different runs (GhostNet adds a concat
        of two convs to one conv's output) by cutting both where either has a boundary."""
        sizes = self.spaces.sizes
        if a.ndim - a.axis != b.ndim - b.axis or any(s.expand != 1 for s in a.segs + b.segs):
            return False
        ends = set()
        for lay in (a, b):
            total = 0
            for seg in lay.segs:
                total += sizes[seg.space]
                ends.add(total)
        if channel_width(sizes, a) != channel_width(sizes, b):
            return False
        bounds = sorted(ends)
        widths = [e - s for s, e in zip([0, *bounds[:-1]], bounds)]
        pa, pb = self.cut(a, widths), self.cut(b, widths)
        if pa is None or pb is None:
            return False
        return all(self.spaces.union(x[0].space, y[0].space) for x, y in zip(pa, pb))

    # -- propagation ---------------------------------------------------------------------
    def run(self) -> None:
        for node in self.nodes:
            if node.op in ("placeholder", "get_attr"):
                self.layouts[node] = None
            elif node.op == "output":
                for arg in flat_nodes(node.args):
                    self.block(self.layouts.get(arg), "the model's output", warn=False)
            else:
                if node.target is not operator.getitem:  # a tuple used whole is opaque
                    for arg in flat_nodes((node.args, node.kwargs)):
                        if isinstance(self.layouts.get(arg), tuple):
                            self.block(self.layouts[arg], op_name(node))
                self.layouts[node] = self.visit(node)

    def layout_of(self, arg) -> Layout | None:
        value = self.layouts.get(arg) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, Layout) else None

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in flat_nodes((node.args, node.kwargs)) if tensor_meta(a) is not None]

    def unknown(self, node: fx.Node) -> None:
        for arg in self.tensor_inputs(node):
            self.block(self.layout_of(arg), op_name(node))
        return None

    def visit(self, node: fx.Node) -> Value:
        out_shape = shape(node)
        target = node.target
        method = node.op == "call_method"
        first = self.layout_of(node.args[0]) if node.args else None
        if target in CHUNK or target in SPLIT:
            return self.split(node, first)
        if target is operator.getitem:
            return self.getitem(node, out_shape)
        if out_shape is None:  # shape queries need nothing; other tuples are opaque
            if target in SHAPE_ONLY_METHODS or target is getattr:
                return None
            return self.unknown(node)
        inputs = self.tensor_inputs(node)
        if not inputs and node.op != "call_module":
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[target], out_shape)
        if target in PASS_FUNCTIONS or (method and target in PASS_METHODS):
            return self.passthrough(node, first, out_shape)
        if target in BINARY_FUNCTIONS or (method and target in BINARY_METHODS):
            return self.binary(node, out_shape)
        if target in FLATTEN:
            return self.flatten(node, first, out_shape)
        if target in CAT:
            return self.cat(node, out_shape)
        if target in PERMUTE:
            return self.permute(node, first, out_shape)
        if target in REDUCE:
            return self.reduce(node, first, out_shape)
        if target in SLICE:
            return self.slice(node, first, out_shape)
        if getattr(target, "__name__", "") == "stochastic_depth":
            return self.passthrough(node, first, out_shape)
        return self.unknown(node)

    def passthrough(self, node, layout: Layout | None, out_shape) -> Layout | None:
        if layout is None:
            return None
        in_shape = shape(node.args[0])
        if len(out_shape) == layout.ndim and out_shape[layout.axis] == in_shape[layout.axis]:
            return layout
        return self.unknown(node)

    def binary(self, node: fx.Node, out_shape) -> Layout | None:
        ndim = len(out_shape)
        result: Layout | None = None
        for arg in node.args[:2]:
            lay = self.layout_of(arg)
            if shape(arg) is None or lay is None:
                continue  # a Python scalar, or a tensor without channels
            lay = Layout(lay.axis + ndim - lay.ndim, ndim, lay.segs)
            if result is None:
                result = lay
            elif not self.tie(result, lay, op_name(node)):
                return None
        if result is None:
            return None
        # An operand without a layout that spans the channel axis (a constant, a buffer)
        # cannot shrink with the channels.
        for arg in node.args[:2]:
            arg_shape = shape(arg)
            if arg_shape is None or self.layout_of(arg) is not None:
                continue
            pos = result.axis - (ndim - len(arg_shape))
            if 0 <= pos < len(arg_shape) and arg_shape[pos] != 1:
                if self.scale(arg, result, arg_shape[pos]):
                    continue
                self.block(result, f"{op_name(node)} with a constant operand")
                return None
        return result

    def flatten(self, node: fx.Node, layout: Layout | None, out_shape) -> Layout | None:
        if layout is None:
            return None
        in_shape = shape(node.args[0])
        start = merged_start(in_shape, out_shape)
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
        if layout.axis == start and node.target not in ATEN_VIEWS:
            spread = 1
            for d in in_shape[start + 1 :]:
                spread *= d
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
                if result is not None and not self.tie(result, lay, op_name(node)):
                    return None
                result = result or lay
            return result
        segs: list[Seg] = []
        for t, lay in zip(tensors, lays):
            if lay is None:  # an opaque part keeps its channels
                segs.append(Seg(self.spaces.new(shape(t)[dim], f"{op_name(node)} input")))
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

    # -- pieces of a tensor ------------------------------------------------------------
    def split(self, node: fx.Node, layout: Layout | None) -> Value:
        """chunk/split: along another axis every piece keeps the channels; a chunk of the
        channel axis cuts its spaces into equal pieces tied to each other (so the pruned
        model's chunk, which halves whatever it gets, cuts where the pieces end); a split
        of the channel axis carries literal sizes and blocks."""
        pieces = _piece_shapes(node)
        if layout is None or pieces is None:
            return self.unknown(node) if pieces is None else None
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        dim %= layout.ndim
        if dim != layout.axis:
            ok = all(len(p) == layout.ndim for p in pieces)
            return tuple(layout for _ in pieces) if ok else self.unknown(node)
        widths = [p[dim] for p in pieces]
        holder = None
        if node.target in SPLIT or len(set(widths)) != 1:
            # a chunk of unequal pieces is cut by its count, which no size rewrite follows
            holder = self.size_holder(node, widths) if node.target in SPLIT else None
            if holder is None:
                self.block(layout, f"{op_name(node)} (splits the channels at literal sizes)")
                return None
        cut = self.cut(layout, widths)
        if cut is None:
            self.block(layout, f"{op_name(node)} (cuts inside flattened channels)")
            return None
        lays = tuple(Layout(layout.axis, layout.ndim, segs) for segs in cut)
        if holder is not None:
            self.sizes.append(Sizes(holder[0], holder[1], tuple(cut), holder[2]))
            if not holder[2]:  # a list of sizes: every piece prunes on its own
                return lays
        for lay in lays[1:]:
            if not self.tie(lays[0], lay, f"{op_name(node)} (pieces made differently)"):
                return None
        return lays

    def size_holder(self, node: fx.Node, widths: list[int]) -> tuple[str, str, bool] | None:
        """The attribute of the module running ``node`` that holds the split's sizes: the
        one list equal to ``widths``; (module, attribute, False) or None.

        An int attribute equal to equal pieces' width (C2PSA's ``self.c``) is not taken:
        the same module may read the width elsewhere from a shape (YOLO11's attention views
        its values as ``x.shape``'s channels), a dependency torch.export's literal shapes
        hide, and rewriting the int broke the pruned model there."""
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        try:
            owner = self.root.get_submodule(path)
        except AttributeError:
            return None
        lists = [
            attr
            for attr, value in vars(owner).items()
            if not attr.startswith("_")
            and isinstance(value, (list, tuple))
            and list(value) == widths
        ]
        prefix = ".".join(p for p in (self.prefix.rstrip("."), path) if p)
        return (prefix, lists[0], False) if len(lists) == 1 else None

    def cut(self, layout: Layout, widths: list[int]) -> list[tuple[Seg, ...]] | None:
        """The segments of each consecutive piece of ``widths`` channels, cutting spaces
        where a piece ends inside one; None where that would cut a flattened channel."""
        queue, out = list(layout.segs), []
        if sum(widths) != channel_width(self.spaces.sizes, layout):
            return None
        for width in widths:
            piece: list[Seg] = []
            while width > 0:
                seg = queue.pop(0)
                n = self.spaces.sizes[seg.space] * seg.expand
                if n <= width:
                    piece.append(seg)
                    width -= n
                    continue
                if width % seg.expand:
                    return None
                parts = self.spaces.cut(seg.space, [width // seg.expand, (n - width) // seg.expand])
                if parts is None:
                    return None
                piece.append(Seg(parts[0], seg.expand))
                queue.insert(0, Seg(parts[1], seg.expand))
                width = 0
            out.append(tuple(piece))
        return out

    def getitem(self, node: fx.Node, out_shape) -> Value:
        """One piece of a chunk, or an index into a tensor that keeps its channel axis."""
        src, index = node.args[0], node.args[1]
        value = self.layouts.get(src) if isinstance(src, fx.Node) else None
        if isinstance(value, tuple):
            return value[index] if isinstance(index, int) else self.unknown(node)
        if value is None or out_shape is None:
            return None if out_shape is not None or value is None else self.unknown(node)
        index = index if isinstance(index, tuple) else (index,)
        if any(not isinstance(i, (int, slice)) for i in index):
            return self.unknown(node)
        width = shape(src)[value.axis]
        if len(index) > value.axis and not _whole(index[value.axis], width):
            return self.unknown(node)
        axis = value.axis - sum(isinstance(i, int) for i in index[: value.axis])
        ndim = value.ndim - sum(isinstance(i, int) for i in index)
        if len(out_shape) != ndim:
            return self.unknown(node)
        return Layout(axis, ndim, value.segs)

    def slice(self, node: fx.Node, layout: Layout | None, out_shape) -> Layout | None:
        """narrow/slice/select along an axis other than the channels'."""
        if layout is None:
            return None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim %= layout.ndim
        if dim == layout.axis:
            bounds = list(node.args[2:]) + [None] * 3
            if node.target not in SLICE_WHOLE or not _whole(
                slice(*bounds[:3]), shape(node.args[0])[dim]
            ):
                return self.unknown(node)
        if len(out_shape) == layout.ndim:
            return Layout(layout.axis, layout.ndim, layout.segs)
        return Layout(layout.axis - (dim < layout.axis), len(out_shape), layout.segs)

    # -- result ------------------------------------------------------------------------------
    def graph(self, input_shape: tuple[int, ...]) -> Graph:
        slots = list(self.slots.values())
        return build_graph(self.spaces, slots, input_shape, self.warnings, self.sizes)


def _whole(index, width: int) -> bool:
    """Whether an index keeps every entry of an axis of ``width`` entries, and would keep
    them all at any smaller width (GhostNet's ``out[:, : self.oup]``: a slice from 0 to a
    literal bound clamps to a pruned axis)."""
    if not isinstance(index, slice) or index.start not in (None, 0) or index.step not in (None, 1):
        return False
    return index.stop is None or (isinstance(index.stop, int) and index.stop >= width)


def _piece_shapes(node: fx.Node) -> list[tuple[int, ...]] | None:
    """The shapes of a tuple-valued node's tensors (fx's metadata or export's values)."""
    meta = node.meta.get("tensor_meta", node.meta.get("val"))
    if not isinstance(meta, (list, tuple)) or not all(hasattr(m, "shape") for m in meta):
        return None
    return [tuple(int(d) for d in m.shape) for m in meta]
