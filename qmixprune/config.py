"""Configuration files: YAML or JSON mapped onto the stages' frozen dataclasses.

Unknown keys are rejected (a typo must not be silently ignored); CLI flags that the user
gave override the file; ``None`` means "not given" so defaults stay where they live.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

T = TypeVar("T")


def read_config(path: str | Path | None) -> dict:
    """The mapping in a YAML or JSON file (empty without a path)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise UserError(f"cannot parse config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


def build(cls: type[T], values: dict, where: str = "config") -> T:
    """Construct dataclass ``cls`` from ``values`` (nested dataclasses from nested dicts)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown key(s) {unknown} in {where}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{where}.{name} must be a mapping")
            value = build(hint, value, f"{where}.{name}")
        else:
            value = check_type(value, hint, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"bad {where}: {exc}") from exc


def check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` if it fits the field type ``hint`` (int, float, bool, str, Optional, Literal,
    tuples and lists of those; an int is a valid float and becomes one), else one line
    naming the key and the type it needs."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_type(value, arg, key)
            except UserError:
                continue
        raise UserError(_wrong(key, value, " or ".join(_name(a) for a in args)))
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise UserError(f"{key} must be one of {list(args)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(_wrong(key, value, "a list"))
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length
            if len(value) != len(args):
                raise UserError(f"{key} must hold {len(args)} values, got {len(value)}")
            return tuple(
                check_type(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args))
            )
        item = args[0] if args else Any
        return origin(check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(_wrong(key, value, "a number"))
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(_wrong(key, value, "a whole number"))
    if hint in (bool, str) and not isinstance(value, hint):
        raise UserError(_wrong(key, value, "true or false" if hint is bool else "a string"))
    return value


def _wrong(key: str, value: Any, wanted: str) -> str:
    if not isinstance(value, str):
        return f"{key} must be {wanted}, got {value!r}"
    try:
        float(value)
        hint = " (write numbers without quotes; YAML reads 1e-3 as a string: write 1.0e-3)"
    except ValueError:
        hint = ""
    return f"{key} must be {wanted}, got the string {value!r}{hint}"


def _name(hint: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` laid over it, recursively; ``None`` overrides nothing."""
    out = dict(base)
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif isinstance(v, dict):
            out[k] = merge({}, v)
        else:
            out[k] = v
    return out


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def field_comments(cls: type) -> dict[str, str]:
    """field name -> the comment on its line (or on the comment lines just above it)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        head = line.strip().split(":", 1)[0]
        if head not in names or head in out or line.strip().startswith("#"):
            continue
        text = comments.get(i, "")
        j = i - 1
        above: list[str] = []
        while not text and j >= 1 and lines[j - 1].strip().startswith("#"):
            above.insert(0, comments.get(j, ""))
            j -= 1
        out[head] = text or " ".join(above)
    return out
