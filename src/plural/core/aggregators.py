"""Aggregators: weighted means of client parameters.

An aggregator is a small accumulator with ``add`` / ``merge`` / ``result``. ``merge`` is
associative, so blocks of clients (or distributed workers) can be reduced separately and
combined; the result does not depend on how clients were grouped, up to float rounding.
Sums are kept in float64 so that the order of clients barely matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from plural.core.params import Params

Weighting = Literal["samples", "uniform"]


def client_weight(num_samples: int, weighting: Weighting) -> float:
    """Weight of one client: its sample count (McMahan et al. 2017) or 1 (uniform)."""
    if weighting == "samples":
        return float(num_samples)
    if weighting == "uniform":
        return 1.0
    raise ValueError(f"unknown weighting {weighting!r}; allowed: 'samples', 'uniform'")


class WeightedMean:
    """Weighted mean of parameter dictionaries that share their names and shapes."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.total_weight = 0.0

    def add(self, params: Mapping[str, torch.Tensor], weight: float) -> WeightedMean:
        if weight < 0:
            raise ValueError(f"aggregation weights must be >= 0, got {weight}")
        for name, tensor in params.items():
            contribution = tensor.detach().to(torch.float64) * weight
            if name in self._sum:
                self._sum[name] += contribution
            else:
                self._sum[name] = contribution
                self._dtypes[name] = tensor.dtype
        self.total_weight += weight
        return self

    def merge(self, other: WeightedMean) -> WeightedMean:
        for name, tensor in other._sum.items():
            if name in self._sum:
                self._sum[name] += tensor
            else:
                self._sum[name] = tensor.clone()
                self._dtypes[name] = other._dtypes[name]
        self.total_weight += other.total_weight
        return self

    def result(self) -> Params:
        if self.total_weight <= 0:
            raise ValueError("cannot average: no client with positive weight was added")
        return {
            name: _cast(total / self.total_weight, self._dtypes[name])
            for name, total in self._sum.items()
        }


def _cast(mean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point or dtype.is_complex:
        return mean.to(dtype)
    return mean.round().to(dtype)  # integer buffers such as BatchNorm's num_batches_tracked


def weighted_mean(items: list[tuple[Mapping[str, torch.Tensor], float]]) -> Params:
    """Convenience: the weighted mean of ``(params, weight)`` pairs."""
    accumulator = WeightedMean()
    for params, weight in items:
        accumulator.add(params, weight)
    return accumulator.result()
