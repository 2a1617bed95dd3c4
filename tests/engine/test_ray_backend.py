"""The Ray backend: same results as the sequential backend, clients pinned to their actor."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

import plural
from plural.config import ConfigError
from plural.core.params import max_abs_difference
from plural.engine import loop
from plural.engine.backends import EvalWork, WorkerEnv, WorkerSetup
from plural.experiment import load_config
from plural.report.rundir import deterministic

WORKERS = 2


@pytest.fixture(scope="module")
def ray(ray_instance: Any) -> Iterator[Any]:
    """The local Ray instance, with this module's tasks sent by value (Ray's workers cannot
    import the tests)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_instance
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def tiny_setup(tiny_config: dict[str, Any]) -> WorkerSetup:
    """The worker setup of the tiny federation (6 clients)."""
    cfg = load_config(tiny_config)
    federation = loop.build_federation(cfg)
    algorithm = loop.build_algorithm(cfg)
    models = loop.build_client_models(cfg, federation, algorithm)
    return WorkerSetup(federation, models, cfg.train, cfg.seed)


def run_on_ray(config: dict[str, Any], built: list[Any]) -> plural.Results:
    """``plural.run`` with ``backend.name: ray`` on two workers (checks one backend was built)."""
    from plural.engine.ray_backend import RayBackend

    before = len(built)
    results = plural.run(config, overrides=["backend.name=ray", f"backend.workers={WORKERS}"])
    assert len(built) == before + 1 and isinstance(built[-1], RayBackend)
    assert built[-1].workers == WORKERS
    return results


@pytest.mark.ray
@pytest.mark.parametrize("algorithm", ["fedavg", "ditto", "scaffold"])
def test_ray_backend_equals_sequential(
    algorithm: str, tiny_config: dict[str, Any], ray: Any, built_backends: list[Any]
) -> None:
    config = copy.deepcopy(tiny_config)
    config["algorithm"] = {"name": algorithm}
    config["diagnostics"] = {"gradient_every": 2}
    sequential = plural.run(config)
    parallel = run_on_ray(config, built_backends)
    pd.testing.assert_frame_equal(
        deterministic(sequential.metrics), deterministic(parallel.metrics)
    )
    pd.testing.assert_frame_equal(sequential.diagnostics, parallel.diagnostics)
    assert max_abs_difference(sequential.server.params, parallel.server.params) == 0.0
    assert ray.is_initialized()  # the backend leaves a Ray it did not start running


def where(env: WorkerEnv, item: Any) -> tuple[int, int, Any]:
    """Which process ran ``item``, with which environment, and the item's client (if any)."""
    return os.getpid(), id(env), getattr(item, "client_id", item)


def probes(clients: list[int]) -> list[EvalWork]:
    return [EvalWork(client_id=c, round=0, params={}, splits=()) for c in clients]


@pytest.mark.ray
def test_items_of_a_client_run_on_its_actor(tiny_config: dict[str, Any], ray: Any) -> None:
    from plural.engine.ray_backend import RayBackend

    backend = RayBackend(tiny_setup(tiny_config), workers=WORKERS)
    try:
        assert backend.num_clients == 6 and backend.workers == WORKERS
        clients = [5, 0, 3, 3, 2, 4, 1]
        first = backend.map(where, probes(clients))
        second = backend.map(where, probes(sorted(clients)))
        assert [client for _, _, client in first] == clients  # results in the items' order
        place = {client: (pid, env) for pid, env, client in first + second}
        assert len(set(place.values())) == WORKERS  # one long-lived environment per actor
        for pid, env, client in first + second:
            assert (pid, env) == place[client]  # a client always runs on the same actor
            assert (pid, env) == place[client % WORKERS]  # actor k owns the clients c % W == k
        assert os.getpid() not in {pid for pid, _ in place.values()}
        plain = backend.map(where, [10, 11, 12])  # items without a client: round-robin
        assert [item for _, _, item in plain] == [10, 11, 12]
        assert plain[0][0] == plain[2][0] == place[0][0] and plain[1][0] == place[1][0]
        assert backend.map(where, []) == []
    finally:
        backend.close()
    assert ray.is_initialized()


def test_missing_ray_says_how_to_install(
    tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plural.engine.ray_backend import RayBackend

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray: pip install \"plural\[ray\]\""):
        RayBackend(tiny_setup(tiny_config))
