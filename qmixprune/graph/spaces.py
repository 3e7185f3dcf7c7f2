"""Channel spaces: runs of channels that are pruned as one, kept in a union-find.

Two spaces tied together keep the same channels. A space can also be cut into pieces (a
chunk of a conv's output feeds other modules than the rest): its slots then stand for the
concatenation of the pieces, each of which is a space of its own.
"""

from __future__ import annotations

import math


class Spaces:
    """The channel spaces of one analysis, with what blocks them and their periods."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.parent: list[int] = []
        self.blocked: dict[int, str] = {}  # root -> why its channels stay
        self.period: dict[int, int] = {}  # root -> blocks that keep equal positions
        self.pieces: dict[int, tuple[int, ...]] = {}  # root -> the spaces it was cut into

    def new(self, size: int, blocked: str = "") -> int:
        """A fresh space of ``size`` channels (``blocked``: why it may not be pruned)."""
        self.sizes.append(size)
        self.parent.append(len(self.parent))
        if blocked:
            self.blocked[len(self.sizes) - 1] = blocked
        return len(self.sizes) - 1

    def find(self, s: int) -> int:
        """The root standing for every space tied to ``s``."""
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> bool:
        """Tie ``a`` and ``b`` channel by channel; False (nothing tied) if their sizes or
        their cuts into pieces differ."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.sizes[ra] != self.sizes[rb]:
            return False
        pa, pb = self.pieces.get(ra), self.pieces.get(rb)
        if pa and pb and [self.sizes[p] for p in pa] != [self.sizes[p] for p in pb]:
            return False
        self.parent[rb] = ra
        reason = self.blocked.pop(rb, "") or self.blocked.get(ra, "")
        if reason:
            self.blocked[ra] = reason
        period = math.lcm(self.period.pop(rb, 1), self.period.get(ra, 1))
        if period > 1:
            self.period[ra] = period
        if pb is not None:
            del self.pieces[rb]
            if pa is None:
                self.pieces[ra] = pb
            else:  # both cut alike: the pieces are tied one by one
                for x, y in zip(pa, pb):
                    self.union(x, y)
        return True

    def cut(self, space: int, sizes: list[int]) -> tuple[int, ...] | None:
        """Cut ``space`` into consecutive pieces of ``sizes`` (the same pieces if it was
        cut so before); None if it was cut otherwise or prunes in grouped blocks."""
        root = self.find(space)
        old = self.pieces.get(root)
        if old is not None:
            return old if [self.sizes[p] for p in old] == list(sizes) else None
        if self.period.get(root, 1) > 1 or sum(sizes) != self.sizes[root]:
            return None
        self.pieces[root] = tuple(self.new(n) for n in sizes)
        return self.pieces[root]

    def leaves(self, space: int) -> list[int]:
        """The roots that ``space`` is made of once every cut is applied, in order."""
        root = self.find(space)
        if root not in self.pieces:
            return [root]
        return [leaf for p in self.pieces[root] for leaf in self.leaves(p)]

    def settle(self) -> None:
        """Hand every cut space's block and period on to its pieces (before grouping)."""
        for root in list(self.pieces):
            if self.find(root) != root:
                continue
            reason = self.blocked.get(root, "")
            if self.period.get(root, 1) > 1:
                reason = reason or "a grouped conv over channels that are also split"
            for leaf in self.leaves(root):
                if reason and leaf not in self.blocked:
                    self.blocked[leaf] = reason

    def set_period(self, space: int, groups: int) -> None:
        """The channels of ``space`` feed or leave a conv of ``groups`` groups."""
        root = self.find(space)
        self.period[root] = math.lcm(self.period.get(root, 1), groups)
