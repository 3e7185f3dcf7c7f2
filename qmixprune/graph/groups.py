"""Channel spaces and slots gathered into the groups of a :class:`Graph`."""

from __future__ import annotations

from .spaces import Spaces
from .types import PRODUCER_KINDS, Graph, Group, Seg, Sizes, Slot


def build_graph(
    spaces: Spaces,
    slots: list[Slot],
    input_shape: tuple[int, ...],
    warnings: list[str],
    sizes: list[Sizes] = (),
) -> Graph:
    """One group per set of tied spaces that some conv or linear makes; a slot over a cut
    space lists the pieces it was cut into."""
    spaces.settle()
    expanded = []
    for s in slots:
        segs = tuple(Seg(leaf, g.expand) for g in s.segs for leaf in spaces.leaves(g.space))
        widths = tuple(spaces.sizes[g.space] * g.expand for g in segs)
        expanded.append(Slot(s.module, s.kind, segs, widths))
    slots = expanded
    members: dict[int, list[Slot]] = {}
    for slot in slots:
        for seg in slot.segs:
            its = members.setdefault(seg.space, [])
            if slot not in its:  # a slot over tied pieces counts once
                its.append(slot)
    roots = {i: spaces.find(i) for i in range(len(spaces.parent))}
    groups, used = [], set()
    for root, its in members.items():
        producers = [s for s in its if s.kind in PRODUCER_KINDS and s.kind != "dw"]
        if not producers:
            continue  # channels that come from the input or an opaque op
        name = producers[0].module
        while name in used:
            name += "'"
        used.add(name)
        tied = tuple(i for i, r in roots.items() if r == root)
        reason = spaces.blocked.get(root, "")
        period = spaces.period.get(root, 1)
        size = spaces.sizes[root]
        if not reason and period == size:
            reason = "grouped convs leave one channel per group"
        groups.append(Group(name, size, tied, tuple(its), not reason, reason, period))
    leaves = [
        Sizes(
            s.module,
            s.attr,
            tuple(
                tuple(Seg(x, g.expand) for g in p for x in spaces.leaves(g.space)) for p in s.pieces
            ),
            s.whole,
        )
        for s in sizes
    ]
    graph = Graph(groups, list(spaces.sizes), slots, input_shape, list(warnings))
    graph.sizes = leaves
    return graph
