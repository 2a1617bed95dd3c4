"""The ``class_groups`` partitioner: groups of clients, each with its own classes (label
skew with known ground truth)."""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.config import ConfigError, setting
from plural.data.partitioners.common import _equal_sizes, _partition_from_owner
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS


@dataclasses.dataclass(frozen=True)
class ClassGroupsConfig:
    num_clients: int = setting(20, help="number of clients", ge=1)
    groups: int = setting(5, help="number of client groups, each with its own classes", ge=1)
    classes_per_group: int = setting(
        2, help="distinct classes of each group (groups share no class)", ge=1
    )
    shuffle_classes: bool = setting(
        False,
        help="give groups a random permutation of the classes (false: group g gets the g-th "
        "block of classes_per_group sorted classes)",
    )


def _group_sizes(num_clients: int, groups: int) -> np.ndarray:
    """Clients per group when ``arange(num_clients) % groups`` is dealt (any permutation)."""
    return np.bincount(np.arange(num_clients) % groups, minlength=groups)


@PARTITIONERS.register(
    "class_groups",
    ClassGroupsConfig,
    "label-skew groups with known ground truth: each group of clients holds its own classes",
)
class ClassGroupsPartitioner:
    """Clustered label skew with a known answer: ``groups`` groups of clients, each owning
    ``classes_per_group`` classes that no other group sees (e.g. MNIST, 20 clients, 5 groups of
    2 classes; the setting of pFedLIA, Rokvic et al. 2025, and of clustered-FL papers).

    It exists to test whether a method recovers the client clusters (``Partition.groups`` is
    every client's group id) and how well it personalizes when clients of a group share one
    label distribution and different groups are disjoint in label space.

    Group ``g`` gets the classes ``g * classes_per_group ... (g + 1) * classes_per_group - 1``
    of the sorted classes with samples (of a random permutation of them with
    ``shuffle_classes``). Clients are dealt to groups by a random permutation of
    ``arange(num_clients) % groups``, so group sizes differ by at most 1. Each class's samples,
    in random order, are cut into near-equal shares for its group's clients; the extra samples
    of uneven cuts go round the group's clients in a random cyclic order across its classes, so
    a client's count per class and its total are within 1 of every other client of its group.
    Samples of classes that belong to no group (when ``groups * classes_per_group`` is below
    the number of classes) are unused.
    """

    def __init__(self, config: ClassGroupsConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg = self.config
        class_sizes = np.bincount(data.y, minlength=data.num_classes)
        available = np.flatnonzero(class_sizes)
        members_per_group = _group_sizes(cfg.num_clients, cfg.groups)
        self._check(class_sizes, available, members_per_group)
        order = rng.permutation(available) if cfg.shuffle_classes else available
        group_classes = order[: cfg.groups * cfg.classes_per_group].reshape(cfg.groups, -1)
        client_group = rng.permutation(np.arange(cfg.num_clients) % cfg.groups).astype(np.int64)
        owner = np.full(len(data), -1, dtype=np.int64)
        for g in range(cfg.groups):
            members = rng.permutation(np.flatnonzero(client_group == g))
            offset = 0  # where the next class's extra samples start, cycling over the members
            for c in group_classes[g]:
                idx = rng.permutation(np.flatnonzero(data.y == c))
                shares = _equal_sizes(len(idx), len(members))  # extras on the first members
                rolled = np.roll(members, -offset)
                owner[idx] = np.repeat(rolled, shares)
                offset = (offset + len(idx) % len(members)) % len(members)
        return _partition_from_owner(owner, cfg.num_clients, client_group)

    def _check(
        self, class_sizes: np.ndarray, available: np.ndarray, members_per_group: np.ndarray
    ) -> None:
        cfg = self.config
        needed = cfg.groups * cfg.classes_per_group
        if needed > len(available):
            raise ConfigError(
                f"partition (class_groups): groups * classes_per_group = {cfg.groups} * "
                f"{cfg.classes_per_group} = {needed} classes but the data has {len(available)} "
                f"classes with samples (num_classes = {len(class_sizes)}); use "
                f"groups * classes_per_group <= {len(available)}"
            )
        if cfg.num_clients < cfg.groups:
            raise ConfigError(
                f"partition (class_groups): num_clients = {cfg.num_clients} is below groups = "
                f"{cfg.groups} but each group needs at least one client; use num_clients >= "
                f"{cfg.groups} or groups <= {cfg.num_clients}"
            )
        if cfg.shuffle_classes:
            # any class may land in the largest group: check that, so no seed can fail
            candidates = available
            holders = np.full(len(available), int(members_per_group.max()))
        else:
            candidates = available[:needed]
            holders = np.repeat(members_per_group, cfg.classes_per_group)
        short = np.flatnonzero(class_sizes[candidates] < holders)
        if len(short):
            c, clients = int(candidates[short[0]]), int(holders[short[0]])
            smallest = int(class_sizes[candidates].min())
            where = "may go to a group" if cfg.shuffle_classes else "belongs to a group"
            raise ConfigError(
                f"partition (class_groups): class {c} has {int(class_sizes[c])} samples but "
                f"{where} of {clients} clients (num_clients = {cfg.num_clients}, groups = "
                f"{cfg.groups}), and each client needs at least one sample of each of its "
                f"group's classes; use num_clients <= {smallest * cfg.groups}"
            )
