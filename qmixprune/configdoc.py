"""Every config key, listed from the config dataclasses themselves.

``python -m qmixprune.configdoc --write docs/reference.md`` rewrites the tables between the
marker comments of the reference page; ``--check docs/reference.md`` exits 1 when the page is
out of date (a test runs it). A key's meaning is the comment on its field's line in the
dataclass source (or the line above it), so a new field documents itself where it is declared.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from .config import field_comments

START = "<!-- config-keys:start (python -m qmixprune.configdoc --write docs/reference.md) -->"
END = "<!-- config-keys:end -->"
# optional second block: the sizes of compress --preset (qmixprune/run/presets.py)
PRESETS_START = "<!-- presets:start (python -m qmixprune.configdoc --write docs/reference.md) -->"
PRESETS_END = "<!-- presets:end -->"


def _type_name(hint) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) for every leaf field, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name, f.type)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            out += rows(hint, key + ".")
            continue
        default = _default(f)
        shown = "required" if default is dataclasses.MISSING else repr(default)
        out.append((key, _type_name(hint), shown, comments.get(f.name, "")))
    return out


def table() -> str:
    """The markdown block (without markers) for ``compress``'s config (``search`` takes the
    ``search.`` part at the top level)."""
    from .run.config import CompressConfig

    lines = [
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, typ, default, meaning in rows(CompressConfig):
        typ, default, meaning = (s.replace("|", "\\|") for s in (typ, default, meaning))
        lines.append(f"| `{key}` | `{typ}` | `{default}` | {meaning} |")
    return "\n".join(lines)


def presets_table() -> str:
    """The sizes of each ``compress --preset``, defaults filled in."""
    from .run.presets import PRESETS, sizes

    lines = [
        "| preset | episodes | max evaluations | patience | distillation epochs |",
        "|---|---|---|---|---|",
    ]
    for name in PRESETS:
        z = sizes(name)
        cap = "no limit" if z["max_evaluations"] is None else z["max_evaluations"]
        patience = z["patience"] or "never stops early"
        lines.append(f"| `{name}` | {z['episodes']} | {cap} | {patience} | {z['epochs']} |")
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, block: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"


def render(text: str) -> str:
    """``text`` with the blocks between the markers replaced by the current tables."""
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"markers not found: put {START!r} and {END!r} on their own lines")
    text = _replace(text, START, END, table())
    if PRESETS_START in text and PRESETS_END in text:
        text = _replace(text, PRESETS_START, PRESETS_END, presets_table())
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qmixprune.configdoc", description=__doc__)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="FILE", help="rewrite FILE's config-key table in place")
    g.add_argument("--check", metavar="FILE", help="exit 1 when FILE's table is out of date")
    args = p.parse_args(argv)
    if args.write is None and args.check is None:
        print(table())
        return 0
    path = Path(args.write or args.check)
    text = path.read_text()
    try:
        new = render(text)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(
                f"{path} lists outdated config keys: run python -m qmixprune.configdoc "
                f"--write {path}",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != text:
        from .files import write_bytes

        write_bytes(path, new.encode())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
