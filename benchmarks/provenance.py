"""The git revision every benchmark's result file states (one home for the scripts that
import it; gpu_check.py keeps its own, as tests load it on its own)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def revision() -> str:
    """The checkout's short git revision, "+dirty" when tracked files have changes, or
    "unknown" outside a git checkout."""
    here = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
