"""Validated settings.

Every component (dataset, partitioner, model, algorithm) declares its settings as a frozen
dataclass whose fields are made with :func:`setting`. :func:`build` turns a plain mapping
(from YAML, the CLI or Python) into that dataclass, rejecting unknown keys, wrong types and
out-of-range values with a :class:`ConfigError` that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with a help text and optional numeric bounds."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _Required:
    """Marks a setting without a default in :func:`describe`."""

    def __repr__(self) -> str:
        return "(required)"


REQUIRED = _Required()


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """One setting as shown by ``plural list``."""

    name: str
    type: str
    default: Any
    help: str


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe(cls: type) -> list[SettingInfo]:
    """The settings of a config dataclass, with types, defaults and help."""
    hints = _hints(cls)
    infos = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        infos.append(
            SettingInfo(f.name, _type_name(hints[f.name]), default, f.metadata.get("help", ""))
        )
    return infos


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{key}: must be one of {', '.join(map(repr, allowed))}; got {value!r}"
            )
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    raise TypeError(f"unsupported setting type {tp!r} for {key}")


def _check_bounds(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    checks = (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    )
    for name, ok, sign in checks:
        bound = meta.get(name)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{key}: must be {sign} {bound}; got {value!r}")


def unknown_key_error(key: str, allowed: list[str], path: str) -> ConfigError:
    """The error for a key that a section does not have, with the closest allowed name."""
    where = f"{path}.{key}" if path else key
    if not allowed:
        return ConfigError(f"{where}: unknown setting; this section takes no settings")
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown setting.{hint} Allowed: {', '.join(sorted(allowed))}")


def build(cls: type[T], mapping: Mapping[str, Any] | None, path: str = "") -> T:
    """Build and validate the config dataclass ``cls`` from ``mapping``."""
    if isinstance(mapping, cls):
        return mapping
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of settings, got {mapping!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in mapping:
        if key not in fields:
            raise unknown_key_error(str(key), list(fields), path)
    hints = _hints(cls)
    values = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name not in mapping:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required setting is missing")
            continue
        value = _coerce(mapping[name], hints[name], key)
        _check_bounds(value, f.metadata, key)
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                _check_bounds(item, f.metadata, f"{key}[{i}]")
        values[name] = value
    try:
        instance = cls(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path or 'config'}: {err}") from err
    return instance


def to_dict(config: Any) -> Any:
    """A config dataclass as plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config
