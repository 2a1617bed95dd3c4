"""The ``pathological`` partitioner: FedAvg's label-sorted shards."""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.config import ConfigError, setting
from plural.data.partitioners.common import _equal_sizes, _partition_from_owner
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS


@dataclasses.dataclass(frozen=True)
class PathologicalConfig:
    num_clients: int = setting(100, help="number of clients", ge=1)
    shards_per_client: int = setting(2, help="label-sorted shards given to each client", ge=1)


@PARTITIONERS.register(
    "pathological", PathologicalConfig, "FedAvg shards: label-sorted shards, a few per client"
)
class PathologicalPartitioner:
    """The pathological non-IID split of McMahan et al. 2017 (FedAvg).

    Samples are sorted by label (ties in random order), cut into
    ``num_clients * shards_per_client`` near-equal contiguous shards, and each client gets
    ``shards_per_client`` random shards. MNIST with 100 clients and 2 shards gives exactly the
    paper's 200 shards of 300. As in the paper, a client may get two shards of the same class
    (and a shard may straddle two classes).
    """

    def __init__(self, config: PathologicalConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg, n = self.config, len(data)
        num_shards = cfg.num_clients * cfg.shards_per_client
        if num_shards > n:
            raise ConfigError(
                f"partition (pathological): num_clients * shards_per_client = {cfg.num_clients}"
                f" * {cfg.shards_per_client} = {num_shards} shards exceeds the {n} samples; "
                f"use num_clients <= {n // cfg.shards_per_client} or fewer shards_per_client"
            )
        shuffled = rng.permutation(n)
        by_label = shuffled[np.argsort(data.y[shuffled], kind="stable")]
        shard_owner = np.empty(num_shards, dtype=np.int64)
        shard_owner[rng.permutation(num_shards)] = np.repeat(
            np.arange(cfg.num_clients), cfg.shards_per_client
        )
        owner = np.empty(n, dtype=np.int64)
        owner[by_label] = np.repeat(shard_owner, _equal_sizes(n, num_shards))
        return _partition_from_owner(owner, cfg.num_clients)
