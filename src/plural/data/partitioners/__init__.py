"""Partitioners: how a pool of samples is split among federated clients.

Every partitioner is registered in :data:`plural.registry.PARTITIONERS` with a frozen config
dataclass when this package is imported. ``split(data, rng=...)`` is pure: all randomness
comes from ``rng``. Every returned :class:`~plural.data.types.Partition` holds each sample
index at most once, no empty client, and sorted int64 index arrays. Requests that the data
cannot satisfy raise :class:`~plural.config.ConfigError` before any heavy work.

All label partitioners reduce to one step, :func:`_partition_from_owner`, fed by a per-sample
owner array; the label-skew ones build that array from a per-client, per-class count matrix
(:func:`_owner_from_counts`). Label skew and quantity skew combine in ``dirichlet`` with
``sizes="lognormal"`` or ``"power_law"`` (the quantity partitioner's size laws).

One module per kind: ``iid``, ``dirichlet`` (with ``margins``, its margin fitting for size
laws), ``pathological``, ``classes_per_client``, ``class_groups``, ``quantity`` and
``natural``; ``common`` holds the helpers they share and ``train_val_test`` each client's
split into train, validation and test.
"""

from plural.data.partitioners.class_groups import ClassGroupsConfig, ClassGroupsPartitioner
from plural.data.partitioners.classes_per_client import (
    ClassesPerClientConfig,
    ClassesPerClientPartitioner,
)
from plural.data.partitioners.common import _apportion as _apportion
from plural.data.partitioners.common import _dirichlet as _dirichlet
from plural.data.partitioners.common import _law_sizes as _law_sizes
from plural.data.partitioners.common import _owner_from_counts as _owner_from_counts
from plural.data.partitioners.common import _partition_from_owner as _partition_from_owner
from plural.data.partitioners.dirichlet import DirichletConfig, DirichletPartitioner
from plural.data.partitioners.dirichlet import _repair_minimum as _repair_minimum
from plural.data.partitioners.iid import IIDConfig, IIDPartitioner
from plural.data.partitioners.margins import _FIT_TOL as _FIT_TOL
from plural.data.partitioners.margins import _fit_margins as _fit_margins
from plural.data.partitioners.margins import _repair_rows as _repair_rows
from plural.data.partitioners.margins import _round_margins as _round_margins
from plural.data.partitioners.natural import NaturalConfig, NaturalPartitioner
from plural.data.partitioners.pathological import PathologicalConfig, PathologicalPartitioner
from plural.data.partitioners.quantity import QuantityConfig, QuantityPartitioner
from plural.data.partitioners.train_val_test import _split_totals as _split_totals
from plural.data.partitioners.train_val_test import sequential_split, train_val_test_split

__all__ = [
    "ClassGroupsConfig",
    "ClassGroupsPartitioner",
    "ClassesPerClientConfig",
    "ClassesPerClientPartitioner",
    "DirichletConfig",
    "DirichletPartitioner",
    "IIDConfig",
    "IIDPartitioner",
    "NaturalConfig",
    "NaturalPartitioner",
    "PathologicalConfig",
    "PathologicalPartitioner",
    "QuantityConfig",
    "QuantityPartitioner",
    "sequential_split",
    "train_val_test_split",
]
