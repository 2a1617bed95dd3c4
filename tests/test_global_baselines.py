"""FedProx, SCAFFOLD, q-FedAvg, server optimizers and aggregation weighting."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.algorithms.scaffold import scaffold_state
from plural.config import build
from plural.core.aggregators import aggregation_weights, capped_shares, report_count
from plural.core.algorithm import ServerState, Update
from plural.core.params import max_abs_difference, nbytes
from plural.core.rng import torch_generator
from plural.core.server_opt import ServerOptimizerSettings, server_step
from plural.core.trainer import LocalTrainer, TrainConfig, WorkBudget
from plural.data import from_arrays
from plural.report.rundir import deterministic
from tiny_config import run_algorithm as run


def same(a: plural.Results, b: plural.Results, atol: float = 0.0) -> bool:
    return max_abs_difference(a.server.params, b.server.params) <= atol


# ---- reductions -----------------------------------------------------------------------------


def test_fedprox_with_mu_zero_is_fedavg(tiny_config: dict[str, Any]) -> None:
    fedavg = run(tiny_config, {"name": "fedavg"})
    fedprox = run(tiny_config, {"name": "fedprox", "mu": 0.0})
    assert same(fedavg, fedprox)
    pd.testing.assert_frame_equal(deterministic(fedavg.metrics), deterministic(fedprox.metrics))
    assert not same(fedavg, run(tiny_config, {"name": "fedprox", "mu": 1.0}))


def test_qfedavg_with_q_zero_is_uniform_averaging(tiny_config: dict[str, Any]) -> None:
    uniform = run(tiny_config, {"name": "fedavg", "weighting": "uniform"}, rounds=3)
    qfedavg = run(tiny_config, {"name": "qfedavg", "q": 0.0}, rounds=3)
    assert same(uniform, qfedavg, atol=1e-6)
    assert not same(uniform, run(tiny_config, {"name": "qfedavg", "q": 1.0}, rounds=3), atol=1e-4)


def test_scaffold_first_round_is_fedavgs_first_step(tiny_config: dict[str, Any]) -> None:
    # Control variates start at zero, so the first round's local steps are FedAvg's.
    fedavg = run(tiny_config, {"name": "fedavg"}, rounds=1)
    scaffold = run(tiny_config, {"name": "scaffold", "server_lr": 1.0}, rounds=1)
    assert same(fedavg, scaffold)
    second = run(tiny_config, {"name": "scaffold"}, rounds=2)
    assert not same(run(tiny_config, {"name": "fedavg"}, rounds=2), second)


def test_scaffold_counts_only_the_clients_that_train(tiny_config: dict[str, Any]) -> None:
    """N in c += |S|/N mean(dc) is the clients that train: unseen clients never hold a
    control variate, so counting them would shrink every move of c."""
    clients = tiny_config["partition"]["num_clients"]
    tiny_config["split"] = {**tiny_config.get("split", {}), "unseen_clients": 0.5}
    results = run(tiny_config, {"name": "scaffold"}, rounds=1, sampling={})
    assert scaffold_state(results.server).num_clients == clients - round(0.5 * clients)


def test_fedadam_without_adaptivity_is_fedavg_with_a_server_lr(tiny_config: dict[str, Any]) -> None:
    sgd = run(tiny_config, {"name": "fedavg", "server_lr": 0.5}, rounds=3)
    adam = {
        "name": "fedavg",
        "server_optimizer": "adam",
        "server_lr": 0.5,
        "beta1": 0.0,
        "beta2": 1.0,
        "tau": 1.0,
        "initial_accumulator": 0.0,
    }
    assert same(sgd, run(tiny_config, adam, rounds=3), atol=1e-6)
    momentum = {
        "name": "fedavg",
        "server_optimizer": "momentum",
        "server_lr": 0.5,
        "server_momentum": 0.0,
    }
    assert same(sgd, run(tiny_config, momentum, rounds=3), atol=1e-6)
    assert not same(sgd, run(tiny_config, {**adam, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}))


# ---- server optimizers ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "yogi", "adagrad"])
def test_adaptive_server_steps_follow_reddi_et_al(name: str) -> None:
    s = ServerOptimizerSettings(name, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x, target = {"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([0.5, -1.0])}
    new, state = server_step(x, target, {}, s)
    delta = np.array([-0.5, 1.0])
    m = 0.1 * delta
    v = {"adam": 0.01 * delta**2, "yogi": 0.01 * delta**2, "adagrad": delta**2}[name]
    # yogi from v = 0: v - (1 - b2) d^2 sign(0 - d^2) = (1 - b2) d^2, the same as adam here
    np.testing.assert_allclose(
        new["w"].numpy(), [1.0, -2.0] + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5
    )
    again, _ = server_step(new, target, state, s)
    assert not torch.equal(again["w"], new["w"])  # the moments carry over


def test_server_state_is_checkpointed_and_resumed(tiny_config: dict[str, Any], tmp_path) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg.update(rounds=3, algorithm={"name": "fedavg", "server_optimizer": "yogi", "server_lr": 0.1})
    straight = plural.run(cfg)
    plural.run(cfg, out=tmp_path, overrides=["rounds=2"])
    resumed = plural.run(cfg, out=tmp_path, resume=True)
    assert same(straight, resumed)


# ---- weighting ------------------------------------------------------------------------------


def test_capped_shares_never_exceed_the_cap_and_keep_the_order() -> None:
    shares = capped_shares([1000, 10, 20, 30, 40], cap=0.3)
    assert shares.sum() == pytest.approx(1.0) and shares.max() <= 0.3 + 1e-12
    assert list(np.argsort(shares[1:])) == [0, 1, 2, 3]
    np.testing.assert_allclose(capped_shares([5, 5], cap=0.2), [0.5, 0.5])  # infeasible: equal
    np.testing.assert_allclose(capped_shares([1, 3], cap=1.0), [0.25, 0.75])


def test_private_counts_are_bucketed_and_noised_on_the_client() -> None:
    gen = torch.Generator().manual_seed(0)
    assert report_count(37, bucket=50, noise=0.0, rng=gen) == 50.0
    assert report_count(50, bucket=50, noise=0.0, rng=gen) == 50.0
    noisy = [report_count(100, bucket=1, noise=10.0, rng=gen) for _ in range(2000)]
    assert np.mean(noisy) == pytest.approx(100, abs=1.5) and np.std(noisy) == pytest.approx(
        10 * np.sqrt(2), rel=0.1
    )


def test_fair_weights_grow_with_loss() -> None:
    w = aggregation_weights([10, 10], "fair", losses=[1.0, 2.0], q=3.0)
    assert w[1] / w[0] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="loss"):
        aggregation_weights([10], "fair", losses=None)


@pytest.mark.parametrize(
    "weighting",
    [
        {"weighting": "capped", "weight_cap": 0.25},
        {"weighting": "private_samples", "count_bucket": 32},
        {"weighting": "fair", "fairness_q": 2.0},
    ],
)
def test_every_weighting_runs_and_changes_the_average(
    weighting: dict[str, Any], tiny_config: dict[str, Any]
) -> None:
    tiny_config["partition"] = {"name": "quantity", "num_clients": 6, "sigma": 1.5}
    base = run(tiny_config, {"name": "fedavg"})
    other = run(tiny_config, {"name": "fedprox", "mu": 0.0, **weighting})
    assert not same(base, other, atol=1e-6)


def test_qfedavg_refuses_a_weighting(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(plural.ConfigError, match="weighting"):
        run(tiny_config, {"name": "qfedavg", "weighting": "uniform"})


# ---- stragglers and SCAFFOLD state ----------------------------------------------------------


def test_stragglers_do_a_uniform_1_to_e_epochs() -> None:
    algorithm = FedAvg(build(AveragingConfig, {"stragglers": 1.0}))
    trainer = LocalTrainer(torch.nn.Linear(2, 2), TrainConfig(local_epochs=4))
    budgets = [algorithm.work_budget(trainer, torch_generator(0, 1, c, "x")) for c in range(800)]
    counts = np.bincount([b.epochs for b in budgets], minlength=5)[1:]
    assert counts.min() > 150  # each of 1..4 about 200 times
    assert all(b.complete == (b.epochs == 4) for b in budgets)
    nobody = FedAvg(build(AveragingConfig, {"stragglers": 0.0}))
    assert nobody.work_budget(trainer, torch_generator(0, 1)) == WorkBudget()


def test_dropped_stragglers_leave_the_model_alone() -> None:
    server = ServerState({"w": torch.ones(2)})
    partial = Update(10, {"w": torch.zeros(2)}, complete=False)
    dropping = FedAvg(build(AveragingConfig, {"stragglers": 0.5, "drop_stragglers": True}))
    assert dropping.aggregate(server, [partial], np.random.default_rng(0)) is server
    keeping = FedAvg(build(AveragingConfig, {"stragglers": 0.5}))
    assert torch.equal(
        keeping.aggregate(server, [partial], np.random.default_rng(0)).params["w"], torch.zeros(2)
    )


def test_scaffold_keeps_control_variates_in_the_client_store(tiny_config: dict[str, Any]) -> None:
    results = run(tiny_config, {"name": "scaffold"})
    control = scaffold_state(results.server).control
    assert set(control) == {n for n in results.server.params if "weight" in n or "bias" in n}
    assert any(float(c.abs().sum()) > 0 for c in control.values())
    fit = results.metrics.query("split == 'fit'")
    model = nbytes(results.server.params)
    assert (fit["bytes_down"] == 2 * model).all() and (fit["bytes_up"] == 2 * model).all()


# ---- behaviour on data built to show it -----------------------------------------------------

SYNTHETIC = {
    "dataset": {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "max_samples_per_device": 100},
    "partition": {"name": "natural"},
    "split": {"val": 0.0, "test": 0.1},
    "model": {"name": "logreg"},
    "train": {"lr": 0.01, "batch_size": 10},
    "sampling": {"count": 10},
    "backend": {"threads_per_worker": 1},
}


def global_train_loss(algorithm: dict[str, Any], rounds: int, epochs: int, seed: int) -> float:
    cfg = {
        **copy.deepcopy(SYNTHETIC),
        "seed": seed,
        "rounds": rounds,
        "algorithm": algorithm,
        "eval": {"every": rounds, "splits": ["train"]},
    }
    cfg["train"]["local_epochs"] = epochs
    return plural.run(cfg).summary["train"]["loss"]["weighted_mean"]


def test_fedprox_beats_fedavg_with_stragglers_on_synthetic_1_1() -> None:
    # The FedProx paper's setting: 90% of the sampled devices do only 1..E epochs; FedAvg
    # drops their work, FedProx (mu = 1) keeps it.
    fedavg = global_train_loss(
        {"name": "fedavg", "stragglers": 0.9, "drop_stragglers": True}, 20, 10, 0
    )
    fedprox = global_train_loss({"name": "fedprox", "mu": 1.0, "stragglers": 0.9}, 20, 10, 0)
    assert fedprox < 0.8 * fedavg, (fedprox, fedavg)


def test_scaffold_beats_fedavg_on_synthetic_1_1() -> None:
    fedavg = global_train_loss({"name": "fedavg"}, 15, 5, 0)
    scaffold = global_train_loss({"name": "scaffold"}, 15, 5, 0)
    assert scaffold < 0.8 * fedavg, (scaffold, fedavg)


def minority_federation(seed: int, n: int = 100, d: int = 5) -> plural.data.ArrayDataset:
    """8 clients label by the sign of x_0, 2 clients by the sign of x_1: one model cannot
    serve both, and averaging by size serves the majority."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10 * n, d)).astype(np.float32)
    client = np.repeat(np.arange(10), n)
    y = np.where(client < 8, x[:, 0] > 0, x[:, 1] > 0).astype(np.int64)
    return from_arrays(x, y, client_ids=client)


def accuracy_spread(algorithm: dict[str, Any], seed: int) -> tuple[float, float]:
    cfg = {
        "seed": seed,
        "rounds": 30,
        "partition": {"name": "natural"},
        "split": {"val": 0.0, "test": 0.3},
        "model": {"name": "logreg"},
        "algorithm": algorithm,
        "train": {"lr": 0.1, "batch_size": 10},
        "eval": {"every": 30, "splits": ["test"]},
        "backend": {"threads_per_worker": 1},
    }
    accuracy = plural.run(cfg, dataset=minority_federation(seed)).summary["test"]["accuracy"]
    return accuracy["std"], accuracy["worst10"]


@pytest.mark.parametrize(
    "fair",
    [{"name": "qfedavg", "q": 2.0}, {"name": "fedavg", "weighting": "fair", "fairness_q": 5.0}],
)
def test_qffl_lowers_the_spread_of_client_accuracy(fair: dict[str, Any]) -> None:
    seeds = (0, 1, 2)
    fedavg = np.array([accuracy_spread({"name": "fedavg"}, s) for s in seeds])
    fairer = np.array([accuracy_spread(fair, s) for s in seeds])
    assert fairer[:, 0].mean() < fedavg[:, 0].mean() - 0.03  # std over clients
    assert fairer[:, 1].mean() > fedavg[:, 1].mean()  # worst 10% of clients


def test_scaffold_with_local_momentum_does_not_diverge(tiny_config: dict[str, Any]) -> None:
    # Option II's control variate divides by the distance local SGD travels; with momentum
    # 0.9 that is ten times the plain step, and ignoring it made SCAFFOLD collapse.
    tiny_config.update(
        rounds=12,
        sampling={},
        partition={"name": "dirichlet", "num_clients": 6, "alpha": 0.3, "min_samples": 30},
        train={"lr": 0.05, "momentum": 0.9, "batch_size": 16},
        eval={"every": 12},
    )
    fedavg = run(tiny_config, {"name": "fedavg"}).summary["test"]["accuracy"]["mean"]
    scaffold = run(tiny_config, {"name": "scaffold"}).summary["test"]["accuracy"]["mean"]
    assert scaffold > fedavg - 0.05 and scaffold > 0.7, (scaffold, fedavg)


def test_weighted_mean_of_mixed_entries_equals_the_float64_sum() -> None:
    """One fused addition per update (``WeightedMean.add``) gives the float64 weighted mean of
    float32, float16, integer (BatchNorm's batch counter) and complex entries, in their
    dtypes."""
    from plural.core.aggregators import WeightedMean

    generator = torch.Generator().manual_seed(0)
    updates = [
        {
            "w": torch.randn(4, 3, generator=generator),
            "h": torch.randn(5, generator=generator).half(),
            "count": torch.tensor(3 + c),
            "z": torch.randn(2, generator=generator, dtype=torch.complex64),
        }
        for c in range(3)
    ]
    weights = [0.5, 2.0, 1.25]
    mean = WeightedMean()
    for update, weight in zip(updates, weights, strict=True):
        mean.add(update, weight)
    result = mean.result()
    for name in ("w", "h", "z"):
        wide = torch.complex128 if updates[0][name].is_complex() else torch.float64
        expected = sum(u[name].to(wide) * w for u, w in zip(updates, weights, strict=True))
        expected = expected / sum(weights)
        assert result[name].dtype == updates[0][name].dtype
        torch.testing.assert_close(result[name], expected.to(updates[0][name].dtype))
    assert result["count"].dtype == torch.int64
    assert int(result["count"]) == round((3 * 0.5 + 4 * 2.0 + 5 * 1.25) / 3.75)
