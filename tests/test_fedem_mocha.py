"""FedEM (Marfoq et al. 2021) and MOCHA (Smith et al. 2017): the trainer's sample weights,
mixture evaluation, MOCHA's Omega, client state, and each method's advantage on a federation
built to show it."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

import plural
from plural.algorithms.fedem import fedem_state
from plural.algorithms.mocha import mocha_state, relationship
from plural.core.params import max_abs_difference, state_of
from plural.core.trainer import LocalTrainer, Mixture, TrainConfig
from plural.data import from_arrays


def trainer() -> LocalTrainer:
    torch.manual_seed(0)
    return LocalTrainer(nn.Linear(4, 3), TrainConfig(lr=0.1, batch_size=8, local_epochs=2))


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def fit(t: LocalTrainer, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> dict[str, torch.Tensor]:
    start = state_of(t.model)
    return t.fit(start, x, y, rng=torch.Generator().manual_seed(2), **kw).params


def test_no_sample_weights_is_bit_identical_and_unit_weights_match() -> None:
    t, (x, y) = trainer(), data()
    plain = fit(t, x, y)
    assert max_abs_difference(plain, fit(trainer(), x, y, sample_weights=None)) == 0.0
    ones = fit(trainer(), x, y, sample_weights=torch.ones(len(y)))
    assert max_abs_difference(plain, ones) < 1e-6


def test_zero_sample_weights_ignore_samples() -> None:
    x, y = data()
    keep = torch.arange(len(y)) % 2 == 0
    noisy_y = torch.where(keep, y, (y + 1) % 3)
    # training on garbage labels with weight 0 equals training on the true labels
    a = fit(trainer(), x, noisy_y, sample_weights=keep.float())
    b = fit(trainer(), x, y, sample_weights=keep.float())
    assert max_abs_difference(a, b) == 0.0
    assert max_abs_difference(a, state_of(trainer().model)) > 0


def test_mixture_evaluation_matches_a_hand_computation() -> None:
    t, (x, y) = trainer(), data(10)
    first = state_of(t.model)
    second = {k: v + 0.5 for k, v in first.items()}
    weights = torch.tensor([0.3, 0.7])
    result = t.evaluate_mixture(Mixture([first, second], weights), x, y, batch_size=4)
    probs = sum(
        w * torch.softmax(x @ p["weight"].T + p["bias"], dim=1)
        for w, p in zip(weights, (first, second), strict=True)
    )
    expected = -probs[torch.arange(10), y].log().sum()
    assert abs(result.loss_sum - float(expected)) < 1e-5
    assert result.correct == int((probs.argmax(1) == y).sum()) and result.count == 10
    single = t.evaluate_mixture(Mixture([first], torch.tensor([1.0])), x, y)
    assert abs(single.loss - t.evaluate(first, x, y).loss) < 1e-5


def test_omega_is_symmetric_psd_with_trace_one() -> None:
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    omega = relationship(w, 0.1)
    assert torch.allclose(omega, omega.T)
    assert float(torch.linalg.eigvalsh(omega).min()) > 0
    assert abs(float(torch.trace(omega)) - 1.0) < 1e-12


def test_mocha_omega_after_a_run_and_non_sampled_clients_keep_their_state(
    tiny_config: dict[str, Any],
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg["algorithm"] = {"name": "mocha"}
    cfg["rounds"] = 1
    one = plural.run(cfg)
    two = plural.run(cfg, overrides=["rounds=2"])
    omega = mocha_state(two.server).omega
    assert torch.allclose(omega, omega.T) and abs(float(torch.trace(omega)) - 1) < 1e-9
    assert float(torch.linalg.eigvalsh(omega).min()) > 0
    fit_rows = two.metrics[two.metrics["split"] == "fit"]
    second = set(fit_rows[fit_rows["round"] == 2]["client"])
    first_models = mocha_state(one.server).models
    for cid, model in mocha_state(two.server).models.items():
        if cid not in second:  # kept from round 1, untouched
            assert max_abs_difference(model, first_models[cid]) == 0.0
    test = two.metrics[(two.metrics["split"] == "test") & (two.metrics["round"] == 2)]
    for cid in set(range(6)) - set(first_models) - second:  # never trained: the mean model
        assert cid in set(test["client"])


def test_fedem_non_sampled_clients_keep_uniform_weights(tiny_config: dict[str, Any]) -> None:
    from plural.algorithms.fedem import FedEM, FedEMConfig

    algorithm = FedEM(FedEMConfig(components=3))
    cfg = copy.deepcopy(tiny_config)
    cfg["algorithm"] = {"name": "fedem"}
    results = plural.run(cfg)
    mixture = algorithm.personalized(results.server, None, 0)
    assert torch.allclose(mixture.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert len(fedem_state(results.server).components) == 3
    bytes_up = results.metrics[results.metrics["split"] == "fit"]["bytes_up"]
    fedavg = plural.run(tiny_config).metrics
    assert bytes_up.max() == 3 * fedavg[fedavg["split"] == "fit"]["bytes_up"].max()


def mean_test_accuracy(config: dict[str, Any], dataset: Any) -> float:
    return float(plural.run(config, dataset=dataset).final("test")["accuracy"].mean())


def test_fedem_beats_fedavg_on_a_mixture_of_two_concepts() -> None:
    # digits with two concepts, labels y and (y + 1) mod 10, mixed 90/10 or 10/90 per client
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10, len(y))
    share = np.where(np.arange(10) % 2 == 0, 0.1, 0.9)
    labels = np.where(rng.random(len(y)) < share[ids], (y + 1) % 10, y)
    dataset = from_arrays(x, labels, client_ids=ids)
    config = {
        "seed": 0,
        "rounds": 25,
        "partition": {"name": "natural"},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"lr": 0.3, "momentum": 0.5, "batch_size": 32, "local_epochs": 3},
        "sampling": {"fraction": 1.0},
        "eval": {"every": 25},
    }
    fedavg = mean_test_accuracy({**config, "algorithm": {"name": "fedavg"}}, dataset)
    fedem = mean_test_accuracy({**config, "algorithm": {"name": "fedem", "components": 2}}, dataset)
    assert fedem > fedavg + 0.2, (fedem, fedavg)


def test_mocha_beats_local_and_fedavg_on_grouped_tasks() -> None:
    # 3 groups of 8 binary logistic-regression tasks: clients of a group share a nearby
    # optimum, groups differ; 60 samples per client, half of them for testing.
    rng = np.random.default_rng(0)
    dim, groups, per_group, n = 10, 3, 8, 60
    centers = rng.normal(size=(groups, dim)) * 2
    xs, ys, ids = [], [], []
    for c in range(groups * per_group):
        w = centers[c % groups] + 0.2 * rng.normal(size=dim)
        x = rng.normal(size=(n, dim))
        xs.append(x)
        ys.append((x @ w > 0).astype(int))
        ids.append(np.full(n, c))
    dataset = from_arrays(np.concatenate(xs), np.concatenate(ys), client_ids=np.concatenate(ids))
    config = {
        "seed": 0,
        "rounds": 30,
        "partition": {"name": "natural"},
        "model": {"name": "logreg"},
        "split": {"val": 0.1, "test": 0.5},
        "train": {"lr": 0.1, "batch_size": 16, "local_epochs": 2},
        "sampling": {"fraction": 1.0},
        "eval": {"every": 30},
    }
    accuracy = {
        name: mean_test_accuracy({**config, "algorithm": {"name": name}}, dataset)
        for name in ("local", "fedavg", "mocha")
    }
    assert accuracy["mocha"] > accuracy["local"] + 0.02, accuracy
    assert accuracy["mocha"] > accuracy["fedavg"] + 0.2, accuracy
