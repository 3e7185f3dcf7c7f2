"""Writing files so that a reader never sees half of one: the one home of atomic writes.

Every file qmixprune writes goes through a temporary file in the destination's folder
(named ``.NAME.<random>``, which ``run.outdir`` recognises and clears after a killed run)
and a rename, with the mode the user's umask gives rather than ``mkstemp``'s 0600. Imports
neither torch nor numpy: ``qmixprune bench`` uses it on edge devices.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


def file_mode() -> int:
    """The mode a new file gets from the process's umask (0644 under the usual 022)."""
    try:  # Linux: read it without changing it (changing it races with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temp_prefix(name: str) -> str:
    """The prefix of the temporary files written on the way to a file called ``name``."""
    return f".{name}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (onnx.save, a
    tool run in a subprocess); renamed onto ``path`` when the block ends without an
    exception, removed otherwise. ``suffix`` keeps tools that read the extension happy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    with atomic_path(path, ".tmp") as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def check_writable_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, with one line, an output file path that cannot be written (a folder, a missing
    or read-only parent) before any work is done; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name")
    existing = nearest_existing(path.parent)
    if not existing.is_dir():
        raise UserError(f"cannot write {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        raise UserError(f"cannot write {path}: permission denied (choose another location)")
    return path


def real(p: str | os.PathLike) -> Path:
    """``p`` with ``~`` expanded and links resolved (to compare two paths)."""
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def nearest_existing(p: str | os.PathLike) -> Path:
    """``p`` itself, or its nearest parent that exists."""
    p = real(p)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p
