"""Backends by name: the registry ``backend.name`` chooses from.

Each backend module imports :mod:`plural.engine.backends` (the shared pieces); only this
module imports the backends, lazily where they bring heavy or optional dependencies (the
vectorized backend's greenlets, Ray), so there is no import cycle between them. Another
backend joins with :func:`register_backend` (its name must also be allowed by
``backend.name``'s settings).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

from plural.engine.backends import (
    Backend,
    ProcessBackend,
    SequentialBackend,
    WorkerSetup,
    backend_threads,
)
from plural.experiment import BackendConfig

BackendFactory = Callable[[WorkerSetup, BackendConfig, int, bool], Backend]
"""Builds a backend from (setup, its settings, torch threads per process, whether threads
may follow the machine's load)."""

_BACKENDS: dict[str, BackendFactory] = {}

BACKEND_OVERRIDE: contextvars.ContextVar[Callable[[WorkerSetup], Backend] | None] = (
    contextvars.ContextVar("plural_backend_override", default=None)
)
"""Set by a runner that brings its own workers (``plural.flower``'s ServerApp): the backend
it builds around ``setup`` replaces the configured one."""


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Register a backend factory under ``name`` (a decorator)."""

    def add(factory: BackendFactory) -> BackendFactory:
        _BACKENDS[name] = factory
        return factory

    return add


def backend_names() -> tuple[str, ...]:
    """The registered backends' names."""
    return tuple(_BACKENDS)


@register_backend("sequential")
def _sequential(setup: WorkerSetup, config: BackendConfig, threads: int, adapt: bool) -> Backend:
    return SequentialBackend(setup, threads, adapt)


@register_backend("vectorized")
def _vectorized(setup: WorkerSetup, config: BackendConfig, threads: int, adapt: bool) -> Backend:
    from plural.engine.vectorized import VectorizedBackend

    return VectorizedBackend(
        setup, config.vectorize, threads, config.max_batch_clients, adapt=adapt
    )


@register_backend("process")
def _process(setup: WorkerSetup, config: BackendConfig, threads: int, adapt: bool) -> Backend:
    return ProcessBackend(setup, config.workers, threads)


@register_backend("ray")
def _ray(setup: WorkerSetup, config: BackendConfig, threads: int, adapt: bool) -> Backend:
    from plural.engine.ray_backend import RayBackend  # the optional extra plural[ray]

    return RayBackend(setup, config.workers, threads, config.address)


def make_backend(setup: WorkerSetup, config: BackendConfig) -> Backend:
    """The backend ``config`` names, built around ``setup``; each of its processes uses
    :func:`~plural.engine.backends.backend_threads` torch threads. A runner that brings its
    own workers replaces it through :data:`BACKEND_OVERRIDE`."""
    override = BACKEND_OVERRIDE.get()
    if override is not None:
        return override(setup)
    factory = _BACKENDS.get(config.name)
    if factory is None:
        allowed = ", ".join(repr(name) for name in _BACKENDS)
        raise ValueError(f"unknown backend {config.name!r}; allowed: {allowed}")
    adapt = config.thread_override is None  # pinned threads stay as they are
    return factory(setup, config, backend_threads(setup, config), adapt)
