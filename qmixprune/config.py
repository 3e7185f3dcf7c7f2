"""Configuration files: YAML or JSON mapped onto the stages' frozen dataclasses.

Unknown keys are rejected (a typo must not be silently ignored); CLI flags that the user
gave override the file; ``None`` means "not given" so defaults stay where they live.
"""

from __future__ import annotations

import dataclasses
import json
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
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"bad {where}: {exc}") from exc


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
