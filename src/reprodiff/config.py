"""Frozen dataclass configs from TOML/JSON dicts: unknown keys get the nearest valid name, wrong types a
one-line error naming the key (docs/DESIGN.md, convention 4)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Self, TypeVar

from .files import check_input_dir, read_input_bytes

__all__ = ["ConfigError", "TomlConfig", "from_dict", "from_file_dict", "load_toml", "read_run_config", "read_toml",
           "to_dict"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and the fix."""


def suggest(name: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce/validate one leaf value against a type annotation (int, float, str, bool, unions, tuples, dicts)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(e)
        if isinstance(value, float) and (right := [e for e in errors if "finite" in str(e)]):
            raise right[0]  # a number of the right type, not a finite one: say that, not "not a valid float | str"
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected none, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg, *_rest) = typing.get_args(tp)
        return tuple(_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, recursively; reject unknown keys with a suggestion.
    ``where`` is the key path of ``data`` in the enclosing config (for messages)."""
    at = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{at}expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"{at}unknown key {key!r}{suggest(key, fields)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{at}{e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable or malformed file is one line (``ConfigError``, or a
    ``StorageError`` when the file system refuses)."""
    path = Path(path)
    try:
        raw = read_input_bytes(path, "config file")
    except ValueError as e:  # missing, a folder, changed while read
        raise ConfigError(str(e)) from None
    try:
        return tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def from_file_dict(cls: type[T], data: Any, path: str | os.PathLike[str]) -> T:
    """``from_dict`` with the file's path in front of any error."""
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_toml(cls: type[T], path: str | os.PathLike[str]) -> T:
    return from_file_dict(cls, read_toml(path), path)


def read_run_config(cls: type[T], folder: str | os.PathLike[str], what: str) -> T:
    """A run folder's ``config.json`` as ``cls`` (``what`` names the folder kind in the error)."""
    path = check_input_dir(folder, f"{what} folder") / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder}: not a {what} folder (no config.json); give the --out folder of a training run")
    try:
        return from_dict(cls, json.loads(read_input_bytes(path)))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


class TomlConfig:
    """Mixin for frozen dataclass configs: ``from_toml``, ``from_dict`` (validated) and ``to_dict`` (JSON)."""

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Self:
        return load_toml(cls, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
