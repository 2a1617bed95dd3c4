"""The ``natural`` partitioner: the dataset's own clients."""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.config import ConfigError, setting
from plural.data.partitioners.common import _partition_from_owner
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS


@dataclasses.dataclass(frozen=True)
class NaturalConfig:
    min_samples: int = setting(1, help="drop natural clients with fewer samples", ge=1)
    max_clients: int | None = setting(
        None, help="keep a random subset of this many clients (null = all)", ge=1
    )


def _majority(client_of_sample: np.ndarray, values: np.ndarray, num_clients: int) -> np.ndarray:
    """The most common value of ``values`` per client (ties go to the smallest value)."""
    uniques, inverse = np.unique(values, return_inverse=True)
    table = np.bincount(
        client_of_sample * len(uniques) + inverse.ravel(), minlength=num_clients * len(uniques)
    ).reshape(num_clients, len(uniques))
    return uniques[np.argmax(table, axis=1)].astype(np.int64)


@PARTITIONERS.register(
    "natural", NaturalConfig, "the dataset's own clients (writers, devices, speakers)"
)
class NaturalPartitioner:
    """The dataset's natural clients from ``data.client_ids`` (as in LEAF, Caldas et al. 2018).

    Clients (ordered by id) with fewer than ``min_samples`` samples are dropped; with
    ``max_clients`` a random subset of that many remains. Where ``data.sample_groups`` is set,
    a client's group is the most common group among its samples.
    """

    def __init__(self, config: NaturalConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg = self.config
        if data.client_ids is None:
            raise ConfigError(
                f"partition (natural): dataset {data.name!r} has no natural clients; choose "
                f"iid, dirichlet, pathological, classes_per_client, class_groups or quantity"
            )
        ids, client_of_sample = np.unique(data.client_ids, return_inverse=True)
        client_of_sample = client_of_sample.ravel().astype(np.int64)
        sizes = np.bincount(client_of_sample, minlength=len(ids))
        kept = np.flatnonzero(sizes >= cfg.min_samples)
        if len(kept) == 0:
            raise ConfigError(
                f"partition (natural): min_samples = {cfg.min_samples} drops all {len(ids)} "
                f"clients of {data.name!r}; the largest has {int(sizes.max())} samples"
            )
        if cfg.max_clients is not None and cfg.max_clients < len(kept):
            kept = np.sort(rng.choice(kept, cfg.max_clients, replace=False))
        new_id = np.full(len(ids), -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept))
        owner = new_id[client_of_sample]
        groups = None
        if data.sample_groups is not None:
            used = owner >= 0
            groups = _majority(owner[used], np.asarray(data.sample_groups)[used], len(kept))
        partition = _partition_from_owner(owner, len(kept), groups)
        return dataclasses.replace(partition, source_clients=ids[kept])
