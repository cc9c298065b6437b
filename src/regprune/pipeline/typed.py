"""Build nested dataclasses from plain YAML data, with errors a user can act on.

Why not a validation library: the schema is a handful of dataclasses, and what matters is the
wording of the error (which key, in which section, what was expected, what was given, what is
allowed), which a small converter over ``typing`` annotations gets exactly right.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A run config is invalid; the message names the key and says what is allowed."""


def type_name(annotation: Any) -> str:
    """How an annotation reads in an error message: ``int``, ``float or null``, ``list of int``."""
    if annotation is Any:
        return "any value"
    if dataclasses.is_dataclass(annotation):
        return "a mapping (section)"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        names = [type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    return annotation.__name__


def _mismatch(where: str, annotation: Any, value: Any) -> ConfigError:
    return ConfigError(
        f"{where}: expected {type_name(annotation)}, got {value!r} ({type(value).__name__})"
    )


def convert(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against ``annotation`` and return it in that type.

    ``bool`` is never accepted for a number (YAML's ``yes`` would silently become 1), an int is
    accepted for a float (``lr: 1``), and lists become tuples where the annotation says tuple.

    Raises:
        ConfigError: naming ``where``, the expected type and the value.
    """
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, where)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _mismatch(where, annotation, value)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, where)
            except ConfigError:
                continue
        raise _mismatch(where, annotation, value)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _mismatch(where, annotation, value)
        items = [convert(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _mismatch(where, annotation, value)
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings, got {key!r}")
        return {key: convert(item, args[1], f"{where}.{key}") for key, item in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where}: unsupported annotation {annotation!r} in the config schema")
    raise _mismatch(where, annotation, value)


def unknown_key_error(key: str, section: str, allowed: list[str]) -> ConfigError:
    """``unknown key 'batchsize' in section 'data' (did you mean 'batch_size'?); allowed: ...``."""
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"unknown key {key!r} in section {section!r}{hint}; allowed keys: {', '.join(allowed)}"
    )


def build(cls: type[T], data: Any, where: str) -> T:
    """Instantiate dataclass ``cls`` from a mapping, field by field, checking names and types.

    Args:
        cls: a dataclass whose fields carry the annotations to check against.
        data: the mapping from YAML (None counts as empty: a section with every default).
        where: dotted path of this section for messages (``""`` at the top level).

    Raises:
        ConfigError: not a mapping, an unknown key, a missing required key or a wrong type.
    """
    section = where or "top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{section}: expected a mapping of keys, got {data!r} ({type(data).__name__})"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    allowed = list(fields)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key_error(str(key), section, allowed)
        path = f"{where}.{key}" if where else str(key)
        values[key] = convert(value, hints[key], path)
    for name, field in fields.items():
        no_default = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if name not in values and no_default:
            path = f"{where}.{name}" if where else name
            raise ConfigError(f"missing required key {path!r} ({type_name(hints[name])})")
    return cls(**values)
