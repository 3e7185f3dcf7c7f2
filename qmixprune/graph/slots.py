"""Where modules consume or make channels: the slot rules of the propagation (conv,
linear, norms), and per-channel parameters applied element-wise."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from .fx_capture import is_norm_leaf
from .layouts import Layout, channel_width
from .ops import PASS_MODULES
from .types import Seg, Slot


class SlotRules:
    """The module half of :class:`propagate.Propagator` (which supplies the spaces, the
    layouts and the blocking)."""

    def add_slot(self, module: str, kind: str, segs: tuple[Seg, ...]) -> None:
        key = (module, kind)
        old = self.slots.get(key)
        if old is None:
            self.slots[key] = Slot(module, kind, segs)
            return
        # A module called twice must see the same channels both times.
        a, b = (Layout(0, 1, s) for s in (old.segs, segs))
        self.tie(a, b, f"module {module} (called twice with different channels)")

    def visit_module(self, node: fx.Node, mod: nn.Module, out_shape) -> Layout | None:
        name = self.prefix + node.target
        if name in self.outside:  # its weights must keep serving the untraced caller
            for arg in self.tensor_inputs(node):
                self.block(self.layout_of(arg), f"module {name} (also called outside its part)")
            return None
        inp = self.layout_of(node.args[0]) if node.args else None
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self.conv(name, mod, inp, out_shape)
        if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)) and mod.groups == 1:
            # an upsampling conv (segmentation heads): its weight is [in, out, k...]
            if inp is not None:
                if inp.axis == 1:
                    self.add_slot(name, "convT_in", inp.segs)
                else:
                    self.block(inp, f"module {name} (conv over a non-channel axis)")
            return self.produce(name, "convT_out", mod.out_channels, 1, out_shape)
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
            # timm's LayerNorm2d normalises the channels of NCHW tensors (a captured ATen
            # layer_norm sees them channels-last, after its permute)
            nchw = type(mod).__name__ == "LayerNorm2d" and not node.meta.get("aten")
            axis = 1 if nchw else inp.ndim - 1
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

    def conv(self, name: str, mod, inp: Layout | None, out_shape) -> Layout | None:
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
                self.spaces.set_period(inp.segs[0].space, mod.groups)
            else:
                reason = f"module {name} (grouped conv over concatenated channels)"
                self.block(inp, reason, warn=False)
        out = self.produce(name, "conv_out", mod.out_channels, 1, out_shape)
        self.spaces.set_period(out.segs[0].space, mod.groups)
        return out

    def produce(self, name: str, kind: str, size: int, axis: int, out_shape) -> Layout:
        old = self.slots.get((name, kind))
        space = old.segs[0].space if old else self.spaces.new(size)
        self.slots[(name, kind)] = Slot(name, kind, (Seg(space),))
        return Layout(axis, len(out_shape), (Seg(space),))

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
        if name is None or sum(n.target == name for n in self.nodes) != 1:
            return False
        try:
            param = self.root.get_parameter(name)
        except AttributeError:
            return False  # a buffer or a plain tensor attribute
        channels = channel_width(self.spaces.sizes, layout)
        if param.numel() != width or width != channels or param.shape[0] != width:
            return False
        self.add_slot(self.prefix + name, "scale", layout.segs)
        return True
