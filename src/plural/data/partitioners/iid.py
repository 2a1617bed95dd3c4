"""The ``iid`` partitioner: a random permutation cut into near-equal clients."""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.config import setting
from plural.data.partitioners.common import (
    _equal_sizes,
    _owner_from_sizes,
    _partition_from_owner,
    _require_clients,
)
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS


@dataclasses.dataclass(frozen=True)
class IIDConfig:
    num_clients: int = setting(10, help="number of clients", ge=1)


@PARTITIONERS.register("iid", IIDConfig, "uniform random split into near-equal clients")
class IIDPartitioner:
    """A random permutation cut into ``num_clients`` parts whose sizes differ by at most 1."""

    def __init__(self, config: IIDConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        k, n = self.config.num_clients, len(data)
        _require_clients("iid", k, n)
        owner = _owner_from_sizes(rng.permutation(n), _equal_sizes(n, k), n)
        return _partition_from_owner(owner, k)
