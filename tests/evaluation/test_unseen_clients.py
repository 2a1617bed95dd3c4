"""Unseen clients never train and are served as newcomers; their rows carry unseen == True
and summary.json summarises them apart (test_unseen)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import plural
from plural.algorithms.clustered import cluster_state
from plural.algorithms.pfedlia import lia_records
from plural.config import ConfigError
from plural.core.trainer import LocalTrainer
from plural.experiment import load_config
from plural.report.compare import run_results
from plural.report.runs import RunRecord
from plural.runner import build_algorithm, build_client_models, build_federation


def with_unseen(tiny_config: dict[str, Any], share: float, **overrides: Any) -> dict[str, Any]:
    cfg = {**tiny_config, "rounds": 3, "sampling": {"fraction": 1.0}, **overrides}
    cfg["split"] = {"unseen_clients": share}
    return cfg


def trainer_and_federation(cfg: dict[str, Any]) -> tuple[LocalTrainer, Any]:
    parsed = load_config(cfg)
    federation = build_federation(parsed)
    models = build_client_models(parsed, federation, build_algorithm(parsed))
    return LocalTrainer(models.members[0], parsed.train), federation


def newcomers_of(
    tiny_config: dict[str, Any], algorithm: dict[str, Any]
) -> tuple[Any, LocalTrainer, Any, Any]:
    """A run of ``algorithm`` with half the clients unseen: its results, a trainer, the
    federation and the last round's test rows by client."""
    cfg = with_unseen(tiny_config, 0.5, algorithm=algorithm)
    results = plural.run(cfg)
    trainer, federation = trainer_and_federation(cfg)
    return results, trainer, federation, results.final("test").set_index("client")


@pytest.mark.parametrize(("share", "clients", "seed"), [(0.2, 6, 3), (0.5, 10, 8)])
def test_unseen_clients_never_train_and_are_scored_apart(
    tiny_config: dict[str, Any], tmp_path: Path, share: float, clients: int, seed: int
) -> None:
    partition = {**tiny_config["partition"], "num_clients": clients}
    cfg = with_unseen(tiny_config, share, partition=partition, seed=seed)
    results = plural.run(cfg, out=tmp_path / "run")
    federation = build_federation(load_config(cfg))
    unseen = set(federation.unseen)
    assert len(unseen) == round(share * clients) >= 1
    metrics = results.metrics
    fit = metrics[metrics["split"] == "fit"]
    assert not set(fit["client"]) & unseen  # never sampled, though fraction is 1
    assert set(fit["client"]) == set(range(clients)) - unseen
    test = metrics[metrics["split"] == "test"]
    assert (test["unseen"] == test["client"].isin(unseen)).all()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_unseen"]["accuracy"]["clients"] == len(unseen)
    assert summary["test"]["accuracy"]["clients"] == clients - len(unseen)
    compared = run_results(RunRecord.load(tmp_path / "run"))  # plural compare's figures
    assert compared["clients"] == clients - len(unseen)
    assert compared["mean"] == pytest.approx(summary["test"]["accuracy"]["mean"])
    # FedAvg serves a newcomer the global model
    trainer, federation = trainer_and_federation(cfg)
    last = results.final("test").set_index("client")
    for cid in unseen:
        data = federation.client(cid).test
        expected = trainer.evaluate(results.server.params, data.x, data.y).accuracy
        assert last.loc[cid, "accuracy"] == expected


def test_clustered_newcomers_join_the_cluster_that_fits_their_training_data(
    tiny_config: dict[str, Any],
) -> None:
    results, trainer, federation, last = newcomers_of(tiny_config, {"name": "ifca", "k": 3})
    models = cluster_state(results.server).models
    # the server never clusters them: no cluster recorded for an unseen client
    assignment = cluster_state(results.server).assignment
    assert (assignment[list(federation.unseen)] == -1).all()
    assert (
        assignment[[c for c in range(len(assignment)) if c not in federation.unseen]] >= 0
    ).all()
    for cid in federation.unseen:
        client = federation.client(cid)
        losses = [trainer.evaluate(m, client.train.x, client.train.y).loss for m in models]
        best = models[min(range(len(models)), key=losses.__getitem__)]
        expected = trainer.evaluate(best, client.test.x, client.test.y).accuracy
        assert last.loc[cid, "accuracy"] == expected


def test_unseen_share_must_leave_clients_on_both_sides(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unseen_clients"):
        build_federation(load_config(with_unseen(tiny_config, 0.05)))
    with pytest.raises(ConfigError, match="unseen_clients"):
        load_config(with_unseen(tiny_config, 1.0))


def test_runs_without_unseen_clients_have_no_unseen_column(tiny_config: dict[str, Any]) -> None:
    results = plural.run(tiny_config)
    assert "unseen" not in results.metrics.columns and "test_unseen" not in results.summary


@pytest.mark.parametrize("seed", [3, 5])
def test_fedper_newcomers_get_a_new_head_fitted_on_their_training_split(
    tiny_config: dict[str, Any], seed: int
) -> None:
    """FedPer-style methods serve a newcomer the shared body with a personal head fitted on
    its own training split: far better on label-skewed clients than the untrained head."""
    cfg = with_unseen(tiny_config, 0.5, algorithm={"name": "fedper"}, seed=seed, rounds=4)
    results = plural.run(cfg)
    trainer, federation = trainer_and_federation(cfg)
    shared = results.server.params
    untrained_head = {**trainer.initial_params, **shared}
    last = results.final("test").set_index("client")
    gains = []
    for cid in federation.unseen:
        client = federation.client(cid)
        before = trainer.evaluate(untrained_head, client.test.x, client.test.y).accuracy
        gains.append(last.loc[cid, "accuracy"] - before)
    assert sum(gains) / len(gains) > 0.05, gains  # measured: 0.13 and 0.22


def _every_demo_method() -> list[str]:
    from plural.cli import demo_algorithms

    return demo_algorithms()


@pytest.mark.parametrize("name", _every_demo_method())
def test_every_method_runs_with_a_server_set_and_unseen_clients(
    tiny_config: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each method trains only the clients that take part, scores the unseen ones apart, and
    (where it has a server model) the server's test set: no method crashes on either."""
    import warnings

    from plural.cli import demo_settings
    from plural.engine.context import EngineRoundContext

    trained: set[int] = set()
    stream = EngineRoundContext.stream

    def recording(self: Any, phase: str, cohort: Any, *args: Any, **kwargs: Any) -> Any:
        if phase == "client_update":
            trained.update(cohort)
        return stream(self, phase, cohort, *args, **kwargs)

    monkeypatch.setattr(EngineRoundContext, "stream", recording)
    cfg = with_unseen(tiny_config, 0.3, algorithm={"name": name, **demo_settings(name, 3)})
    cfg["partition"] = {**cfg["partition"], "num_clients": 8}
    cfg["split"]["server"] = 0.1
    cfg["eval"] = {"every": 3}
    if name == "pfedlia":
        cfg["algorithm"]["warmup_rounds"] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = plural.run(cfg)
    unseen = set(build_federation(load_config(cfg)).unseen)
    assert trained and not trained & unseen
    metrics = results.metrics
    test = metrics[metrics["split"] == "test"]
    assert set(test.loc[test["unseen"].astype(bool), "client"]) == unseen
    assert test["accuracy"].notna().all()
    server = metrics[metrics["split"] == "server"]
    unused = any("split.server" in str(w.message) for w in caught)
    declared_none = not build_algorithm(load_config(cfg)).has_server_model
    assert server.empty == (unused or declared_none)  # never silently missing
    if not server.empty:
        assert server["accuracy"].between(0, 1).all()


def _recording(phase: str, original: Any, asked: dict[str, set[int]]) -> Any:
    def recording(self: Any, message: Any, state: Any, client: Any, *rest: Any) -> Any:
        asked[phase].add(client.client_id)
        return original(self, message, state, client, *rest)

    return recording


def test_pfedlia_never_trains_scores_or_clusters_unseen_clients(
    tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plural.algorithms.pfedlia import PFedLIA

    asked: dict[str, set[int]] = {"lazy_train": set(), "score": set()}
    for phase in asked:
        monkeypatch.setattr(PFedLIA, phase, _recording(phase, getattr(PFedLIA, phase), asked))
    cfg = with_unseen(tiny_config, 0.3, algorithm={"name": "pfedlia", "warmup_rounds": 1})
    cfg["partition"] = {**cfg["partition"], "num_clients": 10}
    results = plural.run(cfg)
    unseen = set(build_federation(load_config(cfg)).unseen)
    taking_part = set(range(10)) - unseen
    assert asked["lazy_train"] == asked["score"] == taking_part
    for record in lia_records(results.server):
        assert set(record["lazy_clients"]) <= taking_part
    assignment = results.diagnostics.iloc[-1]["assignment"]
    assert all(assignment[c] == -1 for c in unseen)  # ARI counts the clients that trained


def test_fedem_newcomers_fit_their_mixture_weights_on_their_training_data(
    tiny_config: dict[str, Any],
) -> None:
    from plural.algorithms.fedem import NEWCOMER_EM_STEPS, fedem_state, responsibilities, uniform
    from plural.core.trainer import Mixture

    fedem = {"name": "fedem", "components": 3}
    results, trainer, federation, last = newcomers_of(tiny_config, fedem)
    components = list(fedem_state(results.server).components)
    for cid in federation.unseen:
        client = federation.client(cid)
        losses = torch.stack(
            [trainer.sample_losses(c, client.train.x, client.train.y) for c in components], 1
        )
        pi = uniform(3)
        for _ in range(NEWCOMER_EM_STEPS):
            pi = responsibilities(losses, pi).mean(dim=0)
        assert not torch.allclose(pi, uniform(3), atol=1e-3)  # weights of its own
        mixture = Mixture(components, pi)
        expected = trainer.evaluate_mixture(mixture, client.test.x, client.test.y).accuracy
        assert last.loc[cid, "accuracy"] == pytest.approx(expected)


def _label_skew_with_unseen(
    tiny_config: dict[str, Any], algorithm: str, seed: int, clients: int
) -> tuple[Any, LocalTrainer, Any, Any]:
    """A run of ``algorithm`` on ``clients`` clients of two digits each, 30% unseen: its
    results, a trainer, the federation and the algorithm."""
    from tiny_config import two_classes_per_client

    cfg = dict(tiny_config)
    two_classes_per_client(cfg, seed, clients, 15)
    cfg.update(algorithm={"name": algorithm}, split={"unseen_clients": 0.3})
    results = plural.run(cfg)
    trainer, federation = trainer_and_federation(cfg)
    return results, trainer, federation, build_algorithm(load_config(cfg))


@pytest.mark.parametrize(("seed", "clients"), [(7, 20), (4, 30)])
def test_pfedhn_newcomers_get_an_embedding_fitted_with_the_hypernetwork_frozen(
    tiny_config: dict[str, Any], seed: int, clients: int
) -> None:
    from plural.algorithms.pfedhn import pfedhn_state

    results, trainer, federation, pfedhn = _label_skew_with_unseen(
        tiny_config, "pfedhn", seed, clients
    )
    frozen = {n: t.clone() for n, t in pfedhn_state(results.server).hypernetwork.items()}
    last = results.final("test").set_index("client")
    gains = []
    for cid in federation.unseen:
        client = federation.client(cid)
        untrained = {**trainer.initial_params, **pfedhn.generate(results.server, cid)}
        before = trainer.evaluate(untrained, client.test.x, client.test.y).accuracy
        served = pfedhn.newcomer(results.server, client, trainer, torch.Generator())
        after = trainer.evaluate(served, client.test.x, client.test.y).accuracy
        assert last.loc[cid, "accuracy"] == after  # what the run recorded
        gains.append(after - before)
    hypernetwork = pfedhn_state(results.server).hypernetwork
    assert all(torch.equal(frozen[n], hypernetwork[n]) for n in frozen)  # only v moved
    assert sum(gains) / len(gains) > 0.15, gains  # measured: 0.31 and 0.37


@pytest.mark.parametrize(("seed", "clients"), [(3, 10), (5, 10)])
def test_fedfomo_newcomers_take_fedfomos_first_step_with_random_models(
    tiny_config: dict[str, Any], seed: int, clients: int
) -> None:
    from plural.algorithms.fedfomo import fedfomo_state
    from plural.core.rng import torch_generator

    results, trainer, federation, fedfomo = _label_skew_with_unseen(
        tiny_config, "fedfomo", seed, clients
    )
    last = results.final("test").set_index("client")
    round_index = int(results.metrics["round"].max())
    gains = []
    for cid in federation.unseen:
        client = federation.client(cid)
        rng = torch_generator(seed, round_index, "newcomer", cid)
        served = fedfomo.newcomer(results.server, client, trainer, rng)
        after = trainer.evaluate(served, client.test.x, client.test.y).accuracy
        assert last.loc[cid, "accuracy"] == after  # what the run recorded
        initial = trainer.evaluate(trainer.initial_params, client.test.x, client.test.y)
        gains.append(after - initial.accuracy)
    assert sum(gains) / len(gains) > 0.3, gains  # measured: 0.65 and 0.93
    kept = fedfomo_state(results.server)
    nobody = results.server.with_parts(
        dataclasses.replace(kept, uploaded=torch.zeros(clients, dtype=torch.bool))
    )
    client = federation.client(federation.unseen[0])
    assert fedfomo.newcomer(nobody, client, trainer, torch.Generator()) is None
