"""data_seed holds the federation fixed while seed varies; every method starts from the
same initial weights; a module passed from Python is re-initialised from the run seed."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import plural
from plural.experiment import load_config
from plural.runner import build_algorithm, build_client_models, build_federation


def federation_tensors(cfg: dict[str, Any]) -> list[torch.Tensor]:
    federation = build_federation(load_config(cfg))
    return [t for c in federation.clients for s in (c.train, c.val, c.test) for t in (s.x, s.y)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("data_seed", [0, 11])
def test_data_seed_fixes_the_federation_while_seed_varies(
    tiny_config: dict[str, Any], data_seed: int
) -> None:
    runs = [{**tiny_config, "seed": s, "data_seed": data_seed} for s in (1, 2, 3)]
    first = federation_tensors(runs[0])
    assert all(same(first, federation_tensors(cfg)) for cfg in runs[1:])
    # data_seed = seed is the federation of that seed without data_seed
    assert same(
        federation_tensors({**tiny_config, "seed": data_seed}),
        federation_tensors({**tiny_config, "seed": 5, "data_seed": data_seed}),
    )


def test_without_data_seed_the_seed_changes_the_federation(tiny_config: dict[str, Any]) -> None:
    assert not same(
        federation_tensors({**tiny_config, "seed": 1}),
        federation_tensors({**tiny_config, "seed": 2}),
    )
    assert "data_seed" not in load_config(tiny_config).to_dict()  # config.yaml unchanged
    assert load_config({**tiny_config, "data_seed": 4}).to_dict()["data_seed"] == 4


def test_data_seed_leaves_training_to_seed(tiny_config: dict[str, Any]) -> None:
    a = plural.run({**tiny_config, "seed": 1, "data_seed": 0})
    b = plural.run({**tiny_config, "seed": 2, "data_seed": 0})
    assert any(not torch.equal(a.server.params[k], b.server.params[k]) for k in a.server.params)


@pytest.mark.parametrize("seed", [0, 7])
def test_every_method_starts_from_identical_weights(tiny_config: dict[str, Any], seed: int) -> None:
    initial = []
    for name in ("fedavg", "fedprox", "local", "ditto", "ifca"):
        cfg = load_config({**tiny_config, "seed": seed, "algorithm": {"name": name}})
        federation = build_federation(cfg)
        models = build_client_models(cfg, federation, build_algorithm(cfg))
        initial.append(models.members[0].state_dict())
    for state in initial[1:]:
        for key, tensor in initial[0].items():
            assert torch.equal(state[key], tensor), key


def weights_after_no_training(
    tiny_config: dict[str, Any], module: nn.Module, **kwargs: Any
) -> dict[str, torch.Tensor]:
    cfg = {**tiny_config, "rounds": 1, "train": {"local_epochs": 0}}
    with pytest.warns(UserWarning):
        return plural.run(cfg, model=module, **kwargs).server.params


def test_a_python_module_is_reinitialised_from_the_seed(tiny_config: dict[str, Any]) -> None:
    torch.manual_seed(0)
    one = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    other = copy.deepcopy(one)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    a = weights_after_no_training(tiny_config, one)
    b = weights_after_no_training(tiny_config, other)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the user's weights do not matter
    assert not torch.equal(a["1.weight"], one.state_dict()["1.weight"])
    kept = weights_after_no_training(tiny_config, other, keep_weights=True)
    assert torch.equal(kept["1.weight"], other.state_dict()["1.weight"])
