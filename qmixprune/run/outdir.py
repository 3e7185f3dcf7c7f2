"""The output folder a run owns: checked before anything is written, marked as ours,
locked while a run writes into it, and cleared on ``--overwrite`` of what qmixprune wrote
and nothing else.

``check`` reads only (every rank of a torchrun job can call it before the group forms);
``claim`` is the one place that creates, clears, marks and locks OUT. Imports neither
torch nor numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import UserError
from ..files import nearest_existing, real, temp_prefix, write_text
from .outputs import OUTPUTS

MARKER = ".qmixprune-out"  # written into every OUT a run creates: "qmixprune owns this"
LOCK = ".qmixprune.lock"  # pid and host of the run writing into OUT now

# Temporary names of our atomic writes (files.atomic_path): a run
# killed with -9 leaves them behind, and the next run into OUT removes them.
TEMP_PREFIXES = tuple(temp_prefix(name) for name in (*OUTPUTS, MARKER)) + (".write-test",)


def check(out: str | os.PathLike, overwrite: bool, resume: bool, inputs: Sequence = ()) -> Path:
    """Refuse, with one line, any OUT that a run may not write into; touches nothing.

    ``inputs`` are the paths the run reads (model, data, config, latency table): OUT may
    not be one of them or hold one when it is to be cleared."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: choose a folder for -o")
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other: pass one of them")
    here = real(out)
    for inp in inputs:
        if inp is not None and real(inp) == here:
            raise UserError(f"-o {out} is an input of this run: choose another output folder")
    if out.is_dir() and _entries(out) and not (overwrite or resume):
        raise UserError(f"{out} is not empty: pass --overwrite to replace it or --resume to go on")
    if out.is_dir() and overwrite:
        _check_clearable(out, here, inputs)
    if out.is_dir():
        holder = _holder(out / LOCK)
        if holder is not None:
            raise UserError(
                f"another qmixprune run (pid {holder}) is writing into {out}: wait for it to "
                "end or choose another -o"
            )
    if resume and not out.is_dir():
        raise UserError(f"nothing to resume: {out} does not exist (run without --resume)")
    _check_writable(out)
    return out


def _check_clearable(out: Path, here: Path, inputs: Sequence) -> None:
    cwd, home = real(Path.cwd()), real(Path.home())
    if here in {cwd, home, *cwd.parents, *home.parents}:
        raise UserError(
            f"refusing --overwrite of {out} (the working directory, home or a folder above "
            "them): choose a dedicated output folder"
        )
    for inp in inputs:
        if inp is not None and here in real(inp).parents:
            raise UserError(
                f"refusing --overwrite of {out}: it holds an input of this run ({inp}); "
                "choose another output folder"
            )
    if _entries(out) and not (out / MARKER).is_file():
        raise UserError(
            f"refusing --overwrite of {out}: qmixprune did not create it (no {MARKER}); "
            "choose another -o or empty it yourself"
        )


@contextlib.contextmanager
def claim(out: str | os.PathLike, overwrite: bool, resume: bool) -> Iterator[Path]:
    """Create (or clear, with ``overwrite``) OUT, mark it as ours and hold its lock for the
    duration of the ``with`` block. Call :func:`check` first."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from exc
    lock = _lock(out)
    try:
        if overwrite:
            clear(out)
        remove_stale_temps(out)
        if not (out / MARKER).is_file():
            write_text(out / MARKER, json.dumps({"created": time.time()}) + "\n")
        yield out
    finally:
        with contextlib.suppress(OSError):
            if _holder_pid(lock) == os.getpid():
                lock.unlink()


def clear(out: Path) -> list[str]:
    """Remove the files qmixprune writes (and their stale temporaries) from OUT; nothing
    else, and no folder. Returns the names removed."""
    removed = []
    for p in out.iterdir():
        if p.is_file() and not p.is_symlink() and (p.name in OUTPUTS or _is_temp(p.name)):
            p.unlink()
            removed.append(p.name)
    return removed


def remove_stale_temps(out: Path) -> list[str]:
    """Temporaries of ours left by a killed run (the lock is ours, so none is in use)."""
    removed = []
    for p in out.iterdir():
        if p.is_file() and not p.is_symlink() and _is_temp(p.name):
            p.unlink()
            removed.append(p.name)
    return removed


# Keys a resumed run may change: where it runs (another GPU, each torchrun rank its own
# cuda:N) and what it keeps afterwards do not change what is computed.
RESUME_MAY_CHANGE = ("device", "keep_checkpoints")


def check_same_config(out: str | os.PathLike, name: str, config: dict) -> None:
    """On ``--resume``: refuse a configuration other than the one OUT/``name`` records,
    before anything (that file included) is rewritten."""
    path = Path(out) / name
    try:
        old = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({exc}): start afresh with --overwrite") from exc
    new = json.loads(json.dumps(config))
    diff = _first_difference(old, new)
    if diff is not None:
        key, was, now = diff
        raise UserError(
            f"--resume: {out} was made with another configuration ({key}: {was!r} there, "
            f"{now!r} now): rerun with the same options, or start afresh with --overwrite"
        )


def _first_difference(old, new, key: str = "") -> tuple[str, object, object] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted((set(old) | set(new)) - set(RESUME_MAY_CHANGE)):
            d = _first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if d is not None:
                return d
        return None
    return None if old == new else (key, old, new)


def _check_writable(out: Path) -> None:
    existing = nearest_existing(out)
    if not existing.is_dir():
        raise UserError(f"cannot write into {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {out}: permission denied (choose another -o)")


def _lock(out: Path) -> Path:
    """Take OUT's lock (O_EXCL); a lock whose process is gone is taken over."""
    lock = out / LOCK
    body = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None:
                raise UserError(
                    f"another qmixprune run (pid {holder}) is writing into {out}: wait for it "
                    "to end or choose another -o"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its run was killed
            continue
        except OSError as exc:
            raise UserError(f"cannot write into {out}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "w") as f:
            f.write(body)
        if _holder_pid(lock) == os.getpid():
            return lock
    raise UserError(f"could not lock {out}: another run keeps taking it; try again")


def _holder(lock: Path) -> int | None:
    """The pid of the live process holding ``lock``, or None (no lock, or a stale one)."""
    try:
        info = json.loads(lock.read_text())
        pid, host = int(info["pid"]), info.get("host")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # being written this instant, or damaged: judge it by its age
        try:
            return -1 if time.time() - lock.stat().st_mtime < 5 else None
        except OSError:
            return None
    if host not in (None, socket.gethostname()):
        return pid  # another machine's run (a shared disk): we cannot tell, so respect it
    return pid if _alive(pid) else None


def _holder_pid(lock: Path) -> int | None:
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows: kill(pid, 0) would signal it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIXES)


def _entries(out: Path) -> list[Path]:
    return list(out.iterdir())
