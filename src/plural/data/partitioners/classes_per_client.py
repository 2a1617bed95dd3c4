"""The ``classes_per_client`` partitioner: a fixed number of classes per client."""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.config import ConfigError, setting
from plural.data.partitioners.common import (
    _apportion,
    _owner_from_counts,
    _partition_from_owner,
)
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS


@dataclasses.dataclass(frozen=True)
class ClassesPerClientConfig:
    num_clients: int = setting(10, help="number of clients", ge=1)
    classes: int = setting(2, help="distinct classes held by each client", ge=1)
    share_low: float = setting(
        1.0, help="client class weights ~ U(share_low, share_high); 1.0/1.0 = equal", gt=0.0
    )
    share_high: float = setting(1.0, help="upper end of the class weight range", gt=0.0)

    def __post_init__(self) -> None:
        if self.share_low > self.share_high:
            raise ValueError(
                f"share_low ({self.share_low}) must not exceed share_high ({self.share_high})"
            )


def _assign_classes(
    num_clients: int, classes: int, available: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``num_clients x classes`` distinct classes each, every class used as evenly as possible.

    Each client in turn takes the ``classes`` least-used classes (random among equals), which
    keeps the usage of all classes within 1 of each other.
    """
    usage = np.zeros(len(available), dtype=np.float64)
    chosen = np.empty((num_clients, classes), dtype=np.int64)
    for k in range(num_clients):
        pick = np.argpartition(usage + rng.random(len(available)), classes - 1)[:classes]
        usage[pick] += 1
        chosen[k] = available[np.sort(pick)]
    return chosen


@PARTITIONERS.register(
    "classes_per_client",
    ClassesPerClientConfig,
    "label skew: each client holds a fixed number of classes",
)
class ClassesPerClientPartitioner:
    """Each client holds exactly ``classes`` distinct classes (a label-skew variant of the
    FedAvg shards, McMahan et al. 2017; the setting of pFedLoRA's framework).

    Classes are dealt so that every class present in the data is used as evenly as possible.
    Each client draws a weight ~ U(share_low, share_high) for each of its classes, and each
    class's samples go to its holders in proportion to those weights (each holder gets at least
    one). pFedLoRA's setting is ``share_low=0.4, share_high=0.6``; the defaults give equal
    shares. If ``num_clients * classes`` is below the number of classes, some classes go unused.
    """

    def __init__(self, config: ClassesPerClientConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg = self.config
        class_sizes = np.bincount(data.y, minlength=data.num_classes)
        available = np.flatnonzero(class_sizes)
        self._check(class_sizes, available)
        chosen = _assign_classes(cfg.num_clients, cfg.classes, available, rng)
        weights = np.zeros((cfg.num_clients, data.num_classes))
        rows = np.repeat(np.arange(cfg.num_clients), cfg.classes)
        weights[rows, chosen.ravel()] = rng.uniform(cfg.share_low, cfg.share_high, chosen.size)
        counts = np.zeros_like(weights, dtype=np.int64)
        for c in available:
            holders = weights[:, c] > 0
            spare = int(class_sizes[c]) - int(holders.sum())
            counts[:, c] = holders + _apportion(weights[:, c], spare, rng)
        return _partition_from_owner(_owner_from_counts(data.y, counts, rng), cfg.num_clients)

    def _check(self, class_sizes: np.ndarray, available: np.ndarray) -> None:
        cfg = self.config
        if cfg.classes > len(available):
            raise ConfigError(
                f"partition (classes_per_client): classes = {cfg.classes} but the data has "
                f"{len(available)} classes with samples (num_classes = {len(class_sizes)}); "
                f"use classes <= {len(available)}"
            )
        holders = -(-cfg.num_clients * cfg.classes // len(available))  # ceil
        smallest = int(class_sizes[available].min())
        if smallest < holders:
            raise ConfigError(
                f"partition (classes_per_client): up to {holders} clients hold each class "
                f"(num_clients * classes / {len(available)} classes) but the smallest class has "
                f"{smallest} samples; use fewer num_clients or classes so that "
                f"num_clients * classes <= {smallest * len(available)}"
            )
