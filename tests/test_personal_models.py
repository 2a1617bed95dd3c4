"""Ditto, APFL and pFedMe: reductions, personal state, and personalization on label skew."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import plural
from plural.algorithms.apfl import APFLState, Mixture
from plural.core.params import Params, max_abs_difference, nbytes
from plural.report.rundir import RunDirectory
from tiny_config import run_algorithm as run

PERSONAL = ["ditto", "apfl", "pfedme"]


def rows(results: plural.Results, split: str) -> pd.DataFrame:
    """The metric rows of ``split``, named as the plain split (to compare across runs); the
    cost columns are left out (a personal method also trains its personal model)."""
    selected = results.metrics[results.metrics["split"] == split]
    selected = selected.drop(columns=["flops", "seconds"])
    return selected.assign(split=split.split("@")[0]).reset_index(drop=True)


def tensors(state: Params | APFLState) -> Params:
    """A client's state as named tensors (APFL's alpha included)."""
    if isinstance(state, APFLState):
        return {**state.personal, "alpha": torch.tensor(state.alpha)}
    return state


# ---- reductions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "ditto", "lam": 0.1},
        {"name": "ditto", "lam": 10.0},
        {"name": "apfl"},
        {"name": "apfl", "alpha": 0.9, "alpha_lr": 0.5},
    ],
)
def test_the_global_model_is_fedavgs(
    algorithm: dict[str, Any], tiny_config: dict[str, Any]
) -> None:
    # The global part runs FedAvg's update first, with the same random draws.
    fedavg = run(tiny_config, {"name": "fedavg"}, rounds=3)
    personal = run(tiny_config, algorithm, rounds=3)
    assert max_abs_difference(fedavg.server.params, personal.server.params) == 0.0
    for split in ("test", "val", "fit"):
        pd.testing.assert_frame_equal(
            rows(fedavg, split), rows(personal, split if split == "fit" else f"{split}@global")
        )
    assert not rows(personal, "test").equals(rows(personal, "test@global"))


def test_apfl_with_alpha_fixed_at_zero_evaluates_the_global_model(
    tiny_config: dict[str, Any],
) -> None:
    results = run(tiny_config, {"name": "apfl", "alpha": 0.0, "alpha_lr": 0.0})
    pd.testing.assert_frame_equal(rows(results, "test"), rows(results, "test@global"))


def test_pfedme_with_a_huge_lambda_is_fedavg(tiny_config: dict[str, Any]) -> None:
    # With personal_lr = 1/lam (and no momentum) each inner step lands on w - grad/lam, so
    # the outer step w - eta lam (w - theta) is an SGD step of size eta: FedAvg's.
    tiny_config["train"]["momentum"] = 0.0
    fedavg = run(tiny_config, {"name": "fedavg"}, rounds=3)
    pfedme = run(tiny_config, {"name": "pfedme", "lam": 1e4, "personal_lr": 1e-4}, rounds=3)
    assert max_abs_difference(fedavg.server.params, pfedme.server.params) < 1e-3
    accuracy = rows(fedavg, "test")["accuracy"] - rows(pfedme, "test@global")["accuracy"]
    assert accuracy.abs().max() <= 0.02


def test_pfedme_beta_is_the_server_learning_rate(tiny_config: dict[str, Any]) -> None:
    beta = run(tiny_config, {"name": "pfedme", "beta": 0.5}, rounds=2)
    server_lr = run(tiny_config, {"name": "pfedme", "server_lr": 0.5}, rounds=2)
    assert max_abs_difference(beta.server.params, server_lr.server.params) == 0.0
    default = run(tiny_config, {"name": "pfedme"}, rounds=2)
    assert max_abs_difference(beta.server.params, default.server.params) > 0
    with pytest.raises(plural.ConfigError, match="beta"):
        run(tiny_config, {"name": "pfedme", "beta": 0.5, "server_lr": 0.5})


# ---- what is evaluated, sent and kept --------------------------------------------------------


@pytest.mark.parametrize("name", PERSONAL)
def test_clients_are_scored_with_both_models_and_send_only_the_global_one(
    name: str, tiny_config: dict[str, Any]
) -> None:
    results = run(tiny_config, {"name": name})
    last = results.final("test@global")
    assert sorted(last["client"]) == list(range(6))
    assert last["accuracy"].between(0, 1).all()
    assert len(results.final("val@global")) == 6
    fit = results.metrics.query("split == 'fit'")
    model = nbytes(results.server.params)
    assert (fit["bytes_up"] == model).all() and (fit["bytes_down"] == model).all()


def stored_states(run_dir: Path) -> dict[int, Params]:
    return {c: tensors(s) for c, s in RunDirectory(run_dir).load_checkpoint()["store"].items()}


@pytest.mark.parametrize("name", PERSONAL)
def test_clients_not_sampled_keep_their_state(
    name: str, tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = {**copy.deepcopy(tiny_config), "algorithm": {"name": name}}
    plural.run(cfg, out=tmp_path, overrides=["rounds=1"])
    before = stored_states(tmp_path)
    results = plural.run(cfg, out=tmp_path, overrides=["rounds=2"], resume=True)
    after = stored_states(tmp_path)
    fit = results.metrics.query("split == 'fit' and round == 2")
    sampled = set(fit["client"])
    assert sampled and sampled < set(range(6))
    assert set(after) == set(before) | sampled
    for client, state in after.items():
        if client in sampled:
            assert client not in before or max_abs_difference(before[client], state) > 0
        else:
            assert max_abs_difference(before[client], state) == 0.0


def test_apfl_learns_alpha_within_the_unit_interval(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = {**copy.deepcopy(tiny_config), "algorithm": {"name": "apfl", "alpha_lr": 1.0}}
    plural.run(cfg, out=tmp_path, overrides=["rounds=3"])
    alphas = [s.alpha for s in RunDirectory(tmp_path).load_checkpoint()["store"].values()]
    assert all(0.0 <= a <= 1.0 for a in alphas)
    assert any(a != 0.25 for a in alphas)


def test_a_mixing_weight_pushed_out_of_the_unit_interval_can_come_back() -> None:
    """APFL's alpha outside [0, 1] mixes as the boundary value but still gets its gradient
    (projected SGD lets it return at once); with a plain clamp alpha and, at 0, v stopped."""
    template = torch.nn.Linear(3, 2)
    shared = {n: torch.zeros_like(t) for n, t in template.state_dict().items()}
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    for stored, used in ((-0.3, 0.0), (1.4, 1.0), (0.6, 0.6)):
        mixture = Mixture(template, shared, alpha_grad_scale=1.0)
        with torch.no_grad():
            mixture.alpha.fill_(stored)
        assert float(mixture.mixing_weight()) == pytest.approx(used)
        loss = torch.nn.functional.cross_entropy(mixture(x), y)
        (grad,) = torch.autograd.grad(loss, [mixture.alpha])
        assert float(grad) != 0.0


# ---- personalization on pathological label skew ----------------------------------------------

PATHOLOGICAL: dict[str, Any] = {
    "seed": 0,
    "rounds": 20,
    "dataset": {"name": "digits"},
    "partition": {"name": "classes_per_client", "num_clients": 10, "classes": 2},
    "model": {"name": "mlp", "hidden": [32]},
    "train": {"lr": 0.05, "momentum": 0.5, "batch_size": 16},
    "eval": {"every": 20, "splits": ["test"]},
    "backend": {"threads_per_worker": 1},
}


@functools.cache
def mean_test_accuracy(name: str) -> float:
    """Mean over clients of the test accuracy of each client's own model (default settings)."""
    results = run(PATHOLOGICAL, {"name": name})
    return float(results.summary["test"]["accuracy"]["mean"])


@pytest.mark.parametrize("name", PERSONAL)
def test_personal_models_beat_fedavg_when_each_client_holds_two_classes(name: str) -> None:
    fedavg, personal = mean_test_accuracy("fedavg"), mean_test_accuracy(name)
    assert personal > fedavg + 0.1, (personal, fedavg)
