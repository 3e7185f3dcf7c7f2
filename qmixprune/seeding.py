"""Seeding: the one place that touches torch's global RNG, and only inside a fork of it.

Library code draws from ``torch.Generator`` objects passed in. Ops that take no generator
(weight initialisation, dropout) read the global RNG; ``seeded`` makes them repeatable for a
stage without reseeding the caller's RNG: the caller's state is restored when it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global RNG (CPU and visible GPUs) seeded by ``seed``; the
    caller's RNG state is back as it was afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
