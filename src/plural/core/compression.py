"""Compressed lazy updates: the model delta ``theta_j - theta0`` that travels between
pFedLIA clients, shrunk by top-k sparsification or int8 quantisation
(:func:`plural.core.params.nbytes` counts only its tensors)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal, get_args

import torch

Compression = Literal["none", "topk", "int8"]
_INT8_MAX = 127


@dataclasses.dataclass(frozen=True)
class CompressedDelta:
    """A client's lazy update theta_j - theta0 as it travels; only tensors count as bytes."""

    method: str
    tensors: dict[str, dict[str, torch.Tensor]]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]


def _topk_count(numel: int, fraction: float) -> int:
    """``max(1, ceil(fraction * numel))`` capped at ``numel``, robust to float round-off."""
    return min(numel, max(1, math.ceil(round(fraction * numel, 6))))


def _encode_topk(tensor: torch.Tensor, fraction: float) -> dict[str, torch.Tensor]:
    """The largest-magnitude entries of the flattened tensor and their positions."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() > torch.iinfo(torch.int32).max:
        raise ValueError(f"topk needs int32 indices; tensor has {flat.numel()} entries")
    k = _topk_count(flat.numel(), fraction)
    indices = torch.topk(flat.abs(), k).indices.sort().values
    return {"values": flat[indices].to(torch.float32), "indices": indices.to(torch.int32)}


def _encode_int8(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Symmetric linear int8 quantisation with a float32 scale ``max|t| / 127``."""
    values = tensor.detach().to(torch.float64)
    largest = float(values.abs().max()) if values.numel() else 0.0
    scale = torch.tensor([largest / _INT8_MAX if largest > 0 else 1.0], dtype=torch.float32)
    scale = scale.to(tensor.device)
    codes = torch.round(values / scale.to(torch.float64)).clamp(-_INT8_MAX, _INT8_MAX)
    return {"codes": codes.to(torch.int8), "scale": scale}


def _encode(tensor: torch.Tensor, method: Compression, fraction: float) -> dict[str, torch.Tensor]:
    """One tensor's parts; non-floating tensors always travel as they are."""
    if method == "none" or not tensor.is_floating_point():
        return {"values": tensor}
    if method == "topk":
        return _encode_topk(tensor, fraction)
    return _encode_int8(tensor)


def _decode(
    parts: Mapping[str, torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """Rebuild one tensor (always a new tensor) from its encoded parts."""
    if "codes" in parts:
        scale = parts["scale"].to(torch.float64)
        return (parts["codes"].to(torch.float64) * scale).to(dtype).reshape(shape)
    values = parts["values"]
    if "indices" not in parts:
        return values.detach().clone()
    out = torch.zeros(math.prod(shape), dtype=dtype, device=values.device)
    out[parts["indices"].long()] = values.to(dtype)
    return out.reshape(shape)


def compress(
    delta: Mapping[str, torch.Tensor], method: Compression, fraction: float = 0.1
) -> CompressedDelta:
    """Encode a parameter delta for transport.

    ``"none"``: tensors as they are (not copied). ``"topk"``: per floating tensor the
    ``max(1, ceil(fraction * numel))`` largest-magnitude entries (float32 values, int32
    indices). ``"int8"``: per floating tensor int8 codes and a float32 scale
    ``max|t| / 127`` (1.0 for an all-zero tensor). Non-floating tensors always travel as
    they are. ``fraction`` must be in (0, 1].
    """
    if method not in get_args(Compression):
        raise ValueError(f"method must be one of {list(get_args(Compression))}, got {method!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return CompressedDelta(
        method=method,
        tensors={name: _encode(t, method, fraction) for name, t in delta.items()},
        shapes={name: tuple(t.shape) for name, t in delta.items()},
        dtypes={name: t.dtype for name, t in delta.items()},
    )


def decompress(compressed: CompressedDelta, copy: bool = True) -> dict[str, torch.Tensor]:
    """The delta rebuilt from :func:`compress`'s output (original shapes/dtypes): new
    tensors, or with ``copy`` False and no compression the tensors as they travelled (to
    read, not write)."""
    if not copy and compressed.method == "none":  # every entry travelled as it is
        return {name: parts["values"] for name, parts in compressed.tensors.items()}
    return {
        name: _decode(parts, compressed.shapes[name], compressed.dtypes[name])
        for name, parts in compressed.tensors.items()
    }
