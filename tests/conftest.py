"""Shared fixtures: tiny federations that run in well under a second."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tiny_config import TINY_CONFIG


class CrashAfter:
    """A callback that fails after a given round, like a killed run."""

    def __init__(self, round_index: int) -> None:
        self.round_index = round_index

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        if round_index == self.round_index:
            raise RuntimeError("simulated crash")
        return False


@pytest.fixture
def crash_after() -> type[CrashAfter]:
    """The callback class that simulates a run killed after a given round."""
    return CrashAfter


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # Tiny models run fastest on one thread, and two test processes then do not fight.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[Any]:
    """One local Ray instance (2 CPUs, no dashboard) for every Ray test of the session."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def built_backends(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The backends ``plural.run`` builds during the test, in order (to inspect them)."""
    from plural.runner import session

    built: list[Any] = []
    make_backend = session.make_backend

    def recording(setup: Any, backend_config: Any) -> Any:
        built.append(make_backend(setup, backend_config))
        return built[-1]

    monkeypatch.setattr(session, "make_backend", recording)
    return built


@pytest.fixture
def tiny_config() -> dict[str, Any]:
    return copy.deepcopy(TINY_CONFIG)
