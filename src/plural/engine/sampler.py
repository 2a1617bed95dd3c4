"""Seeded client sampling: which clients take part in a round."""

from __future__ import annotations

import math

import numpy as np

from plural.core.rng import numpy_rng
from plural.experiment import SamplingConfig


def cohort_size(num_clients: int, config: SamplingConfig) -> int:
    """Clients per round: all, ``count`` (at most all), or max(1, round(fraction * n))."""
    if config.count is not None:
        return min(config.count, num_clients)
    if config.fraction is not None:
        return max(1, min(num_clients, math.floor(config.fraction * num_clients + 0.5)))
    return num_clients


def sample_cohort(
    num_clients: int,
    config: SamplingConfig,
    seed: int,
    round_index: int,
    available: list[int] | None = None,
) -> list[int]:
    """The sorted client ids of one round, drawn without replacement from (seed, round); with
    ``poisson``, each client independently with probability ``fraction`` (maybe none). Only
    ``available`` clients are drawn when given (``sampling.availability``): as many as the
    config asks of the whole federation, at most all of those available."""
    if config.poisson:
        rng = numpy_rng(seed, round_index, "sample-poisson")
        joined = np.flatnonzero(rng.random(num_clients) < config.fraction)
        if available is not None:
            online = set(available)
            return [int(c) for c in joined if int(c) in online]
        return [int(c) for c in joined]
    if available is not None:
        size = min(cohort_size(num_clients, config), len(available))
        rng = numpy_rng(seed, round_index, "sample")
        return sorted(int(c) for c in rng.choice(available, size=size, replace=False))
    size = cohort_size(num_clients, config)
    if size == num_clients:
        return list(range(num_clients))
    rng = numpy_rng(seed, round_index, "sample")
    return sorted(int(c) for c in rng.choice(num_clients, size=size, replace=False))
