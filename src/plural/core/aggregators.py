"""Aggregators: weighted means of client parameters, and how clients are weighted.

An aggregator is a small accumulator with ``add`` / ``merge`` / ``result``. ``merge`` is
associative, so blocks of clients (or distributed workers) can be reduced separately and
combined; the result does not depend on how clients were grouped, up to float rounding.
Sums are kept in float64 so that the order of clients barely matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from plural.core.params import Params

Weighting = Literal["samples", "uniform", "capped", "private_samples", "fair"]
WEIGHTINGS_HELP = (
    "how clients are weighted when averaging. 'samples': by training-set size (McMahan et al. "
    "2017; the unbiased choice when clients report sizes honestly); 'uniform': every client "
    "alike (fairer to small clients, robust to inflated counts); 'capped': by size, but no "
    "client above weight_cap of the total (one huge client cannot dominate); "
    "'private_samples': by the counts clients reveal, bucketed to count_bucket and noised "
    "with Laplace(count_noise) on the client (sizes stay private); 'fair': by size times the "
    "client's loss at the received model to the power fairness_q (q-FFL reweighting, Li et "
    "al. 2020: clients doing badly count more)"
)


def client_weight(num_samples: float, weighting: Literal["samples", "uniform"]) -> float:
    """Weight of one client: its sample count (McMahan et al. 2017) or 1 (uniform)."""
    if weighting == "samples":
        return float(num_samples)
    if weighting == "uniform":
        return 1.0
    raise ValueError(f"unknown weighting {weighting!r}; allowed: 'samples', 'uniform'")


def capped_shares(sizes: Sequence[float], cap: float) -> np.ndarray:
    """Shares proportional to ``sizes`` with none above ``cap`` (water-filling).

    Clients over the cap are fixed at it and the rest of the mass is shared among the others
    in proportion to their sizes, until no share exceeds the cap. If the cap cannot be met
    (``cap * clients < 1``) every client gets an equal share.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    k = len(sizes)
    if cap * k < 1.0 or sizes.sum() <= 0:
        return np.full(k, 1.0 / k)
    shares = sizes / sizes.sum()
    fixed = np.zeros(k, dtype=bool)
    while True:
        over = (shares > cap + 1e-12) & ~fixed
        if not over.any():
            return shares
        fixed |= over
        free = ~fixed
        left = 1.0 - cap * fixed.sum()
        shares = np.where(fixed, cap, 0.0)
        shares[free] = left * sizes[free] / sizes[free].sum() if sizes[free].sum() > 0 else 0.0


def aggregation_weights(
    samples: Sequence[float],
    weighting: Weighting,
    *,
    cap: float = 1.0,
    losses: Sequence[float] | None = None,
    q: float = 1.0,
) -> np.ndarray:
    """Non-negative weights of the clients of one round (see :data:`WEIGHTINGS_HELP`).

    ``samples`` are the counts the clients reported (already bucketed/noised for
    'private_samples'); ``losses`` their training losses at the received model ('fair').
    """
    n = np.maximum(np.asarray(samples, dtype=np.float64), 0.0)
    if weighting in ("samples", "private_samples"):
        return n
    if weighting == "uniform":
        return np.ones_like(n)
    if weighting == "capped":
        return capped_shares(n, cap)
    if weighting == "fair":
        if losses is None or any(math.isnan(v) for v in losses):
            raise ValueError("'fair' weighting needs every client's loss at the received model")
        return n * np.power(np.maximum(np.asarray(losses, dtype=np.float64), 1e-12), q)
    raise ValueError(f"unknown weighting {weighting!r}")


def report_count(num_samples: int, bucket: int, noise: float, rng: torch.Generator) -> float:
    """The sample count a client reveals: rounded up to a multiple of ``bucket``, plus
    Laplace(``noise``) noise drawn on the client, never below 1."""
    reported = float(math.ceil(num_samples / bucket) * bucket) if num_samples else 0.0
    if noise > 0:
        u = float(torch.rand((), generator=rng, dtype=torch.float64)) - 0.5
        reported -= noise * math.copysign(1.0, u) * math.log1p(-2 * abs(u))
    return max(reported, 1.0)


class WeightedMean:
    """Weighted mean of parameter dictionaries that share their names and shapes."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self.total_weight = 0.0

    def add(self, params: Mapping[str, torch.Tensor], weight: float) -> WeightedMean:
        if weight < 0:
            raise ValueError(f"aggregation weights must be >= 0, got {weight}")
        known = [name for name in params if name in self._sum]
        if known:  # one fused call for all entries (a per-entry loop costs ~3x more per client)
            torch._foreach_add_(
                [self._sum[name] for name in known],
                [params[name].detach() for name in known],
                alpha=weight,
            )
        for name, tensor in params.items():
            if name not in self._sum:
                wide = torch.complex128 if tensor.is_complex() else torch.float64
                self._sum[name] = tensor.detach().to(wide) * weight
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


def weighted_mean(items: Sequence[tuple[Mapping[str, torch.Tensor], float]]) -> Params:
    """Convenience: the weighted mean of ``(params, weight)`` pairs."""
    accumulator = WeightedMean()
    for params, weight in items:
        accumulator.add(params, weight)
    return accumulator.result()
