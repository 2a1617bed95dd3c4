"""Small model factories that tests name by import path (``helpers_models:tiny_net``).

Tests put this folder on ``sys.path`` (``monkeypatch.syspath_prepend``) before naming them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# Every call of a recording factory appends the arguments it received.
CALLS: list[dict[str, Any]] = []


def tiny_net(hidden: int, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """One hidden layer; records what it was given (the context arguments included)."""
    CALLS.append({"hidden": hidden, "num_classes": num_classes, "input_shape": input_shape})
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def fixed_net(in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    """Takes no context arguments: everything comes from the config."""
    CALLS.append({"in_features": in_features, "out_features": out_features, "bias": bias})
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, out_features, bias=bias))


def not_a_module() -> object:
    """A factory that forgets to return a module."""
    return object()


class TwoPart(nn.Module):
    """A user module whose parameter names no zoo model has."""

    def __init__(self, in_features: int = 64, hidden: int = 6, num_classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Any) -> Any:
        return self.classifier(self.encoder(x))


class NoBodyHeadSplit(nn.Module):
    """A user model with no body/head split: no ``body``/``head`` modules, not a Sequential,
    and its classifier is not a separate Linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight
