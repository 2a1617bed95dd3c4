"""Attacks on hand-made updates: each changes the malicious updates as its paper defines, and
only those; data poisoning changes only the attackers' training data."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import norm

from plural.algorithms.clustered import ModelsMessage
from plural.config import build
from plural.core.algorithm import ModelMessage, Update
from plural.experiment import load_config
from plural.robust.attacks import (
    ModelAttack,
    alie_z,
    choose_malicious,
    make_trigger,
    min_max_update,
    poison_data,
    poison_replies,
    triggered_test,
)
from plural.robust.config import AttackConfig
from plural.runner import build_federation


def _attack(name: str, malicious: tuple[int, ...] = (3, 4), **settings: Any) -> ModelAttack:
    config = build(AttackConfig, {"name": name, "clients": list(malicious), **settings}, "attack")
    return ModelAttack(config, frozenset(malicious), seed=0)


def _deltas(n: int = 6, dim: int = 5, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(dim, generator=gen, dtype=torch.float64) + 1.0 for _ in range(n)]


def _benign(deltas: list[torch.Tensor], malicious: tuple[int, ...] = (3, 4)) -> torch.Tensor:
    return torch.stack([d for i, d in enumerate(deltas) if i not in malicious])


@pytest.mark.parametrize("seed", [0, 1])
def test_simple_attacks(seed: int) -> None:
    deltas = _deltas(seed=seed)
    clients = list(range(6))
    flipped = _attack("sign_flip").poisoned(1, clients, deltas)
    assert set(flipped) == {3, 4}
    assert all(torch.equal(flipped[i], -deltas[i]) for i in (3, 4))
    scaled = _attack("scale", scale=10.0).poisoned(1, clients, deltas)
    assert all(torch.equal(scaled[i], 10.0 * deltas[i]) for i in (3, 4))
    noise = _attack("gaussian", std=2.0).poisoned(1, clients, _deltas(dim=20000, seed=seed))
    assert not torch.equal(noise[3], noise[4])
    assert float(noise[3].std()) == pytest.approx(2.0, rel=0.05)
    again = _attack("gaussian", std=2.0).poisoned(1, clients, _deltas(dim=20000, seed=seed))
    assert torch.equal(noise[3], again[3])


def test_alie_sits_z_standard_deviations_below_the_benign_mean() -> None:
    deltas = _deltas(10, seed=2)
    clients = list(range(10))
    out = _attack("alie").poisoned(1, clients, deltas)
    benign = _benign(deltas)
    # n = 10, m = 2: s = floor(10/2 + 1) - 2 = 4 supporters, z = Phi^-1((10 - 4) / 10)
    z = float(norm.ppf(0.6))
    assert alie_z(10, 2) == pytest.approx(z)
    expected = benign.mean(0) - z * benign.std(0, unbiased=False)
    assert torch.allclose(out[3], expected) and torch.equal(out[3], out[4])
    fixed = _attack("alie", z=1.5).poisoned(1, clients, deltas)
    assert torch.allclose(fixed[3], benign.mean(0) - 1.5 * benign.std(0, unbiased=False))


def test_ipm_is_minus_epsilon_times_the_benign_mean() -> None:
    deltas = _deltas(7, seed=3)
    out = _attack("ipm", epsilon=0.5).poisoned(1, list(range(7)), deltas)
    benign = _benign(deltas)
    assert torch.allclose(out[4], -0.5 * benign.mean(0))
    # its inner product with the true mean is negative: the aggregate's descent is reversed
    assert float(out[4] @ benign.mean(0)) < 0


@pytest.mark.parametrize("seed", [0, 4])
def test_min_max_stays_within_the_benign_spread_as_far_out_as_it_can(seed: int) -> None:
    benign = torch.stack(_deltas(8, seed=seed))
    attack = min_max_update(benign)
    spread = float(torch.cdist(benign, benign).max())
    farthest = float((benign - attack).norm(dim=1).max())
    assert farthest <= spread + 1e-9
    assert farthest == pytest.approx(spread, rel=1e-6)  # gamma as large as allowed
    mu, sigma = benign.mean(0), benign.std(0, unbiased=False)
    direction = (attack - mu) / (attack - mu).norm()
    assert torch.allclose(direction, -sigma / sigma.norm())


def test_attacks_wait_for_their_start_round_and_leave_benign_clients_alone() -> None:
    deltas = _deltas()
    attack = _attack("sign_flip", start_round=3)
    assert attack.poisoned(2, list(range(6)), deltas) == {}
    assert set(attack.poisoned(3, list(range(6)), deltas)) == {3, 4}
    assert _attack("sign_flip", malicious=(9,)).poisoned(5, list(range(6)), deltas) == {}


def test_poison_replies_rewrites_updates_around_the_received_model() -> None:
    reference = {"w": torch.ones(2, 2), "steps": torch.tensor(3)}
    replies, messages = [], {}
    for cid in range(4):
        params = {"w": reference["w"] + cid, "steps": torch.tensor(3)}
        replies.append(Update(10, params))
        messages[cid] = ModelMessage(reference)
    out, count = poison_replies(
        _attack("sign_flip", (1, 3)), 1, [0, 1, 2, 3], replies, messages.get
    )
    assert count == 2
    assert out[0] is replies[0] and out[2] is replies[2]
    assert torch.equal(out[1].params["w"], reference["w"] - 1)
    assert torch.equal(out[3].params["w"], reference["w"] - 3)
    assert out[3].params["w"].dtype == torch.float32
    assert torch.equal(out[3].params["steps"], torch.tensor(3))


def test_poison_replies_uses_the_cluster_model_a_client_reports() -> None:
    models = ({"w": torch.zeros(3)}, {"w": torch.full((3,), 10.0)})
    message = ModelsMessage(models)
    replies = [
        Update(5, {"w": torch.full((3,), 11.0)}, extra={"cluster": torch.tensor(1)}),
        Update(5, {"w": torch.full((3,), 1.0)}, extra={"cluster": torch.tensor(0)}),
    ]
    out, _ = poison_replies(_attack("sign_flip", (0,)), 1, [0, 1], replies, lambda c: message)
    assert torch.equal(out[0].params["w"], torch.full((3,), 9.0))


def test_malicious_clients_are_drawn_from_the_seed() -> None:
    config = build(AttackConfig, {"name": "alie", "fraction": 0.2}, "attack")
    first = choose_malicious(config, 100, seed=1)
    assert len(first) == 20 and first == choose_malicious(config, 100, seed=1)
    assert first != choose_malicious(config, 100, seed=2)
    assert len(choose_malicious(config, 3, seed=0)) == 1  # at least one


def _federation(tiny_config: dict[str, Any], **attack: Any) -> Any:
    cfg = copy.deepcopy(tiny_config)
    cfg["attack"] = attack
    config = load_config(cfg)
    return config, build_federation(config)


def test_label_flip_poisons_only_the_attackers_training_labels(tiny_config: dict[str, Any]) -> None:
    config, clean = _federation(tiny_config, name="label_flip", clients=[1])
    poisoned = poison_data(config.attack, clean, [1], config.seed, None)
    assert torch.equal(poisoned.client(1).train.y, 9 - clean.client(1).train.y)
    assert torch.equal(poisoned.client(1).test.y, clean.client(1).test.y)
    assert torch.equal(poisoned.client(0).train.y, clean.client(0).train.y)


def test_backdoor_stamps_a_trigger_and_the_target_on_a_share_of_samples(
    tiny_config: dict[str, Any],
) -> None:
    config, clean = _federation(
        tiny_config, name="backdoor", clients=[2], target=7, poison_share=0.5, start_round=3
    )
    trigger = make_trigger(config.attack, clean)
    assert trigger.value == max(float(c.train.x.max()) for c in clean.clients)
    poisoned = poison_data(config.attack, clean, [2], config.seed, trigger)
    before, after = poisoned.client(2, 2).train, poisoned.client(2, 3).train
    assert torch.equal(before.y, clean.client(2).train.y)  # the attack starts in round 3
    changed = (after.x != before.x).flatten(1).any(1) | (after.y != before.y)
    assert int(changed.sum()) <= math.ceil(0.5 * len(before)) and int(changed.sum()) > 0
    stamped = after.x[:, :, -3:, -3:] == trigger.value
    chosen = stamped.flatten(1).all(1)
    assert int(chosen.sum()) == math.ceil(0.5 * len(before))
    assert (after.y[chosen] == 7).all()
    assert torch.equal(after.x[~chosen], before.x[~chosen])
    test = triggered_test(clean.client(0), trigger)
    assert test is not None and (test.y == 7).all()
    assert len(test) == int((clean.client(0).test.y != 7).sum())
    np.testing.assert_array_equal(
        poisoned.client(0).train.x.numpy(), clean.client(0).train.x.numpy()
    )
