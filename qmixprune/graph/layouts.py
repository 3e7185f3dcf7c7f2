"""Layouts (which axis of a tensor carries channels, and from which spaces) and the
facts about captured nodes that the propagation reads: shapes and names."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from .types import Seg


@dataclass(frozen=True)
class Layout:
    """The channel structure of a tensor: which axis carries channels and from where."""

    axis: int
    ndim: int
    segs: tuple[Seg, ...]


def tensor_meta(node):
    """The recorded tensor of ``node`` (fx's shape metadata or torch.export's fake value);
    None for non-tensors and tuples."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is None and isinstance(node.meta.get("val"), torch.Tensor):
        meta = node.meta["val"]
    return meta if hasattr(meta, "shape") else None


def shape(node) -> tuple[int, ...] | None:
    """The output shape of ``node``, if it makes one tensor."""
    meta = tensor_meta(node)
    return tuple(int(d) for d in meta.shape) if meta is not None else None


def op_name(node: fx.Node) -> str:
    """How warnings and reasons name an op."""
    if node.op == "call_module":
        return f"module {node.target}"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target} (node {node.name})"


def flat_nodes(obj) -> list[fx.Node]:
    """Every node in a nest of arguments."""
    out: list[fx.Node] = []
    fx.node.map_arg(obj, out.append)
    return out


def merged_start(in_shape, out_shape) -> int | None:
    """The first of the trailing input dims that ``out_shape`` merges into one, if any."""
    if in_shape is None or not out_shape or len(out_shape) > len(in_shape):
        return None
    start = len(out_shape) - 1
    if tuple(in_shape[:start]) != tuple(out_shape[:start]):
        return None
    if math.prod(in_shape[start:]) != out_shape[start]:
        return None
    return start


def channel_width(sizes: list[int], layout: Layout) -> int:
    """How many entries the channel axis of a tensor with ``layout`` has."""
    return sum(sizes[s.space] * s.expand for s in layout.segs)
