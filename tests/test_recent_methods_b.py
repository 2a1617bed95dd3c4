"""Recent personalized FL methods (issue 25, second half): FedALA, pFedGraph, FedDBE, FedAS.

Each gets a reduction to a method plural already has, its exact uplink bytes, and a behaviour
test on a federation built to show its point; plus the shared helpers they use."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.algorithms.feddbe import feddbe_state
from plural.algorithms.partial import partial_state
from plural.algorithms.pfedgraph import pfedgraph_state
from plural.config import ConfigError
from plural.core.masks import top_module_names
from plural.core.params import max_abs_difference, nbytes
from plural.core.simplex import project_to_simplex
from plural.experiment import load_config
from plural.report.rundir import RunDirectory, deterministic
from plural.runner import build_federation
from tiny_config import run_algorithm as run

LABEL_SKEW: dict[str, Any] = {
    "name": "label-skew",
    "seed": 1,
    "rounds": 8,
    "dataset": {"name": "digits"},
    "partition": {"name": "classes_per_client", "num_clients": 8, "classes": 2},
    "model": {"name": "mlp", "hidden": [32]},
    "train": {"lr": 0.05, "momentum": 0.5, "batch_size": 16},
    "sampling": {"fraction": 0.5},
    "eval": {"every": 8},
    "backend": {"threads_per_worker": 1},
}


SKEWED = [(1, 8), pytest.param(2, 12, marks=pytest.mark.slow)]
"""(seed, clients) of the label-skew behaviour tests; the larger scale is marked slow."""


def skewed(seed: int, clients: int) -> dict[str, Any]:
    cfg = copy.deepcopy(LABEL_SKEW)
    cfg["seed"] = seed
    cfg["partition"]["num_clients"] = clients
    return cfg


@functools.cache
def fedavg_accuracy(seed: int, clients: int) -> float:
    """FedAvg's mean client accuracy on the label-skew federation (computed once)."""
    return mean_accuracy(run(skewed(seed, clients), {"name": "fedavg"}))


def rows(results: plural.Results, split: str) -> pd.DataFrame:
    frame = deterministic(results.metrics)
    return frame[frame["split"] == split].reset_index(drop=True)


def mean_accuracy(results: plural.Results, split: str = "test") -> float:
    last = results.final(split)
    return float(last["accuracy"].mean())


def fit_bytes(results: plural.Results) -> pd.DataFrame:
    return results.metrics.query("split == 'fit'")


# ---- shared helpers ---------------------------------------------------------------------------


def test_simplex_projection_is_the_nearest_point_of_the_simplex() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 40):
        for _ in range(20):
            v = rng.normal(0, 2, size)
            x = project_to_simplex(v)
            assert x.min() >= 0 and abs(x.sum() - 1) < 1e-12
            # Optimality: no other point of the simplex is nearer (random candidates).
            for _ in range(20):
                other = rng.dirichlet(np.ones(size))
                assert np.linalg.norm(v - x) <= np.linalg.norm(v - other) + 1e-12
    inside = np.array([0.2, 0.3, 0.5])
    assert np.allclose(project_to_simplex(inside), inside)
    with pytest.raises(ValueError, match="non-finite"):
        project_to_simplex(np.array([np.nan, 1.0]))


def test_top_module_names_takes_the_last_layers() -> None:
    names = ["0.weight", "0.bias", "1.weight", "1.bias", "2.running_mean", "3.weight", "3.bias"]
    assert top_module_names(names, 1) == {"3.weight", "3.bias"}
    assert top_module_names(names, 2) == {"3.weight", "3.bias", "2.running_mean"}
    assert top_module_names(names, 0) == set()
    assert top_module_names(names, 10) == set(names)


# ---- FedALA -----------------------------------------------------------------------------------


def test_fedala_with_weights_fixed_at_one_is_fedavg_then_local_training(
    tiny_config: dict[str, Any],
) -> None:
    fedavg = run(tiny_config, {"name": "fedavg"}, rounds=3)
    fixed = run(tiny_config, {"name": "fedala", "eta": 0.0}, rounds=3)
    assert max_abs_difference(fedavg.server.params, fixed.server.params) == 0.0
    # The global model is scored as FedAvg's; the clients' own models are their trained ones.
    ours, theirs = rows(fixed, "test@global"), rows(fedavg, "test")
    pd.testing.assert_series_equal(ours["accuracy"], theirs["accuracy"])
    assert not rows(fixed, "test")["accuracy"].equals(theirs["accuracy"])


def test_fedala_sends_the_model_and_nothing_else(tiny_config: dict[str, Any]) -> None:
    results = run(tiny_config, {"name": "fedala"}, rounds=3)
    model = nbytes(results.server.params)
    fit = fit_bytes(results)
    assert len(fit) == 3 * 3
    assert (fit["bytes_up"] == model).all() and (fit["bytes_down"] == model).all()


def test_fedala_learns_weights_in_the_unit_interval(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = {**copy.deepcopy(tiny_config), "algorithm": {"name": "fedala"}, "rounds": 4}
    cfg["sampling"] = {"fraction": 1.0}
    plural.run(cfg, out=tmp_path)
    store = RunDirectory(tmp_path).load_checkpoint()["store"]
    assert set(store) == set(range(6))
    for state in store.values():
        weights = state.weights if hasattr(state, "weights") else state["weights"]
        assert set(weights) == {"3.weight", "3.bias"}  # the classifier (layers: 1)
        values = torch.cat([w.flatten() for w in weights.values()])
        assert values.min() >= 0 and values.max() <= 1
        assert values.min() < 1  # ALA moved away from plain overwriting


def test_fedala_rejects_more_layers_than_the_model_has(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.layers: 3, but the model has only 2"):
        run(tiny_config, {"name": "fedala", "layers": 3}, rounds=1)


@pytest.mark.parametrize(("seed", "clients"), SKEWED)
def test_fedala_personalizes_under_label_skew(seed: int, clients: int) -> None:
    cfg = skewed(seed, clients)
    fedavg = fedavg_accuracy(seed, clients)
    fedala = run(cfg, {"name": "fedala"})
    assert mean_accuracy(fedala) > fedavg + 0.2
    # The global model FedALA averages is no better than FedAvg's at personalizing.
    assert mean_accuracy(fedala) > mean_accuracy(fedala, "test@global") + 0.2


# ---- pFedGraph --------------------------------------------------------------------------------


def grouped(clients: int, groups: int, seed: int) -> dict[str, Any]:
    cfg = copy.deepcopy(LABEL_SKEW)
    cfg["seed"] = seed
    per_group = 10 // groups
    cfg["partition"] = {
        "name": "class_groups",
        "num_clients": clients,
        "groups": groups,
        "classes_per_group": per_group,
    }
    cfg["sampling"] = {"fraction": 1.0}
    return cfg


def test_pfedgraph_with_the_sample_shares_as_graph_is_fedavg(tiny_config: dict[str, Any]) -> None:
    tiny_config["sampling"] = {"fraction": 1.0}
    fedavg = run(tiny_config, {"name": "fedavg"}, rounds=3)
    uniform = run(tiny_config, {"name": "pfedgraph", "alpha": 1e9, "lam": 0.0}, rounds=3)
    graph = pfedgraph_state(uniform.server).graph
    assert np.allclose(graph.sum(axis=1), 1.0)
    for model in pfedgraph_state(uniform.server).models.values():
        assert max_abs_difference(model, fedavg.server.params) < 1e-5
    assert max_abs_difference(uniform.server.params, fedavg.server.params) < 1e-5
    ours, theirs = rows(uniform, "test"), rows(fedavg, "test")
    assert (ours["accuracy"] - theirs["accuracy"]).abs().max() <= 1e-9


def test_pfedgraph_bytes_are_the_model_up_and_model_plus_direction_down(
    tiny_config: dict[str, Any],
) -> None:
    results = run(tiny_config, {"name": "pfedgraph"}, rounds=3)
    model = nbytes(results.server.params)  # float32 parameters only, like the direction
    fit = fit_bytes(results).sort_values("round")
    assert (fit["bytes_up"] == model).all()
    seen: set[int] = set()
    for _, row in fit.iterrows():
        expected = 2 * model if row["client"] in seen else model
        assert row["bytes_down"] == expected
        seen.add(row["client"])
    assert seen & set(fit[fit["round"] > 1]["client"])  # some clients came back


@pytest.mark.parametrize(("clients", "groups", "seed"), [(8, 2, 1), (12, 3, 2)])
def test_pfedgraph_weights_its_own_group_above_the_others(
    clients: int, groups: int, seed: int
) -> None:
    cfg = grouped(clients, groups, seed)
    results = run(cfg, {"name": "pfedgraph"}, rounds=3)
    graph = pfedgraph_state(results.server).graph
    truth = build_federation(load_config({**cfg, "algorithm": {"name": "pfedgraph"}})).groups
    assert truth is not None and len(set(truth)) == groups
    same = truth[:, None] == truth[None, :]
    np.fill_diagonal(same, False)
    off = ~same
    np.fill_diagonal(off, False)
    assert graph[same].mean() > 3 * graph[off].mean()
    # Every client puts most of its weight inside its own group (itself included).
    inside = np.array([graph[i, truth == truth[i]].sum() for i in range(clients)])
    assert (inside > 0.5).all()


def test_pfedgraph_rows_solve_the_graph_problem() -> None:
    from plural.algorithms.pfedgraph import graph_rows

    rng = np.random.default_rng(3)
    updates = rng.normal(size=(6, 20))
    shares = rng.dirichlet(np.ones(6))
    rows_ = graph_rows(updates, shares, alpha=0.8)
    unit = updates / np.linalg.norm(updates, axis=1, keepdims=True)
    cosine = unit @ unit.T
    difference = np.where(cosine > 0.9, -1.0, -cosine)
    for i, row in enumerate(rows_):

        def objective(a: np.ndarray, i: int = i) -> float:
            return float(0.8 * np.sum((a - shares) ** 2) + a @ difference[i])

        assert row.min() >= 0 and abs(row.sum() - 1) < 1e-12
        for _ in range(200):
            assert objective(row) <= objective(rng.dirichlet(np.ones(6))) + 1e-12


# ---- FedDBE -----------------------------------------------------------------------------------


def test_feddbe_without_prbm_and_mr_is_fedavg(tiny_config: dict[str, Any]) -> None:
    fedavg = run(tiny_config, {"name": "fedavg"}, rounds=3)
    plain = run(tiny_config, {"name": "feddbe", "prbm": False, "kappa": 0.0}, rounds=3)
    pd.testing.assert_frame_equal(deterministic(fedavg.metrics), deterministic(plain.metrics))
    assert max_abs_difference(fedavg.server.params, plain.server.params) == 0.0


def test_feddbe_bytes_and_the_personal_memory(tiny_config: dict[str, Any]) -> None:
    results = run(tiny_config, {"name": "feddbe"}, rounds=3)
    shared = nbytes(results.server.params)
    assert "prbm" not in results.server.params  # the PRBM never reaches the server
    width = 16 * 4  # the MLP's representation (hidden [16]), float32
    fit = fit_bytes(results)
    first, later = fit[fit["round"] == 1], fit[fit["round"] > 1]
    assert (first["bytes_up"] == shared + width).all() and (first["bytes_down"] == shared).all()
    assert (later["bytes_up"] == shared).all() and (later["bytes_down"] == shared + width).all()
    mean = feddbe_state(results.server).global_mean
    assert mean.shape == (16,) and float(mean.norm()) > 0


def test_feddbe_fixes_the_global_mean_after_round_one(tiny_config: dict[str, Any]) -> None:
    two = feddbe_state(run(tiny_config, {"name": "feddbe"}, rounds=2).server).global_mean
    four = feddbe_state(run(tiny_config, {"name": "feddbe"}, rounds=4).server).global_mean
    assert torch.equal(two, four)


@pytest.mark.parametrize(("seed", "clients"), SKEWED)
def test_feddbe_personal_memory_helps_under_label_skew(seed: int, clients: int) -> None:
    cfg = skewed(seed, clients)
    fedavg = fedavg_accuracy(seed, clients)
    no_memory = mean_accuracy(run(cfg, {"name": "feddbe", "prbm": False}))
    feddbe = mean_accuracy(run(cfg, {"name": "feddbe"}))
    assert feddbe > fedavg + 0.1
    assert feddbe > no_memory + 0.1  # the personal bias memory is what personalizes


# ---- FedAS ------------------------------------------------------------------------------------


def test_fedas_without_alignment_and_fisher_weights_has_fedpers_body(
    tiny_config: dict[str, Any],
) -> None:
    fedper = run(tiny_config, {"name": "fedper"}, rounds=3)
    plain = run(tiny_config, {"name": "fedas", "align_epochs": 0, "fisher": False}, rounds=3)
    assert max_abs_difference(fedper.server.params, plain.server.params) == 0.0
    ours, theirs = fit_bytes(plain), fit_bytes(fedper)
    assert ours["bytes_up"].tolist() == theirs["bytes_up"].tolist()
    assert ours["loss"].tolist() == theirs["loss"].tolist()


def test_fedas_sends_the_body_and_its_fisher_trace(tiny_config: dict[str, Any]) -> None:
    results = run(tiny_config, {"name": "fedas"}, rounds=3)
    body = nbytes(results.server.params)
    assert not {"3.weight", "3.bias"} & set(results.server.params)  # the head stays home
    fit = fit_bytes(results)
    assert (fit["bytes_up"] == body + 4).all() and (fit["bytes_down"] == body).all()


def test_fedas_rejects_a_weighting_it_would_ignore(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.weighting: 'uniform' has no effect"):
        run(tiny_config, {"name": "fedas", "weighting": "uniform"}, rounds=1)
    run(tiny_config, {"name": "fedas", "weighting": "uniform", "fisher": False}, rounds=1)


def test_fedas_weights_bodies_by_fisher_trace() -> None:
    from plural.algorithms.fedas import FISHER, FedAS, FedASConfig
    from plural.core.algorithm import Update

    updates = [
        Update(10, {}, extra={FISHER: torch.tensor(value)}) for value in (1.0, 3.0, 0.0, 4.0)
    ]
    weights = FedAS(FedASConfig()).weights(updates)
    assert np.allclose(weights, [0.125, 0.375, 0.0, 0.5])
    by_samples = FedAS(FedASConfig(fisher=False)).weights(updates)
    assert np.allclose(by_samples / by_samples.sum(), 0.25)


def test_fedas_alignment_brings_the_body_to_the_local_prototypes(
    tiny_config: dict[str, Any],
) -> None:
    from plural.algorithms.fedas import FedAS, FedASConfig, PrototypeAlignment
    from plural.core.prototypes import class_prototypes
    from plural.core.rng import torch_generator
    from plural.core.trainer import LocalTrainer

    parsed = load_config({**tiny_config, "algorithm": {"name": "fedas"}})
    federation = build_federation(parsed)
    client = federation.clients[0]
    model = plural.runner.build_model(parsed, federation)
    trainer = LocalTrainer(model, parsed.train)
    start = {n: t.clone() for n, t in model.state_dict().items()}
    rng = torch_generator(0, "test")
    local = trainer.fit(start, client.train.x, client.train.y, rng=rng, epochs=5).params
    received = {n: t for n, t in start.items() if not n.startswith("3.")}
    prototypes, counts = class_prototypes(trainer, local, client.train.x, client.train.y, 10)
    alignment = PrototypeAlignment(prototypes, counts > 0)

    def misfit(body: dict[str, torch.Tensor]) -> float:
        model.load_state_dict({**local, **body})
        with torch.no_grad():
            return float(alignment(model, client.train.x, client.train.y))

    for epochs in (1, 3):
        algorithm = FedAS(FedASConfig(align_epochs=epochs, align_lr=0.05))
        aligned = algorithm.aligned_body(received, local, client, trainer, rng)
        assert set(aligned) == set(received)
        assert misfit(aligned) < 0.9 * misfit(received)


@pytest.mark.parametrize(("seed", "clients"), SKEWED)
def test_fedas_personalizes_under_label_skew(seed: int, clients: int) -> None:
    cfg = skewed(seed, clients)
    fedavg = fedavg_accuracy(seed, clients)
    fedas = run(cfg, {"name": "fedas"})
    assert mean_accuracy(fedas) > fedavg + 0.2


# ---- FedCP ------------------------------------------------------------------------------------


def test_fedcp_sends_body_policy_and_global_head(tiny_config: dict[str, Any]) -> None:
    results = run(tiny_config, {"name": "fedcp"}, rounds=3)
    shared = results.server.params
    assert {n.split(".")[0] for n in shared} == {"body", "global_head", "policy"}
    fit = fit_bytes(results)
    assert (fit["bytes_up"] == nbytes(shared)).all() and (fit["bytes_down"] == nbytes(shared)).all()
    # 16 hidden features: policy 16x32 + 32 and LayerNorm 2x32; global head 16x10 + 10.
    assert (
        nbytes(shared) - nbytes({n: t for n, t in shared.items() if n.startswith("body.")})
        == ((16 * 32 + 32 + 64) + (16 * 10 + 10)) * 4
    )


def test_fedcp_client_keeps_its_head_and_sends_the_mixed_global_head(
    tiny_config: dict[str, Any],
) -> None:
    from plural.algorithms.fedcp import ConditionalPolicyModel
    from plural.core.algorithm import FederationInfo
    from plural.core.params import state_of
    from plural.core.rng import numpy_rng, torch_generator
    from plural.core.trainer import LocalTrainer
    from plural.runner import build_algorithm, build_client_models

    parsed = load_config({**tiny_config, "algorithm": {"name": "fedcp"}})
    federation = build_federation(parsed)
    algorithm = build_algorithm(parsed)
    model = build_client_models(parsed, federation, algorithm).members[0]
    assert isinstance(model, ConditionalPolicyModel)
    params = state_of(model)
    info = FederationInfo(
        6, 10, federation.input_shape, None, tuple(n for n, _ in model.named_parameters())
    )
    server = algorithm.init(params, info, numpy_rng(0, "init"))
    assert set(partial_state(server).personal) == {"context", "head.weight", "head.bias"}
    trainer = LocalTrainer(model, parsed.train)
    message = algorithm.broadcast(server)
    update, state = algorithm.client_update(
        message, None, federation.clients[0], trainer, torch_generator(0, "t")
    )
    head = state["head.weight"]
    assert max_abs_difference({"w": head}, {"w": params["head.weight"]}) > 0  # it trained
    expected = 0.5 * head + 0.5 * params["global_head.weight"]  # the global head is frozen
    assert torch.allclose(update.params["global_head.weight"], expected)
    assert torch.allclose(state["context"], head.sum(dim=0))
    personal, shared = model.split(torch.randn(5, 16))
    assert torch.allclose(personal + shared, torch.ones(5, 16))


@pytest.mark.parametrize(("seed", "clients"), SKEWED)
def test_fedcp_personalizes_under_label_skew(seed: int, clients: int) -> None:
    cfg = skewed(seed, clients)
    fedavg = fedavg_accuracy(seed, clients)
    assert mean_accuracy(run(cfg, {"name": "fedcp"})) > fedavg + 0.2


# ---- GPFL -------------------------------------------------------------------------------------


def test_gpfl_sends_body_embeddings_and_valve(tiny_config: dict[str, Any]) -> None:
    results = run(tiny_config, {"name": "gpfl"}, rounds=3)
    shared = results.server.params
    assert {n.split(".")[0] for n in shared} == {"body", "gce", "cov"}
    fit = fit_bytes(results)
    assert (fit["bytes_up"] == nbytes(shared)).all() and (fit["bytes_down"] == nbytes(shared)).all()
    # 10 embeddings of width 16; gamma and beta: 16x16 + 16 and LayerNorm 2x16 each.
    extra = nbytes({n: t for n, t in shared.items() if not n.startswith("body.")})
    assert extra == (10 * 16 + 2 * (16 * 16 + 16 + 32)) * 4


def test_gpfl_conditional_inputs_come_from_the_trained_embeddings(
    tiny_config: dict[str, Any],
) -> None:
    from plural.core.algorithm import FederationInfo
    from plural.core.params import state_of
    from plural.core.rng import numpy_rng, torch_generator
    from plural.core.trainer import LocalTrainer
    from plural.runner import build_algorithm, build_client_models

    parsed = load_config({**tiny_config, "algorithm": {"name": "gpfl"}})
    federation = build_federation(parsed)
    algorithm = build_algorithm(parsed)
    model = build_client_models(parsed, federation, algorithm).members[0]
    params = state_of(model)
    assert float(params["personal_input"].abs().sum()) == 0  # zeros before the first round
    names = tuple(n for n, _ in model.named_parameters())
    server = algorithm.init(
        params, FederationInfo(6, 10, federation.input_shape, None, names), numpy_rng(0, "i")
    )
    trainer = LocalTrainer(model, parsed.train)
    for cid in (0, 3):
        client = federation.clients[cid]
        update, state = algorithm.client_update(
            algorithm.broadcast(server), None, client, trainer, torch_generator(0, str(cid))
        )
        embeddings = update.params["gce.weight"]
        shares = torch.bincount(client.train.y, minlength=10).float() / len(client.train.y)
        assert torch.allclose(state["personal_input"], shares @ embeddings)
        assert torch.allclose(state["generic_input"], embeddings.mean(dim=0))
        assert (
            max_abs_difference({"e": embeddings}, {"e": server.params["gce.weight"]}) > 0
        )  # the embeddings trained


@pytest.mark.parametrize(("seed", "clients"), SKEWED)
def test_gpfl_personalizes_under_label_skew(seed: int, clients: int) -> None:
    cfg = skewed(seed, clients)
    fedavg = fedavg_accuracy(seed, clients)
    assert mean_accuracy(run(cfg, {"name": "gpfl"})) > fedavg + 0.2
