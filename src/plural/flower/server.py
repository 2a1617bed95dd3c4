"""plural's ServerApp: the engine's round loop on the server, client work on Flower nodes.

``server_app(config, out)`` builds a Flower ``ServerApp`` whose main function runs
:func:`plural.run` with :class:`~plural.flower.backend.FlowerBackend` in place of the
configured backend: sampling, the algorithm's rounds (every phase, every model it sends),
aggregation, metrics, summaries and the run directory are those of ``plural run``.
:func:`simulate` runs it in Flower's simulation engine (Ray) with one virtual SuperNode per
node; :mod:`plural.flower.app` holds the apps that ``flwr run`` deploys.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plural.config import ConfigError
from plural.engine.backend_registry import BACKEND_OVERRIDE
from plural.engine.backends import WorkerSetup
from plural.experiment import ExperimentConfig, load_config
from plural.flower import wire
from plural.flower.backend import FlowerBackend
from plural.flower.secagg import check_secagg

MISSING_FLOWER = 'plural.flower needs Flower: pip install "plural[flower]"'


def import_flower() -> None:
    """Import Flower (telemetry off), or a ConfigError saying how to install it."""
    wire.quiet_flower()
    try:
        import flwr  # noqa: F401
    except ImportError as error:
        raise ConfigError(MISSING_FLOWER) from error


@dataclasses.dataclass(frozen=True)
class FlowerOptions:
    """How the ServerApp talks to the nodes."""

    timeout: float | None = None
    """Seconds to wait for the nodes' replies to one message (None: no limit)."""
    wait_for_nodes: float = 120.0
    """Seconds to wait at start for nodes that hold every client."""
    secagg: bool = False
    """Flower's SecAgg+ for the clients' updates (averaging methods only)."""
    callbacks: tuple[Any, ...] = ()
    """plural callbacks of the run (on the server)."""


def run_on_grid(
    grid: Any,
    config: ExperimentConfig | Mapping[str, Any] | str | Path,
    out: str | Path | None = None,
    options: FlowerOptions = FlowerOptions(),
) -> Any:
    """:func:`plural.run` of ``config`` with its client work on ``grid``'s nodes."""
    from plural.runner import run

    cfg = load_config(config)
    check_secagg(cfg, options.secagg)

    def backend(setup: WorkerSetup) -> FlowerBackend:
        return FlowerBackend(
            grid,
            setup,
            cfg,
            timeout=options.timeout,
            wait_for_nodes=options.wait_for_nodes,
            secagg=options.secagg,
        )

    token = BACKEND_OVERRIDE.set(backend)
    try:
        return run(cfg, out=out, progress=False, callbacks=options.callbacks)
    finally:
        BACKEND_OVERRIDE.reset(token)


class _Outcome:
    """What the ServerApp's main function returned or raised (it runs in Flower's hands)."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.error: BaseException | None = None


Job = tuple[ExperimentConfig, "str | Path | None"]


def server_app(
    config: ExperimentConfig | Mapping[str, Any] | str | Path,
    out: str | Path | None = None,
    options: FlowerOptions = FlowerOptions(),
) -> Any:
    """A Flower ``ServerApp`` that runs ``config`` (run directory ``out``)."""
    return _server_app([(load_config(config), out)], options, None)


def _server_app(jobs: Sequence[Job], options: FlowerOptions, outcome: _Outcome | None) -> Any:
    """A ``ServerApp`` that runs ``jobs`` one after another on the same nodes."""
    import_flower()
    from flwr.serverapp import ServerApp

    for cfg, _ in jobs:
        check_secagg(cfg, options.secagg)  # refused before Flower starts
    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        try:
            for cfg, out in jobs:
                results = run_on_grid(grid, cfg, out, options)
                if outcome is not None:
                    outcome.results.append(results)
        except BaseException as error:
            if outcome is None:
                raise
            outcome.error = error

    return app


def simulate(
    config: ExperimentConfig | Mapping[str, Any] | str | Path,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    nodes: int | None = None,
    cpus_per_node: float = 1.0,
    options: FlowerOptions = FlowerOptions(),
) -> Any:
    """Run ``config`` in Flower's simulation engine and return plural's ``Results``.

    ``nodes`` virtual SuperNodes (default: one per client, at most the machine's cores)
    each hold the clients ``c`` with ``c % nodes == k``; each gets ``cpus_per_node`` CPUs.
    """
    cfg = load_config(config, overrides)
    return simulate_all([(cfg, out)], nodes=nodes, cpus_per_node=cpus_per_node, options=options)[0]


def simulate_all(
    jobs: Sequence[tuple[ExperimentConfig | Mapping[str, Any] | str | Path, str | Path | None]],
    *,
    nodes: int | None = None,
    cpus_per_node: float = 1.0,
    options: FlowerOptions = FlowerOptions(),
) -> list[Any]:
    """:func:`simulate` of several (config, run directory) jobs, one after another in one
    Flower simulation (the nodes start once); their ``Results`` in order."""
    import_flower()
    loaded = [(load_config(config), out) for config, out in jobs]
    from flwr.simulation import run_simulation

    from plural.engine.ray_backend import release_session
    from plural.flower.client import client_app

    count = nodes or min(max(_clients_of(cfg) for cfg, _ in loaded), os.cpu_count() or 1)
    fewest = min(_clients_of(cfg) for cfg, _ in loaded)
    if not 1 <= count <= fewest:
        raise ConfigError(
            f"nodes: {count}; give 1 to {fewest} (each node holds at least one client)"
        )
    release_session()  # a plural Ray run's session: Flower starts and stops its own
    outcome = _Outcome()
    backend_config = {
        "client_resources": {"num_cpus": cpus_per_node, "num_gpus": 0.0},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }
    run_simulation(
        server_app=_server_app(loaded, options, outcome),
        client_app=client_app(),
        num_supernodes=count,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    if outcome.error is not None:
        raise outcome.error
    if len(outcome.results) != len(loaded):
        raise RuntimeError("plural.flower: the Flower simulation ended without results")
    return outcome.results


def _clients_of(cfg: ExperimentConfig) -> int:
    """The number of clients the config's partition makes (read from its settings)."""
    return int(getattr(cfg.partition.settings, "num_clients", 0) or 1)
