"""Rounding channel counts to a multiple: the one rule every caller shares."""

from __future__ import annotations

# what a FLOPs-only target rounds kept widths to: tensor-core and SIMD kernels run
# widths that are multiples of 8 markedly faster than odd ones (issue 15)
DEFAULT_MULTIPLE = 8


def round_to_multiple(channels: float, multiple: int = 1) -> int:
    """``channels`` rounded to the nearest multiple of ``multiple`` (halves up), and never
    below one multiple: a kept count is never zero."""
    return max(multiple, int(channels / multiple + 0.5) * multiple)
