"""The Ray backend: same results as the sequential backend, clients pinned to their actor."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

import plural
from plural import runner
from plural.config import ConfigError
from plural.core.params import max_abs_difference
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
    federation = runner.build_federation(cfg)
    algorithm = runner.build_algorithm(cfg)
    models = runner.build_client_models(cfg, federation, algorithm)
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


@pytest.mark.ray
def test_a_run_for_another_cluster_than_the_connected_one_is_refused(
    tiny_config: dict[str, Any], ray: Any
) -> None:
    """Ray serves one cluster per process: a run naming a different host:port is refused
    before any actor starts, and the connected session stays up for the next run."""
    from plural.engine.ray_backend import RayBackend

    connected = ray.get_runtime_context().gcs_address
    with pytest.raises(ConfigError, match=r"backend.address is '127.0.0.1:1'.*already connected"):
        RayBackend(tiny_setup(tiny_config), workers=1, address="127.0.0.1:1")
    assert ray.is_initialized()
    backend = RayBackend(tiny_setup(tiny_config), workers=1, address=connected)  # the same one
    backend.close()
    assert ray.is_initialized()


def test_an_address_names_the_connected_cluster_by_port_and_host() -> None:
    from plural.engine.ray_backend import _same_endpoint

    assert _same_endpoint("10.0.0.5:6379", "10.0.0.5:6379")
    assert _same_endpoint("localhost:6379", "127.0.0.1:6379")  # a name that resolves to it
    assert _same_endpoint("[::1]:6379", "::1:6379") and _same_endpoint("LOCALHOST:1", "127.0.0.1:1")
    assert not _same_endpoint("10.0.0.5:6380", "10.0.0.5:6379")
    assert not _same_endpoint("10.0.0.6:6379", "10.0.0.5:6379")
    assert not _same_endpoint("127.0.0.1:6379", "10.0.0.5:6379")  # loopback is not any host
    assert not _same_endpoint("no-such-host.invalid:6379", "10.0.0.5:6379")


def test_release_session_stops_only_a_session_plural_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    from plural.engine import ray_backend

    calls: list[str] = []
    fake = types.SimpleNamespace(is_initialized=lambda: True, shutdown=lambda: calls.append("x"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_backend, "_connected_as", [])
    ray_backend.release_session()  # the caller's own session: left alone
    assert calls == []
    monkeypatch.setattr(ray_backend, "_connected_as", [None])
    ray_backend.release_session()
    assert calls == ["x"] and ray_backend._connected_as == []


def test_missing_ray_says_how_to_install(
    tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plural.engine.ray_backend import RayBackend

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray: pip install \"plural\[ray\]\""):
        RayBackend(tiny_setup(tiny_config))


CLUSTER_SCRIPT = """
import json, sys
import pandas as pd
import ray
import plural
from plural.core.params import max_abs_difference
from plural.report.rundir import deterministic

config, address, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
on_ray = ["backend.name=ray", "backend.workers=2", f"backend.address={address}"]


class CrashAfter:
    def on_round_end(self, round_index, summary):
        if round_index == 2:
            raise RuntimeError("simulated crash")
        return False


def same(a, b):
    pd.testing.assert_frame_equal(deterministic(a.metrics), deterministic(b.metrics))
    assert max_abs_difference(a.server.params, b.server.params) == 0.0


sequential = plural.run(config)
for state in ("memory", "disk"):
    run_dir = f"{out}/{state}"
    overrides = [*on_ray, f"backend.state={state}"]
    same(sequential, plural.run(config, overrides=overrides, out=run_dir + "-full"))
    try:
        plural.run(config, overrides=overrides, out=run_dir, callbacks=[CrashAfter()])
        raise AssertionError("the crash did not happen")
    except RuntimeError as error:
        assert "simulated crash" in str(error)
    same(sequential, plural.run(config, overrides=overrides, out=run_dir, resume=True))
assert ray.is_initialized()  # one Ray session served all six runs (no shutdown and re-init)
nodes = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({"nodes": len(nodes), "cpus": ray.cluster_resources().get("CPU")}))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.ray
def test_a_two_node_cluster_keeps_states_on_actors_and_equals_sequential(
    tiny_config: dict[str, Any], tmp_path: Any
) -> None:
    """A head and a second node (one CPU each) on this machine: one actor per node, each
    keeping its clients' states (in memory or in files on its node); results equal the
    sequential backend's, and a run killed after round 2 resumes exactly."""
    import signal
    import subprocess
    import tempfile
    from pathlib import Path

    import plural as package

    ray_cli = str(Path(sys.executable).with_name("ray"))
    src = str(Path(package.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")  # no token files
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="plural-ray-", dir="/tmp")  # short: Ray's socket paths
    node = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--block"]
    nodes: list[subprocess.Popen[bytes]] = []
    config = copy.deepcopy(tiny_config)
    config["algorithm"] = {"name": "ditto"}  # a personal model per client: client state
    config["rounds"] = 3
    try:
        nodes.append(
            _start_node(
                [
                    ray_cli,
                    "start",
                    "--head",
                    f"--port={port}",
                    f"--temp-dir={temp}",
                    "--include-dashboard=false",
                    *node,
                ],
                env,
            )
        )
        _wait_for_nodes(address, 1, env)
        nodes.append(_start_node([ray_cli, "start", f"--address={address}", *node], env))
        _wait_for_nodes(address, 2, env)
        script = tmp_path / "cluster.py"
        script.write_text(CLUSTER_SCRIPT)
        done = subprocess.run(
            [sys.executable, str(script), json.dumps(config), address, str(tmp_path / "runs")],
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"nodes": 2, "cpus": 2.0}
        for k in (0, 1):  # each actor kept its clients' state files in its own folder
            assert list((tmp_path / "runs" / "disk" / "client_state" / f"worker-{k}").glob("*.pt"))
    finally:
        for process in reversed(nodes):  # only the processes this test started, by group id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(nodes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _start_node(command: list[str], env: dict[str, str]) -> Any:
    """``ray start ... --block`` in its own process group (stopped by that group's id)."""
    import subprocess

    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for_nodes(address: str, count: int, env: dict[str, str], timeout: float = 120) -> None:
    """Wait until the cluster at ``address`` has ``count`` live nodes (or fail)."""
    import subprocess
    import time

    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0 and done.stdout.strip().endswith(str(count)):
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster at {address} did not reach {count} nodes")
