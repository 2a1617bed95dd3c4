"""Tiny digits federations and a small model for the diagnostics tests."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

import plural
from plural.core.params import Params, state_of
from plural.core.trainer import LocalTrainer
from plural.data.federated import FederatedDataset
from plural.experiment import ExperimentConfig
from plural.runner import build_federation, build_model

MakeFederation = Callable[..., FederatedDataset]
MakeTrainer = Callable[..., tuple[LocalTrainer, Params]]


def _config(partition: dict[str, Any], seed: int = 0, **extra: Any) -> ExperimentConfig:
    return plural.load_config(
        {
            "seed": seed,
            "dataset": {"name": "digits"},
            "partition": partition,
            "model": {"name": "mlp", "hidden": [8]},
            "algorithm": {"name": "fedavg"},
            "train": {"lr": 0.05, "batch_size": 16},
            **extra,
        }
    )


@functools.lru_cache(maxsize=32)
def _federation(key: str) -> FederatedDataset:
    settings = json.loads(key)
    return build_federation(_config(**settings))


@pytest.fixture
def make_federation() -> MakeFederation:
    """``make_federation(partition, seed=0, transforms=[...])``: a digits federation (cached)."""

    def make(partition: dict[str, Any], seed: int = 0, **extra: Any) -> FederatedDataset:
        return _federation(json.dumps({"partition": partition, "seed": seed, **extra}))

    return make


@pytest.fixture
def make_trainer() -> MakeTrainer:
    """``make_trainer(federation, **train)``: a trainer for an MLP (8 hidden units) on the
    federation and its initial parameters (the same for every federation of digits)."""

    def make(federation: FederatedDataset, **train: Any) -> tuple[LocalTrainer, Params]:
        cfg = _config({"name": "iid", "num_clients": 2}, train={"batch_size": 16, **train})
        model = build_model(cfg, federation)
        return LocalTrainer(model, cfg.train), state_of(model)

    return make
