"""Checkpoints that load without running code.

``torch.load(..., weights_only=True)`` reads only tensors, numbers, strings, lists, tuples
and dicts, so a checkpoint from someone else cannot execute anything when it is read. Server
and client states are richer than that (dataclasses, NumPy arrays, enums), so this module
turns them into that plain form before saving and back after loading.

Why by hand: torch's ``add_safe_globals`` would let the unpickler build our dataclasses
directly, but every class would have to be listed ahead of time (user algorithms too) and
NumPy arrays need allow-listing NumPy's reconstruction functions, which is exactly the kind
of global a malicious pickle abuses. Here a class is only ever *looked up* in a module that
is already imported (or in ``plural`` itself) and filled field by field; nothing named in a
file is imported or called.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

TAG = "__plural_plain__"
"""The key that marks an encoded value; a dict holding it as a key is refused."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than plain data, or names a class plural
    will not rebuild."""


def to_plain(value: Any) -> Any:
    """``value`` as tensors, numbers, strings, lists and dicts only (see module docstring)."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return to_plain(value.item())
    if isinstance(value, enum.Enum):  # before int and str: IntEnum, StrEnum
        return {TAG: "enum", "class": _class_name(type(value)), "value": to_plain(value.value)}
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, torch.dtype):
        return {TAG: "dtype", "name": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {TAG: "device", "name": str(value)}
    if isinstance(value, np.ndarray):
        return _array_to_plain(value)
    if isinstance(value, dict):
        return _dict_to_plain(value)
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [to_plain(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {TAG: type(value).__name__, "items": [to_plain(v) for v in sorted(value)]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {TAG: "dataclass", "class": _class_name(type(value)), "fields": fields}
    raise TypeError(
        f"a checkpoint cannot hold a {type(value).__module__}.{type(value).__qualname__}: "
        "states may hold tensors, NumPy arrays, numbers, strings, enums, torch dtypes and "
        "devices, dataclasses and lists, tuples, sets or dicts of those"
    )


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: from_plain(v) for k, v in value.items()}
    decode = _DECODERS.get(kind)
    if decode is None:
        raise UnsafeCheckpointError(f"unknown encoded value {kind!r}")
    return decode(value)


def save_plain(value: Any, target: str | Path | BinaryIO) -> None:
    """``torch.save`` of ``to_plain(value)``."""
    torch.save(to_plain(value), target)


def load_plain(source: str | Path, *, mmap: bool = False) -> Any:
    """Read a file written by :func:`save_plain` without unpickling anything but plain data.

    Raises :class:`UnsafeCheckpointError` when the file holds anything else (a pickled object
    that could run code, or a checkpoint of plural < 0.3 written with full pickling)."""
    try:
        raw = torch.load(source, weights_only=True, mmap=mmap)
    except Exception as err:
        if _is_unpickling_refusal(err):
            raise UnsafeCheckpointError(
                f"{str(source)!r} holds Python objects that loading would have to execute "
                "(it was not written by this version of plural, or was tampered with); plural "
                "loads only tensors, numbers, strings, lists and dicts and refused it"
            ) from None
        raise
    return from_plain(raw)


def _is_unpickling_refusal(err: Exception) -> bool:
    """Whether torch's weights-only unpickler refused a Python object (a global it would have
    to import and call), as opposed to bytes that are not a pickle at all (a damaged file)."""
    return "Unsupported global" in str(err)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _array_to_plain(array: np.ndarray) -> dict[str, Any]:
    if array.dtype.kind in "biuf" and array.dtype.byteorder in "=|<":
        return {TAG: "ndarray", "tensor": torch.from_numpy(np.ascontiguousarray(array).copy())}
    if array.dtype.kind in "US":  # strings: as a list, the dtype keeps their width
        return {
            TAG: "ndarray_list",
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "items": array.ravel().tolist(),
        }
    raise TypeError(f"a checkpoint cannot hold a NumPy array of dtype {array.dtype}")


def _dict_to_plain(value: dict[Any, Any]) -> Any:
    if TAG in value:
        raise TypeError(f"a checkpoint cannot hold a dict with the reserved key {TAG!r}")
    if all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value):
        return {k: to_plain(v) for k, v in value.items()}
    return {TAG: "pairs", "items": [[to_plain(k), to_plain(v)] for k, v in value.items()]}


def _known_class(name: Any) -> type:
    """The class ``module:qualname`` names, found without importing anything but plural."""
    if not isinstance(name, str) or ":" not in name:
        raise UnsafeCheckpointError(f"bad class name {name!r} in checkpoint")
    module_name, qualname = name.split(":", 1)
    module = sys.modules.get(module_name)
    if module is None and (module_name == "plural" or module_name.startswith("plural.")):
        module = importlib.import_module(module_name)
    if module is None:
        raise UnsafeCheckpointError(
            f"the checkpoint holds a {name} but its module is not imported; plural imports "
            "nothing a checkpoint names (import or register that code first)"
        )
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, type):
        raise UnsafeCheckpointError(f"the checkpoint names {name}, which is not a class")
    return found


def _dataclass_from(value: dict[str, Any]) -> Any:
    cls = _known_class(value["class"])
    if not dataclasses.is_dataclass(cls):
        raise UnsafeCheckpointError(f"{value['class']} is not a dataclass")
    names = {f.name for f in dataclasses.fields(cls)}
    fields = value["fields"]
    if set(fields) != names:
        raise UnsafeCheckpointError(
            f"{value['class']} has fields {sorted(names)}, the checkpoint {sorted(fields)}"
        )
    instance = object.__new__(cls)  # as unpickling does: no __init__ or __post_init__ runs
    for key, item in fields.items():
        object.__setattr__(instance, key, from_plain(item))
    return instance


def _enum_from(value: dict[str, Any]) -> Any:
    cls = _known_class(value["class"])
    if not issubclass(cls, enum.Enum):
        raise UnsafeCheckpointError(f"{value['class']} is not an enum")
    return cls(from_plain(value["value"]))


def _array_from_list(value: dict[str, Any]) -> np.ndarray:
    return np.array(value["items"], dtype=np.dtype(value["dtype"])).reshape(value["shape"])


def _dtype_from(value: dict[str, Any]) -> torch.dtype:
    found = getattr(torch, str(value["name"]), None)
    if not isinstance(found, torch.dtype):
        raise UnsafeCheckpointError(f"unknown torch dtype {value['name']!r} in checkpoint")
    return found


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "tuple": lambda v: tuple(from_plain(v["items"])),
    "set": lambda v: set(from_plain(v["items"])),
    "frozenset": lambda v: frozenset(from_plain(v["items"])),
    "pairs": lambda v: {from_plain(k): from_plain(x) for k, x in v["items"]},
    "ndarray": lambda v: v["tensor"].numpy(),
    "ndarray_list": _array_from_list,
    "dataclass": _dataclass_from,
    "enum": _enum_from,
    "dtype": _dtype_from,
    "device": lambda v: torch.device(str(v["name"])),
}
