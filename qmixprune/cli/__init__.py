"""The ``qmixprune`` command. ``main(argv)`` returns an exit code, so tests call it directly.

Exit codes: 0 success, 1 unexpected failure, 2 bad input (usage or a UserError),
130 interrupted. Each command lives in the module of its kind (``model``: analyze, count,
prune; ``run``: search, compress, demo; ``deploy``: export, bench, profile); the parser
only builds the options of the command being run, so that ``qmixprune bench`` imports
neither torch nor the config classes on an edge device.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import UserError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# command -> (module, help)
COMMANDS = {
    "analyze": ("model", "show the channel groups of a model"),
    "count": ("model", "MACs and parameters, per layer"),
    "prune": ("model", "prune every group uniformly (no search)"),
    "search": ("run", "QMIX search for per-group channel counts"),
    "compress": ("run", "search, prune, distil, export and report"),
    "export": ("deploy", "export a model to ONNX (checked against PyTorch)"),
    "bench": ("deploy", "ONNX Runtime latency of ONNX models"),
    "profile": ("deploy", "measure per-layer latency on this device"),
    "demo": ("run", "train VGG-16 on the bundled digits, then compress it"),
}


def _module(command: str):
    return importlib.import_module(f".{COMMANDS[command][0]}", __name__)


def parser(commands=None) -> argparse.ArgumentParser:
    """The whole parser; with ``commands``, only those commands get their options (the
    others are listed by name)."""
    p = argparse.ArgumentParser(
        prog="qmixprune",
        description="Structured filter pruning searched by multi-agent RL (QMIX), for deployment.",
    )
    p.add_argument("--version", action="version", version=f"qmixprune {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sp = sub.add_parser(name, help=text)
        if commands is None or name in commands:
            _module(name).add_arguments(name, sp)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = parser([command] if command in COMMANDS else []).parse_args(argv)
    if args.command is None:
        parser([]).print_help()
        return EXIT_USAGE
    try:
        return _module(args.command).run(args)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0's line, alone
            print(f"qmixprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        # a path the checks before the work could not foresee (changed while running)
        print(f"qmixprune: error: cannot use {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command in ("compress", "search"):
            msg = (
                f"interrupted; checkpoints kept in {args.output}: rerun the same command with "
                "--resume to go on (nothing half-written was kept)"
            )
        else:
            msg = "interrupted; nothing half-written was kept"
        print(f"qmixprune: {msg}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
