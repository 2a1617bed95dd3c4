"""Private runs end to end: settings errors before training, Poisson sampling, the ledger
counts what ran (also across a resume), and the summary's privacy block."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from plural.algorithms.clustered import cluster_state
from plural.algorithms.pfedlia import lia_records
from plural.config import ConfigError
from plural.core import aggregation
from plural.core.aggregation import AggregationChain, global_norm
from plural.core.server_opt import averaging
from plural.engine import vectorized
from plural.engine.sampler import sample_cohort
from plural.experiment import SamplingConfig, load_config
from plural.privacy import accountant
from plural.privacy import chain as privacy_chain
from plural.runner import run

pytest.importorskip("dp_accounting")

PRIVATE: dict[str, Any] = {
    "name": "private",
    "seed": 1,
    "rounds": 3,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 30, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "mlp", "hidden": [16]},
    "algorithm": {"name": "fedavg", "weighting": "uniform"},
    "train": {"lr": 0.1, "batch_size": 16},
    "sampling": {"fraction": 0.5, "poisson": True},
    "backend": {"threads_per_worker": 1},
    "eval": {"every": 3, "splits": ["test"]},
    "privacy": {"level": "client", "clip": 0.5, "noise_multiplier": 1.0, "delta": 1e-3},
}


def _config(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(PRIVATE)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    return config


# ---- settings errors, before any training -------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"privacy": {"level": "client", "noise_multiplier": 1.0}}, "clip: required"),
        ({"privacy": {"clip": 1.0}}, "exactly one of noise_multiplier"),
        ({"privacy": {"clip": 1.0, "noise_multiplier": 1, "epsilon": 2}}, "exactly one"),
        ({"privacy__level": "everyone"}, "privacy.level: must be one of"),
        ({"privacy__colour": 1}, "privacy.colour: unknown setting"),
        ({"sampling": {"fraction": 0.5}}, "poisson: true"),
        ({"sampling": {"count": 5}}, "poisson: true"),
        ({"sampling": {"poisson": True}}, "poisson: true needs fraction"),
        ({"algorithm": {"name": "fedavg"}}, "weighting: uniform"),
        ({"algorithm": {"name": "qfedavg"}}, "own aggregation rule"),
        ({"algorithm": {"name": "scaffold", "weighting": "uniform"}}, "control variates"),
        ({"algorithm": {"name": "pfedgraph"}}, "outside the aggregation chain"),
        (
            {"privacy": {"level": "sample", "clip": 1, "noise_multiplier": 1, "adaptive_clip": {}}},
            "adaptive_clip: applies to level client",
        ),
        (
            {
                "privacy": {"level": "sample", "clip": 1, "noise_multiplier": 1},
                "algorithm": {"name": "fedavg"},
            },
            "uniform or private_samples",
        ),
        (
            {
                "privacy": {"level": "sample", "clip": 1, "noise_multiplier": 1},
                "algorithm": {"name": "fedavg", "weighting": "private_samples"},
            },
            "count_noise > 0",
        ),
        ({"privacy__delta": 0.05}, "delta: 0.05 must be below 1/n"),
        ({"privacy": {"clip": 1.0, "epsilon": 1e-6, "delta": 1e-3}}, "cannot be reached"),
    ],
)
def test_settings_errors_before_training(
    changes: dict[str, Any], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plural.engine.loop import RoundLoop

    monkeypatch.setattr(RoundLoop, "run", _no_training)
    with pytest.raises(ConfigError, match=message):
        run(_config(**changes), out=tmp_path / "run")


def _no_training(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("training started")


def test_a_robust_aggregation_rule_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Median:
        name = "median"
        streaming = False

        def reduce(self, deltas: Any, weights: Any, rng: Any, state: Any) -> Any:
            raise AssertionError("not reached")

    monkeypatch.setattr(aggregation, "_BUILDERS", list(aggregation._BUILDERS))
    aggregation.register_chain_builder(lambda cfg: AggregationChain(reducer=Median()))
    with pytest.raises(ConfigError, match="'median' breaks the sensitivity bound"):
        run(_config())


def test_every_method_privacy_accepts_aggregates_through_the_noised_chain() -> None:
    """A method privacy does not refuse at client level must combine clients through the
    aggregation chain (where clipping and noise act), itself or through its base method:
    otherwise a calibrated epsilon would be reported for models never noised."""
    import plural.runner  # noqa: F401  (registers every algorithm)
    from plural.algorithms.finetune import Finetune
    from plural.privacy.run import REFUSED
    from plural.registry import ALGORITHMS
    from plural.robust.runtime import averages_through_chain

    for entry in ALGORITHMS:
        if entry.name in REFUSED or issubclass(entry.target, Finetune):
            continue  # fine-tuning methods average with their base method, checked itself
        assert averages_through_chain(entry.target), entry.name


def test_centered_clipping_keeps_the_noised_aggregate_as_its_center() -> None:
    """Centered clipping's center is what the server released, after privacy's noise."""
    config = load_config(_config(aggregator={"name": "centered_clip", "tau": 1.0}))
    names = [stage.name for stage in aggregation.chain_for(config).post_stages]
    assert names.index("center") == len(names) - 1 and len(names) == 2
    reordered = list(reversed(aggregation._BUILDERS))  # whatever order they registered in
    original = aggregation._BUILDERS[:]
    try:
        aggregation._BUILDERS[:] = reordered
        names = [stage.name for stage in aggregation.chain_for(config).post_stages]
        assert names[-1] == "center"
    finally:
        aggregation._BUILDERS[:] = original


# ---- Poisson sampling ---------------------------------------------------------------------


def test_poisson_sampling_draws_each_client_independently() -> None:
    config = SamplingConfig(fraction=0.3, poisson=True)
    cohorts = [sample_cohort(200, config, seed=4, round_index=r) for r in range(1, 201)]
    sizes = np.array([len(c) for c in cohorts])
    assert len(set(sizes)) > 5  # sizes vary
    # the mean size is 60 with std sqrt(200 * 0.3 * 0.7 / 200) per round average: well within
    assert abs(sizes.mean() - 60) < 3
    assert cohorts[0] == sample_cohort(200, config, seed=4, round_index=1)
    assert all(c == sorted(set(c)) for c in cohorts)


def test_an_empty_poisson_round_does_not_crash() -> None:
    config = _config(sampling={"fraction": 0.01, "poisson": True}, rounds=4)
    config["partition"]["num_clients"] = 6
    config["privacy"]["delta"] = 0.05
    results = run(config)
    assert results.summary["privacy"]["rounds_accounted"] == 4
    assert math.isfinite(results.summary["test"]["accuracy"]["mean"])


# ---- what the server sums, and the reduction to FedAvg ------------------------------------


def test_every_update_the_server_sums_has_norm_at_most_clip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[float] = []
    apply = privacy_chain.ClipUpdates.apply

    def recording(self: Any, delta: Any, weight: float, state: Any) -> Any:
        out = apply(self, delta, weight, state)
        seen.append(global_norm(out[0]))
        return out

    monkeypatch.setattr(privacy_chain.ClipUpdates, "apply", recording)
    for algorithm in ("fedavg", "fedper", "ifca"):
        seen.clear()
        config = _config(algorithm={"name": algorithm, "weighting": "uniform"})
        results = run(config)
        fits = results.metrics[results.metrics["split"] == "fit"]
        assert len(seen) == int((fits["samples"] > 0).sum()) > 0
        assert max(seen) <= 0.5 * (1 + 1e-9)
        block = results.summary["privacy"]
        assert block["covers_all_messages"] == (algorithm != "ifca")


def test_zero_noise_and_unbounded_clip_give_fedavg() -> None:
    plain = _config(sampling={}, privacy=None)
    del plain["privacy"]
    private = _config(sampling={}, privacy={"clip": 1e12, "noise_multiplier": 0.0})
    expected = run(plain).server.params
    got = run(private).server.params
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "oracle", "weighting": "uniform"},  # true groups of 15 and 14 clients
        {"name": "pfedlia", "weighting": "uniform", "clusters": 2, "warmup_rounds": 2},
    ],
)
def test_zero_noise_and_unbounded_clip_give_each_clusters_mean(algorithm: dict[str, Any]) -> None:
    """Each cluster's noised sum is divided by its own expected count (the run's expected
    cohort times the cluster's share of the clients), not by an equal split of the cohort:
    with no noise and no clipping the private run is the plain one, for unequal clusters and
    for pFedLIA's global warm-up rounds alike."""
    changes = {
        "algorithm": algorithm,
        "sampling": {},
        "partition": {"name": "dirichlet", "num_clients": 29, "alpha": 0.5, "min_samples": 20},
        "transforms": [{"name": "rotation", "groups": 2}],
    }
    plain = _config(**changes)
    del plain["privacy"]
    private = _config(**changes, privacy={"clip": 1e12, "noise_multiplier": 0.0})
    expected, got = run(plain).server, run(private).server
    for name in expected.params:
        assert torch.allclose(got.params[name], expected.params[name], atol=1e-6, rtol=0)
    models, private_models = cluster_state(expected).models, cluster_state(got).models
    assert len(models) == len(private_models) == 2
    for mine, theirs in zip(models, private_models, strict=True):
        for name in mine:
            assert torch.allclose(theirs[name], mine[name], atol=1e-6, rtol=0)


# ---- the ledger and the summary -----------------------------------------------------------


def test_client_level_summary_and_calibrated_epsilon(tmp_path: Path) -> None:
    config = _config(privacy={"clip": 0.5, "epsilon": 3.0, "delta": 1e-3})
    results = run(config, out=tmp_path / "run")
    block = json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]
    keys = ("epsilon", "delta", "accountant", "noise_multiplier", "clip", "level")
    assert set(keys) | {"privatized_parameters"} <= set(block)
    assert 2.9 < block["epsilon"] <= 3.0  # calibrated for the rounds that ran
    assert block["rounds_accounted"] == 3
    assert block["privatized_parameters"] == sorted(results.server.params)
    assert block["covers_all_messages"] and "not_privatized" not in block
    epsilons = results.diagnostics["epsilon"].tolist()
    assert epsilons == sorted(epsilons) and epsilons[-1] == block["epsilon"]


def test_adaptive_clip_runs_and_keeps_its_clip_in_the_server_state() -> None:
    privacy = {"clip": 5.0, "noise_multiplier": 1.0, "adaptive_clip": {"quantile": 0.5}}
    results = run(_config(privacy=privacy, rounds=4))
    state = averaging(results.server).aggregation
    assert isinstance(state, dict)
    assert state["noised_rounds"] == 4
    assert state["clip"] < 5.0  # updates are far smaller than 5: the clip comes down
    with pytest.raises(ConfigError, match="count_noise"):
        privacy["adaptive_clip"] = {"count_noise": 0.1}
        run(_config(privacy=privacy))


def test_personal_parameters_are_not_privatized() -> None:
    results = run(_config(algorithm={"name": "fedper", "weighting": "uniform"}))
    privatized = results.summary["privacy"]["privatized_parameters"]
    assert privatized and all(not name.startswith("3.") for name in privatized)


def _expected_steps(results: Any, batch: int) -> int:
    fits = results.metrics[results.metrics["split"] == "fit"]
    fits = fits[fits["samples"] > 0]
    return int(sum(-(-int(n) // batch) for n in fits["samples"]))


def test_sample_level_counts_every_dp_sgd_step_and_gives_each_client_its_epsilon() -> None:
    config = _config(privacy={"level": "sample", "clip": 1.0, "noise_multiplier": 1.1})
    config["privacy"]["delta"] = 1e-4
    results = run(config)
    block = results.summary["privacy"]
    assert block["steps_accounted"] == _expected_steps(results, 16) > 0
    fits = results.metrics[results.metrics["split"] == "fit"]
    assert set(block["client_epsilon"]) == {str(c) for c in fits["client"].unique()}
    assert block["epsilon"] == max(block["client_epsilon"].values())


def test_noised_counts_add_their_epsilon_at_sample_level() -> None:
    privacy = {"level": "sample", "clip": 1.0, "noise_multiplier": 1.5, "delta": 1e-4}
    algorithm = {"name": "fedavg", "weighting": "private_samples", "count_noise": 20.0}
    counted = run(_config(privacy=privacy, algorithm=algorithm, rounds=2)).summary["privacy"]
    uniform = {"name": "fedavg", "weighting": "uniform"}
    plain = run(_config(privacy=privacy, algorithm=uniform, rounds=2)).summary["privacy"]
    for client, eps in plain["client_epsilon"].items():  # each round taken adds 1 / 20
        rounds_taken = (counted["client_epsilon"][client] - eps) / (1 / 20)
        assert rounds_taken == pytest.approx(round(rounds_taken)) and 1 <= round(rounds_taken) <= 2


def test_local_level_accounts_each_client_for_its_rounds() -> None:
    config = _config(privacy={"level": "local", "clip": 0.5, "noise_multiplier": 4.0})
    results = run(config)
    fits = results.metrics[results.metrics["split"] == "fit"]
    taken = fits.groupby("client").size()
    block = results.summary["privacy"]
    eps = {int(c): e for c, e in block["client_epsilon"].items()}
    assert set(eps) == set(taken.index)
    most, least = taken.idxmax(), taken.idxmin()
    assert eps[most] >= eps[least]


@pytest.mark.parametrize("level", ["client", "sample"])
def test_resume_counts_exactly_the_rounds_and_steps_that_ran(
    level: str, tmp_path: Path, crash_after: Any
) -> None:
    privacy = {"level": level, "clip": 0.5, "noise_multiplier": 1.2, "delta": 1e-4}
    config = _config(privacy=privacy, rounds=4)
    whole = run(config, out=tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, out=tmp_path / "cut", callbacks=[crash_after(2)])
    resumed = run(config, out=tmp_path / "cut", resume=True)
    assert resumed.summary["privacy"] == whole.summary["privacy"]
    assert resumed.summary["privacy"]["rounds_accounted"] == 4
    for name, tensor in whole.server.params.items():
        assert torch.equal(resumed.server.params[name], tensor)


def test_no_privacy_section_keeps_the_config_unchanged() -> None:
    config = load_config({k: v for k, v in PRIVATE.items() if k != "privacy"})
    assert config.privacy is None and "privacy" not in config.to_dict()


@pytest.mark.parametrize(
    ("algorithm", "train"),
    [
        ({"name": "fedavg", "weighting": "uniform"}, {}),
        ({"name": "fedprox", "weighting": "uniform", "mu": 0.5}, {"momentum": 0.9}),
        ({"name": "ditto", "weighting": "uniform"}, {"local_steps": 3}),
    ],
)
def test_dp_sgd_batched_across_clients_equals_one_by_one(
    algorithm: dict[str, Any], train: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the vectorized backend batches DP-SGD across clients (vmap over clients of per-example
    # gradients); each client's Poisson samples and noise come from its own generator, so the
    # run is the sequential one up to rounding, and the accountant counts the same steps
    privacy = {"level": "sample", "clip": 0.8, "noise_multiplier": 0.7, "delta": 1e-4}
    config = _config(privacy=privacy, algorithm=algorithm, rounds=2)
    config["train"].update(train)
    config["eval"] = {"every": 1, "splits": ["train", "test"]}
    one_by_one = run(config)
    config["backend"] = {"name": "vectorized", "vectorize": "always", "threads_per_worker": 1}
    batched_clients: list[int] = []
    batched_fit = vectorized.batched_private_fit

    def counted(requests: Any) -> Any:
        batched_clients.append(len(requests))
        return batched_fit(requests)

    monkeypatch.setattr(vectorized, "batched_private_fit", counted)
    batched = run(config)
    assert batched_clients and max(batched_clients) > 1  # fits really ran batched
    assert batched.summary["privacy"] == one_by_one.summary["privacy"]
    assert batched.summary["privacy"]["steps_accounted"] > 0
    for name, tensor in one_by_one.server.params.items():
        assert torch.allclose(batched.server.params[name], tensor, atol=1e-5), name
    columns = ["round", "client", "split"]
    want = one_by_one.metrics.set_index(columns).sort_index()
    got = batched.metrics.set_index(columns).sort_index()
    assert list(got.index) == list(want.index)
    for column in ("loss", "accuracy"):
        np.testing.assert_allclose(got[column], want[column], atol=1e-5)


def test_private_votes_compose_into_the_run_budget() -> None:
    # pFedLIA's randomized-response votes cost epsilon per released vote; the client that
    # released the most adds its total to the aggregates' epsilon (basic composition)
    per_vote = 0.25
    algorithm = {
        "name": "pfedlia",
        "weighting": "uniform",
        "warmup_rounds": 2,
        "votes": "private",
        "epsilon": per_vote,
    }
    results = run(_config(algorithm=algorithm, rounds=3))
    block = results.summary["privacy"]
    (record,) = lia_records(results.server)
    released = [np.isfinite(np.asarray(row, dtype=float)).sum() for row in record["released"]]
    assert max(released) > 1
    assert block["released_epsilon"] == pytest.approx(per_vote * max(released))
    aggregate = accountant.epsilon([(1.0, 0.5, 3)], block["delta"])
    assert block["epsilon"] == pytest.approx(aggregate + block["released_epsilon"])
    assert "votes: private" in " ".join(block["not_privatized"])
