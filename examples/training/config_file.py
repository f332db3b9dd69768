"""Settings files (``--config``): read, and checked by the command line's rules."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from pathlib import Path

from .config import TrainConfig


@functools.cache
def typed_fields() -> dict[str, type]:
    """Each :class:`TrainConfig` field's type."""
    return typing.get_type_hints(TrainConfig)


def read_config_file(path: str | Path) -> dict:
    """Settings from a JSON (or, with PyYAML, YAML) file: ``{field: value}`` with
    :class:`TrainConfig` field names (``-`` may stand for ``_``; ``lambda`` for ``lambda_``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: not a file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); or write the file as "
                "JSON (--print-config prints one)"
            ) from None
        raw = yaml.safe_load(text)
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected an object of settings")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in raw.items():
        name = "lambda_" if key == "lambda" else key.replace("-", "_")
        if name not in known:
            raise ValueError(f"--config {path}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
        out[name] = typed(name, value, f"--config {path}: {key!r}")
    return out


def typed(name: str, value, where: str):
    """``value`` checked against the type of :class:`TrainConfig`'s field ``name`` (the
    command line's rules: an int where an int is meant, a list where several values are),
    lists turned into tuples; a ValueError naming the setting otherwise."""
    hint = typed_fields()[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        item = items[0]
        if not isinstance(value, (list, tuple)):
            raise ValueError(
                f"{where}: expected a list of {item.__name__}"
                + (" or null" if optional else "")
                + f", e.g. {_example(name)}, got {value!r}"
            )
        if items[-1] is not Ellipsis and len(value) != len(items):
            raise ValueError(f"{where}: expected {len(items)} values, got {len(value)}: {value!r}")
        return tuple(_scalar(item, v, where) for v in value)
    return _scalar(hint, value, where)


def _scalar(kind: type, value, where: str):
    ok = (
        isinstance(value, bool)
        if kind is bool
        else isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float
        else isinstance(value, kind)
    )
    if not ok:
        wanted = "a number" if kind is float else "an integer" if kind is int else kind.__name__
        raise ValueError(f"{where}: expected {wanted}, got {value!r} ({type(value).__name__})")
    return float(value) if kind is float else value


def _example(name: str) -> str:
    default = getattr(TrainConfig(), name)
    return json.dumps(list(default) if default else ["..."])
