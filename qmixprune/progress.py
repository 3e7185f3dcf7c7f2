"""Progress of long work: a live bar with an ETA in a terminal, plain lines elsewhere.

Output redirected to a log file, CI or nohup shows no live bar (rich renders it only at
the end there), so off a terminal one line is printed per block of steps, with the
elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

Update = Callable[..., None]


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def eta(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the average pace so far (None before the first step)."""
    if done <= 0 or total <= done:
        return None if done <= 0 else 0.0
    return elapsed / done * (total - done)


@contextlib.contextmanager
def progress(
    total: int,
    label: str,
    quiet: bool = False,
    every: int = 1,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Update]:
    """Yields ``update(advance=1, text="")``. Nothing under ``quiet``; a rich bar with an
    ETA when ``stream`` is a terminal; else a line every ``every`` steps and at the end."""
    stream = sys.stdout if stream is None else stream
    if quiet:
        yield lambda advance=1, text="": None
        return
    if _is_terminal(stream):
        with _rich_bar(total, label, stream) as update:
            yield update
        return
    start, state = clock(), {"done": 0, "text": "", "printed": 0}

    def line() -> None:
        done, elapsed = state["done"], clock() - start
        left = eta(done, total, elapsed)
        tail = f"  eta {_clock(left)}" if left else ""
        text = f"  {state['text']}" if state["text"] else ""
        print(f"{label} {done}/{total}{text}  elapsed {_clock(elapsed)}{tail}", file=stream)
        stream.flush()
        state["printed"] = done

    def update(advance: int = 1, text: str = "") -> None:
        state["done"] += advance
        state["text"] = text or state["text"]
        if state["done"] - state["printed"] >= max(1, every) or state["done"] >= total:
            line()

    yield update
    if state["done"] != state["printed"]:  # stopped early (patience, budget) mid-block
        line()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _rich_bar(total: int, label: str, stream: TextIO) -> Iterator[Update]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*cols, console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(label, total=total, info="")
        yield lambda advance=1, text="": bar.update(task, advance=advance, info=text)
