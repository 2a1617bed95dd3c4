"""The ``quantity`` partitioner: IID labels, client sizes from a size law."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from plural.config import setting
from plural.data.partitioners.common import (
    _law_sizes,
    _owner_from_sizes,
    _partition_from_owner,
    _require_clients,
)
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS


@dataclasses.dataclass(frozen=True)
class QuantityConfig:
    num_clients: int = setting(10, help="number of clients", ge=1)
    distribution: Literal["power_law", "lognormal"] = setting(
        "lognormal", help="shape of the client size distribution"
    )
    sigma: float = setting(1.0, help="lognormal sigma of the size weights", gt=0.0)
    exponent: float = setting(
        1.5, help="power_law: sizes proportional to rank^-exponent (Zipf-like)", gt=0.0
    )
    min_samples: int = setting(10, help="every client gets at least this many samples", ge=1)


@PARTITIONERS.register("quantity", QuantityConfig, "quantity skew: IID labels, skewed client sizes")
class QuantityPartitioner:
    """Quantity skew with IID labels (as in Li et al. 2022, "Federated learning on non-IID data
    silos"; lognormal sizes follow the FedProx generators, Li et al. 2020).

    Each client first gets ``min_samples``; the other ``n - num_clients * min_samples`` samples
    are shared in proportion to weights ~ lognormal(0, sigma), or to rank^-exponent over a
    random ranking of the clients (power_law), with largest-remainder rounding
    (:func:`_law_sizes`). Sizes sum to ``n`` exactly; samples are a random permutation cut by
    those sizes.

    To combine these sizes with label skew, use the ``dirichlet`` partitioner with
    ``sizes="lognormal"`` or ``sizes="power_law"`` (and ``sigma`` / ``exponent``): it draws
    the same client sizes from the same rng state and gives each client a Dir(alpha) class
    mix, e.g. ``{name: dirichlet, alpha: 0.3, sizes: power_law}``.
    """

    def __init__(self, config: QuantityConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg, n = self.config, len(data)
        _require_clients("quantity", cfg.num_clients, n, cfg.min_samples)
        sizes = _law_sizes(
            cfg.distribution,
            cfg.num_clients,
            n,
            cfg.min_samples,
            rng,
            sigma=cfg.sigma,
            exponent=cfg.exponent,
        )
        owner = _owner_from_sizes(rng.permutation(n), sizes, n)
        return _partition_from_owner(owner, cfg.num_clients)
