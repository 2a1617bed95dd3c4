"""The conformance table: every registered algorithm must pass these on tiny data.

A new algorithm adds one row to ALGORITHM_SETTINGS if it needs non-default settings.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.core.algorithm import FederationInfo
from plural.core.masks import norm_layer_names
from plural.core.params import max_abs_difference, state_of
from plural.core.rng import numpy_rng
from plural.engine.backends import ClientWork, WorkerEnv, WorkerSetup, run_client_phase
from plural.experiment import load_config
from plural.registry import ALGORITHMS
from plural.report.rundir import deterministic
from plural.runner import build_algorithm, build_client_models, build_federation, build_model

ALGORITHM_SETTINGS: dict[str, dict[str, Any]] = {
    # The tiny runs have 2-3 rounds: cluster after one warm-up round.
    "pfedlia": {"warmup_rounds": 1},
}
# Algorithms that need another model than the tiny config's plain MLP.
MODEL: dict[str, dict[str, Any]] = {"fedbn": {"name": "mlp", "hidden": [16], "batch_norm": True}}

NAMES = ALGORITHMS.names()


def config_for(name: str, base: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["algorithm"] = {"name": name, **ALGORITHM_SETTINGS.get(name, {})}
    cfg["model"] = MODEL.get(name, cfg["model"])
    return cfg


def assert_same_results(a: plural.Results, b: plural.Results) -> None:
    pd.testing.assert_frame_equal(deterministic(a.metrics), deterministic(b.metrics))
    pd.testing.assert_frame_equal(a.diagnostics, b.diagnostics)
    assert max_abs_difference(a.server.params, b.server.params) == 0.0


def test_every_algorithm_has_a_row_or_runs_on_defaults() -> None:
    assert {"fedavg", "local"} <= set(NAMES)
    assert set(ALGORITHM_SETTINGS) <= set(NAMES) and set(MODEL) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_results(name: str, tiny_config: dict[str, Any]) -> None:
    cfg = config_for(name, tiny_config)
    first = plural.run(cfg)
    second = plural.run(cfg)
    assert_same_results(first, second)
    evaluated = first.metrics[first.metrics["split"] == "test"]
    assert evaluated["accuracy"].between(0, 1).all()
    assert set(evaluated["client"]) == set(range(6))


@pytest.mark.parametrize("name", NAMES)
def test_server_state_is_made_of_typed_frozen_parts(name: str, tiny_config: dict[str, Any]) -> None:
    """``ServerState.extra`` holds one frozen dataclass per component, each under its class's
    ``KEY``: no loose string-keyed values, and a part cannot be changed in place."""
    server = plural.run(config_for(name, tiny_config)).server
    for key, part in server.extra.items():
        assert dataclasses.is_dataclass(part) and not isinstance(part, type), (name, key, part)
        assert key == type(part).KEY, (name, key)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, dataclasses.fields(part)[0].name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.params = {}  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_another_seed_gives_other_results(name: str, tiny_config: dict[str, Any]) -> None:
    cfg = config_for(name, tiny_config)
    other = plural.run(cfg, overrides=["seed=4"])
    assert not plural.run(cfg).metrics.equals(other.metrics)


@pytest.mark.parametrize("name", NAMES)
def test_process_backend_equals_sequential(name: str, tiny_config: dict[str, Any]) -> None:
    cfg = config_for(name, tiny_config)
    sequential = plural.run(cfg)
    parallel = plural.run(cfg, overrides=["backend.name=process", "backend.workers=2"])
    assert_same_results(sequential, parallel)


@pytest.mark.ray
@pytest.mark.parametrize("name", NAMES)
def test_ray_backend_equals_sequential(
    name: str, tiny_config: dict[str, Any], ray_instance: Any
) -> None:
    cfg = config_for(name, tiny_config)
    sequential = plural.run(cfg)
    on_ray = plural.run(cfg, overrides=["backend.name=ray", "backend.workers=2"])
    assert_same_results(sequential, on_ray)


@pytest.mark.parametrize("name", NAMES)
def test_vectorized_backend_agrees_with_sequential(name: str, tiny_config: dict[str, Any]) -> None:
    """Batched fits match one-by-one fits up to float rounding (summation order differs)."""
    cfg = config_for(name, tiny_config)
    sequential = plural.run(cfg)
    vectorized = plural.run(cfg, overrides=["backend.name=vectorized", "backend.vectorize=always"])
    assert_close_results(sequential, vectorized)


def assert_close_results(a: plural.Results, b: plural.Results, tol: float = 1e-4) -> None:
    keys = ["round", "client", "split"]
    ma = deterministic(a.metrics).sort_values(keys).reset_index(drop=True)
    mb = deterministic(b.metrics).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(ma[keys], mb[keys])
    for column in ("loss", "accuracy", "samples", "bytes_up", "bytes_down"):
        pd.testing.assert_series_equal(ma[column], mb[column], check_exact=False, atol=tol)
    assert max_abs_difference(a.server.params, b.server.params) < tol


@pytest.mark.parametrize("name", NAMES)
def test_resume_equals_uninterrupted(
    name: str, tiny_config: dict[str, Any], tmp_path, crash_after
) -> None:
    cfg = config_for(name, tiny_config)
    cfg["rounds"] = 3
    cfg["diagnostics"] = {"gradient_every": 2}
    uninterrupted = plural.run(cfg, out=tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        plural.run(cfg, out=tmp_path / "resumed", callbacks=[crash_after(2)])
    resumed = plural.run(cfg, out=tmp_path / "resumed", resume=True)
    assert_same_results(uninterrupted, resumed)
    for key in ("test", "val", "bytes"):
        assert resumed.summary[key] == uninterrupted.summary[key]


@pytest.mark.parametrize("name", NAMES)
def test_run_does_not_mutate_its_inputs(name: str, tiny_config: dict[str, Any]) -> None:
    cfg = config_for(name, tiny_config)
    frozen_cfg = copy.deepcopy(cfg)
    parsed = load_config(cfg)
    federation = build_federation(parsed)
    model = build_model(parsed, federation)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data_before = [(c.train.x.clone(), c.train.y.clone()) for c in federation.clients]
    plural.run(cfg, dataset=federation, model=model)
    assert cfg == frozen_cfg
    assert max_abs_difference(before, model.state_dict()) == 0.0
    for (x, y), client in zip(data_before, federation.clients, strict=True):
        assert torch.equal(x, client.train.x) and torch.equal(y, client.train.y)


@pytest.mark.parametrize("name", NAMES)
def test_client_update_does_not_mutate_message_or_state(
    name: str, tiny_config: dict[str, Any]
) -> None:
    parsed = load_config(config_for(name, tiny_config))
    federation = build_federation(parsed)
    algorithm = build_algorithm(parsed)
    model = build_client_models(parsed, federation, algorithm).members[0]
    info = FederationInfo(
        federation.num_clients,
        10,
        federation.input_shape,
        None,
        tuple(name for name, _ in model.named_parameters()),
        norm_layer_names(model),
    )
    server = algorithm.init(state_of(model), info, numpy_rng(0, "init"))
    message = algorithm.broadcast(server)
    state = algorithm.init_client(server, 0)
    message_copy, state_copy = copy.deepcopy(message), copy.deepcopy(state)
    env = WorkerEnv(WorkerSetup(federation, model, parsed.train, parsed.seed))
    run_client_phase(env, ClientWork(algorithm, "client_update", 0, 1, message, state))
    assert _equal(message, message_copy) and _equal(state, state_copy)


SERVER_METHODS = {"round": 2, "aggregate": 2, "broadcast": 1}
"""Server-side methods and how many leading arguments (after self) are their inputs."""


@pytest.mark.parametrize("name", NAMES)
def test_server_methods_do_not_mutate_their_inputs(
    name: str, tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """round(), aggregate() and broadcast() return new states: the server state, cohort and
    updates they were given are unchanged after the call (run on copies, compared)."""
    cfg = config_for(name, tiny_config)
    cls = type(build_algorithm(load_config(cfg)))
    mutated: list[str] = []
    for method, inputs in SERVER_METHODS.items():
        monkeypatch.setattr(cls, method, _checking(getattr(cls, method), method, inputs, mutated))
    plural.run(cfg)
    assert not mutated, f"{name} mutated the inputs of {sorted(set(mutated))}"


def _checking(original: Any, method: str, inputs: int, mutated: list[str]) -> Any:
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = copy.deepcopy(args[:inputs])
        result = original(self, *args, **kwargs)
        if not _equal(list(args[:inputs]), list(before)):
            mutated.append(method)
        return result

    return checked


def _equal(a: Any, b: Any) -> bool:
    """Deep equality that compares tensors and arrays by value (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b) or bool(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dataclass_fields__"):
        return all(_equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b
