"""Torch threads per process: chosen from usable cores, workers and model size; recorded."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch
from torch import nn

import plural
from plural.config import ConfigError
from plural.engine import threads as threads_mod
from plural.engine.backends import ClientModels, WorkerSetup, backend_threads, make_backend
from plural.engine.threads import CORES_VARIABLE, choose_threads, cores_per_process, usable_cores
from plural.experiment import BackendConfig, load_config
from plural.report.rundir import RunDirectory
from plural.report.sweep import _init_worker


def _setup(model: nn.Module | ClientModels, tiny_config: dict[str, Any]) -> WorkerSetup:
    from plural.runner import build_federation

    federation = build_federation(load_config(tiny_config), None)
    return WorkerSetup(federation, model, load_config(tiny_config).train, 0)


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 64])
def test_threads_never_exceed_the_cores_of_a_process(cores: int) -> None:
    for processes in (1, 2, 3, 8):
        for parameters in (10, 62_000, 2_500_000, 10**9):
            chosen = choose_threads(parameters, processes, cores=cores)
            assert 1 <= chosen <= max(1, cores // processes)
            assert chosen * processes <= max(cores, processes)


def test_small_models_get_one_thread_and_large_ones_more() -> None:
    assert choose_threads(62_000, cores=8) == 1
    assert choose_threads(3_500_000, cores=8) == 4
    assert choose_threads(3_500_000, processes=4, cores=8) == 2
    assert choose_threads(10**9, cores=8) == 8
    assert choose_threads(10**9, override=3, cores=8) == 3  # backend.threads wins


def test_usable_cores_follow_affinity_and_a_parents_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    monkeypatch.delenv(CORES_VARIABLE, raising=False)
    assert usable_cores() == 5
    monkeypatch.setenv(CORES_VARIABLE, "2")
    assert usable_cores() == 2
    assert cores_per_process(2) == 1
    monkeypatch.setenv(CORES_VARIABLE, "64")  # a share cannot add cores
    assert usable_cores() == 5
    monkeypatch.setenv(CORES_VARIABLE, "junk")
    assert usable_cores() == 5


def test_sweep_cells_pass_their_share_to_their_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CORES_VARIABLE, raising=False)
    before = torch.get_num_threads()
    try:
        _init_worker(1)
        assert os.environ[CORES_VARIABLE] == "1"
        assert usable_cores() == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_process_and_ray_backends_divide_cores_among_workers(
    monkeypatch: pytest.MonkeyPatch, tiny_config: dict[str, Any]
) -> None:
    monkeypatch.setenv(CORES_VARIABLE, "4")
    monkeypatch.setattr(threads_mod.os, "sched_getaffinity", lambda pid: set(range(8)))
    big = nn.Linear(2000, 2000)  # 4M parameters: would use 4 threads alone
    setup = _setup(big, tiny_config)
    assert backend_threads(setup, BackendConfig()) == 4
    assert backend_threads(setup, BackendConfig(name="process", workers=2)) == 2
    assert backend_threads(setup, BackendConfig(name="ray", workers=4)) == 1
    assert backend_threads(setup, BackendConfig(name="process")) == 1  # 4 workers by default
    assert backend_threads(setup, BackendConfig(threads=3)) == 3
    assert backend_threads(setup, BackendConfig(threads_per_worker=2)) == 2
    small = ClientModels((nn.Linear(64, 10), copy.deepcopy(big)), (0, 1))
    assert backend_threads(_setup(small, tiny_config), BackendConfig()) == 4  # the largest


def test_sequential_backend_uses_the_chosen_threads_and_restores(
    tiny_config: dict[str, Any],
) -> None:
    torch.set_num_threads(2)
    try:
        backend = make_backend(_setup(nn.Linear(64, 10), tiny_config), BackendConfig())
        assert backend.threads == torch.get_num_threads() == 1
        backend.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_threads_and_their_former_name_must_agree() -> None:
    with pytest.raises(ConfigError, match="threads_per_worker"):
        load_config({**_minimal(), "backend": {"threads": 2, "threads_per_worker": 1}})
    assert load_config({**_minimal(), "backend": {"threads": 2}}).backend.thread_override == 2


def _minimal() -> dict[str, Any]:
    return {
        "dataset": {"name": "digits"},
        "partition": {"name": "iid", "num_clients": 4},
        "model": {"name": "mlp"},
        "algorithm": {"name": "fedavg"},
    }


@pytest.mark.parametrize("asked", [None, 2])
def test_environment_records_the_threads_used(
    tiny_config: dict[str, Any], tmp_path, asked: int | None
) -> None:
    torch.set_num_threads(2)
    try:
        config = copy.deepcopy(tiny_config)
        config["backend"] = {"threads": asked} if asked else {}
        plural.run(config, out=tmp_path)
        recorded = RunDirectory(tmp_path).read_environment()[-1]
        assert recorded["torch_threads"] == (asked or 1)  # the tiny MLP gets one thread
        assert recorded["usable_cores"] == usable_cores()
        assert torch.get_num_threads() == 2  # restored after the run
    finally:
        torch.set_num_threads(1)


def test_the_threads_benchmark_workloads_are_valid_configs() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "threads.py"
    spec = importlib.util.spec_from_file_location("threads_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for quick in (True, False):
        workloads = module.workloads(quick)
        assert "lenet-20" in workloads and "demo-fedavg" in workloads
        for config in workloads.values():
            assert load_config(config).backend.thread_override is None  # the default is measured
