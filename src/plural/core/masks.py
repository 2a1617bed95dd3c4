"""Which parameters are shared and which stay personal, chosen by name pattern.

Patterns are shell-style globs on parameter names (``"fc3.*"``, ``"*.bias"``) plus two
shorthands resolved from the model itself:

* ``@last``: every entry of the last module that has any (the classifier head of most
  models), found from the order of the parameter dictionary;
* ``@norm``: every entry of the normalisation layers (BatchNorm, GroupNorm, LayerNorm,
  InstanceNorm), parameters and running statistics (FedBN's local part).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

LAST = "@last"
NORM = "@norm"
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def module_prefix(name: str) -> str:
    """``"layer.3.weight"`` -> ``"layer.3"`` (empty for a top-level entry)."""
    return name.rpartition(".")[0]


def last_module_names(names: Sequence[str]) -> set[str]:
    """The entries of the module that owns the last entry of ``names``."""
    if not names:
        return set()
    prefix = module_prefix(names[-1])
    return {n for n in names if module_prefix(n) == prefix}


def norm_layer_names(model: nn.Module) -> tuple[str, ...]:
    """State-dict names of the model's normalisation layers."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            prefix = f"{module_name}." if module_name else ""
            names += [prefix + n for n in module.state_dict()]
    return tuple(names)


def select(
    names: Sequence[str], patterns: Iterable[str], norm_names: Iterable[str] = ()
) -> set[str]:
    """The names matched by any of ``patterns`` (see the module docstring)."""
    chosen: set[str] = set()
    norm = set(norm_names)
    for pattern in patterns:
        if pattern == LAST:
            chosen |= last_module_names([n for n in names if not n.endswith("num_batches_tracked")])
        elif pattern == NORM:
            chosen |= {n for n in names if n in norm}
        else:
            chosen |= {n for n in names if fnmatch.fnmatchcase(n, pattern)}
    return chosen


def check_patterns(names: Sequence[str], patterns: Iterable[str], what: str) -> None:
    """Raise a ValueError naming the pattern that matches nothing (a likely typo)."""
    for pattern in patterns:
        if pattern not in (LAST, NORM) and not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ValueError(
                f"{what}: pattern {pattern!r} matches no parameter; names are "
                f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
            )


def merge(
    shared: Mapping[str, torch.Tensor], personal: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``shared`` with the entries of ``personal`` put over it (order of ``shared`` kept)."""
    return {n: personal.get(n, t) for n, t in shared.items()}


def top_module_names(names: Sequence[str], count: int) -> set[str]:
    """The entries of the last ``count`` modules that own entries of ``names`` (model order;
    ``count = 1`` is :func:`last_module_names`). Batch-norm step counters are left out."""
    prefixes: list[str] = []
    for name in names:
        if name.endswith("num_batches_tracked"):
            continue
        prefix = module_prefix(name)
        if not prefixes or prefixes[-1] != prefix:
            prefixes.append(prefix)
    chosen = set(prefixes[-count:]) if count > 0 else set()
    return {
        n for n in names if module_prefix(n) in chosen and not n.endswith("num_batches_tracked")
    }
