"""Data of the dependency graph: channel spaces, slots (where modules consume or make
channels) and groups (spaces tied together, pruned as one)."""

from __future__ import annotations

from dataclasses import dataclass, field

# What a slot does to its module's tensors when the channels of its segments shrink.
SLOT_TEXT = {
    "conv_out": "out-channels of conv",
    "conv_in": "in-channels of conv",
    "dw": "channels of depthwise conv",
    "gconv_in": "in-channels of grouped conv",
    "convT_in": "in-channels of transposed conv",
    "convT_out": "out-channels of transposed conv",
    "linear_out": "out-features of linear",
    "linear_in": "in-features of linear",
    "bn": "batchnorm",
    "ln": "layernorm",
    "scale": "per-channel parameter",
}
PRODUCER_KINDS = ("conv_out", "linear_out", "dw", "convT_out")


@dataclass(frozen=True)
class Seg:
    """A run of channels inside a tensor's channel axis: all of channel space ``space``,
    each channel spread over ``expand`` consecutive features (after a flatten)."""

    space: int
    expand: int = 1


@dataclass(frozen=True)
class Slot:
    """One tensor dimension of one module that follows the channels of ``segs``."""

    module: str
    kind: str
    segs: tuple[Seg, ...]
    # each segment's width along the dimension (channels x expand); empty: not yet known
    widths: tuple[int, ...] = ()

    def ranges(self, spaces) -> list[tuple[int, int]]:
        """Where the segments of ``spaces`` lie along the slot's dimension (start, stop)."""
        out, start = [], 0
        for seg, width in zip(self.segs, self.widths):
            if seg.space in spaces:
                out.append((start, start + width))
            start += width
        return out

    @property
    def owner(self) -> str:
        """The module whose tensors the slot cuts (a "scale" slot names a parameter)."""
        return self.module.rpartition(".")[0] if self.kind == "scale" else self.module

    def __str__(self) -> str:
        return f"{SLOT_TEXT[self.kind]} {self.module}"


@dataclass(frozen=True)
class Group:
    """Channel spaces that must keep the same channels (conv -> BN -> add -> ...)."""

    name: str
    channels: int
    spaces: tuple[int, ...]
    slots: tuple[Slot, ...]
    prunable: bool
    reason: str = ""
    # Grouped convs split the channels into ``period`` equal blocks that must keep the same
    # positions (so the conv keeps its groups): counts are multiples of ``period``.
    period: int = 1

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.owner for s in self.slots))

    def describe(self) -> str:
        """One sentence: what pruning this group touches, e.g. 'conv a => bn b => conv c'."""
        head = f"{self.name} [{self.channels} ch]"
        if not self.prunable:
            head += f" (not prunable: {self.reason})"
        elif self.period > 1:
            head += f" (grouped: the same channels of each of {self.period} blocks)"
        return head + ": " + " => ".join(str(s) for s in self.slots)


@dataclass(frozen=True)
class Sizes:
    """A module attribute holding the sizes a split of the channel axis cuts at (MixNet's
    ``self.splits``, C2PSA's ``self.c``): pruning writes the pieces' kept counts into it.
    ``pieces``: each piece's segments; ``whole``: the attribute is one int (pieces tied)."""

    module: str
    attr: str
    pieces: tuple[tuple[Seg, ...], ...]
    whole: bool = False


@dataclass
class Graph:
    """The result of :func:`qmixprune.analyze`."""

    groups: list[Group]
    space_sizes: list[int]
    slots: list[Slot]
    input_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)
    # the submodules analysed when the model could not be traced whole (empty: it was)
    parts: list[str] = field(default_factory=list)
    # how the model was captured: "fx", "export" (torch.export, non-strict) or "parts"
    capture: str = "fx"
    # module attributes that hold split sizes, rewritten by pruning
    sizes: list[Sizes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {g.name: g for g in self.groups}
        self.space_group = {s: g.name for g in self.groups for s in g.spaces}

    def group(self, name: str) -> Group:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"no group {name!r}; groups are {[g.name for g in self.groups]}"
            ) from None

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def describe(self) -> str:
        return "\n".join(g.describe() for g in self.groups)
