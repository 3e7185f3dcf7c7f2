"""The channel-dependency graph: which channels must be removed together."""

from .capture import analyze
from .types import Graph, Group, Seg, Slot

__all__ = ["Graph", "Group", "Seg", "Slot", "analyze"]
