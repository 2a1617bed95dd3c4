"""Initial weights of a module passed from Python.

Every method in a comparison should start from the same weights, drawn from the run's
seed, as the config's models are. A ``torch.nn.Module`` handed to :func:`plural.run` is
therefore re-initialised from the seed unless the caller keeps its weights
(``keep_weights=True``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from plural.core.rng import derive_seed


def reinitialised(module: nn.Module, seed: int) -> nn.Module:
    """A copy of ``module`` whose layers are reset (``reset_parameters``) from the derived
    seed ``(seed, "model")``; parameters of layers without ``reset_parameters`` keep their
    values."""
    fresh = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "model"))
        for layer in fresh.modules():
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh
