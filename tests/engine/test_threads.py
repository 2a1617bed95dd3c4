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
from plural.engine import backends as backends_mod
from plural.engine import threads as threads_mod
from plural.engine.backend_registry import make_backend
from plural.engine.backends import (
    ClientModels,
    WorkerSetup,
    backend_threads,
    step_flops,
)
from plural.engine.threads import (
    CORES_VARIABLE,
    ThreadGovernor,
    choose_threads,
    cores_per_process,
    usable_cores,
)
from plural.experiment import BackendConfig, load_config
from plural.report.rundir import RunDirectory
from plural.runner.sweep import _init_worker


def _setup(model: nn.Module | ClientModels, tiny_config: dict[str, Any]) -> WorkerSetup:
    from plural.runner import build_federation

    federation = build_federation(load_config(tiny_config), None)
    return WorkerSetup(federation, model, load_config(tiny_config).train, 0)


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 64])
def test_threads_never_exceed_the_cores_of_a_process(cores: int) -> None:
    for processes in (1, 2, 3, 8):
        for flops in (0.0, 3e5, 1.3e8, 2.3e9, 1e13):
            chosen = choose_threads(flops, processes, cores=cores)
            assert 1 <= chosen <= max(1, cores // processes)
            assert chosen * processes <= max(cores, processes)


def test_light_steps_get_one_thread_and_heavy_ones_more() -> None:
    per_thread = threads_mod.FLOPS_PER_THREAD
    assert choose_threads(3e5, cores=8) == 1  # the demo's MLP step
    assert choose_threads(per_thread - 1, cores=8) == 1
    assert choose_threads(per_thread, cores=8) == 2
    assert choose_threads(3.5 * per_thread, cores=8) == 4
    assert choose_threads(3.5 * per_thread, processes=4, cores=8) == 2
    assert choose_threads(1e13, cores=8) == 8
    assert choose_threads(1e13, override=3, cores=8) == 3  # backend.threads wins


def test_step_flops_count_forward_and_backward_of_a_minibatch_of_the_largest_model(
    tiny_config: dict[str, Any],
) -> None:
    batch = load_config(tiny_config).train.batch_size
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # 2 * 64 * 10 FLOPs forward
    # per sample, twice that backward
    assert step_flops(_setup(linear, tiny_config)) == 3 * 2 * 64 * 10 * batch
    wide = nn.Sequential(nn.Flatten(), nn.Linear(64, 100), nn.Linear(100, 10))
    mixed = ClientModels((linear, wide), (0, 1))
    assert step_flops(_setup(mixed, tiny_config)) == 3 * 2 * (64 * 100 + 100 * 10) * batch


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
    monkeypatch.setattr(backends_mod, "step_flops", lambda setup: 5e8)  # 6 threads alone
    setup = _setup(nn.Linear(64, 10), tiny_config)
    assert backend_threads(setup, BackendConfig()) == 4
    assert backend_threads(setup, BackendConfig(name="process", workers=2)) == 2
    assert backend_threads(setup, BackendConfig(name="ray", workers=4)) == 1
    assert backend_threads(setup, BackendConfig(name="process")) == 1  # 4 workers by default
    assert backend_threads(setup, BackendConfig(threads=3)) == 3
    assert backend_threads(setup, BackendConfig(threads_per_worker=2)) == 2


class FakeMachine:
    """A clock, the busy CPU seconds of this process's cores, and this process's own."""

    def __init__(self) -> None:
        self.now = self.busy = self.own = 0.0

    def run(self, seconds: float, others: float, mine: float) -> None:
        """``seconds`` pass with other processes on ``others`` cores and this on ``mine``."""
        self.now += seconds
        self.busy += seconds * (others + mine)
        self.own += seconds * mine

    def governor(self, ceiling: int, cores: int) -> ThreadGovernor:
        return ThreadGovernor(ceiling, cores, lambda: self.now, lambda: self.busy, lambda: self.own)


def test_governor_takes_the_cores_others_leave_free() -> None:
    machine = FakeMachine()
    governor = machine.governor(ceiling=2, cores=2)
    try:
        assert governor.threads == torch.get_num_threads() == 1  # starts safe
        machine.run(0.5, others=0.0, mine=1.0)
        assert governor.tick() == 1  # no look before ADAPT_EVERY_S
        machine.run(0.6, others=0.05, mine=1.0)
        assert governor.tick() == 2 == torch.get_num_threads()  # alone: both cores
        machine.run(1.5, others=1.0, mine=1.0)  # a copy started beside it
        assert governor.tick() == 1 == torch.get_num_threads()
        machine.run(1.5, others=0.9, mine=1.0)  # the copy keeps one core busy: stay
        assert governor.tick() == 1
        machine.run(1.5, others=0.0, mine=1.0)  # the copy ended
        assert governor.tick() == 2
        assert governor.used == {1: 3, 2: 2}
    finally:
        torch.set_num_threads(1)


def test_governor_never_exceeds_its_ceiling_and_keeps_one_thread() -> None:
    machine = FakeMachine()
    governor = machine.governor(ceiling=3, cores=8)
    try:
        machine.run(2.0, others=1.2, mine=1.0)
        assert governor.tick() == 3  # 6.8 cores free, but 3 is what the model uses
        machine.run(2.0, others=7.6, mine=3.0)
        assert governor.tick() == 1  # the machine is full: one thread, never zero
    finally:
        torch.set_num_threads(1)


def test_governor_stays_at_its_ceiling_where_the_load_cannot_be_read() -> None:
    governor = ThreadGovernor(2, 2, busy_seconds=lambda: None)
    try:
        assert governor.threads == torch.get_num_threads() == 2
        assert governor.tick() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat only")
def test_busy_seconds_of_this_machines_cores_grow() -> None:
    cpus = frozenset(os.sched_getaffinity(0))
    first = threads_mod._busy_seconds(cpus)
    sum(i * i for i in range(2_000_000))  # keep one core busy for a moment
    second = threads_mod._busy_seconds(cpus)
    assert first is not None and second is not None and second > first


def test_runs_whose_threads_adapt_record_the_threads_used(
    monkeypatch: pytest.MonkeyPatch, tiny_config: dict[str, Any], tmp_path
) -> None:
    monkeypatch.setenv(CORES_VARIABLE, "2")
    monkeypatch.setattr(threads_mod.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(backends_mod, "step_flops", lambda setup: 5e8)
    try:
        config = {**copy.deepcopy(tiny_config), "backend": {}}  # threads not pinned
        results = plural.run(config, out=tmp_path)
        recorded = RunDirectory(tmp_path).read_environment()[-1]
        assert recorded["torch_threads"] == 2 and recorded["torch_threads_adapt"] is True
        tasks = sum(recorded["torch_threads_used"].values())
        fits = int((results.metrics["split"] == "fit").sum())
        assert tasks >= fits  # every client's work in every round, and evaluations
        assert set(recorded["torch_threads_used"]) <= {"1", "2"}
    finally:
        torch.set_num_threads(1)


def test_sequential_backend_uses_the_chosen_threads_and_restores(
    tiny_config: dict[str, Any],
) -> None:
    torch.set_num_threads(2)
    try:
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        backend = make_backend(_setup(model, tiny_config), BackendConfig())
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
