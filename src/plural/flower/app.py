"""The apps ``flwr run`` deploys (``plural flower app`` writes a Flower App that names them).

``server`` reads its job from the run config of the Flower App: ``config`` (the plural YAML
on the server machine), ``out`` (the run directory), and optionally ``timeout`` (seconds to
wait for one message's replies; 0: no limit), ``wait-for-nodes`` (seconds) and ``secagg``.
``client`` is plural's ClientApp; each SuperNode says which clients it holds and where their
data is with ``--node-config`` (see :mod:`plural.flower.client`).
"""

from __future__ import annotations

from typing import Any

from plural.flower import wire
from plural.flower.client import client_app
from plural.flower.server import FlowerOptions, import_flower, run_on_grid

wire.quiet_flower()
import_flower()

from flwr.serverapp import ServerApp  # noqa: E402  (after the telemetry switch)

server = ServerApp()
client = client_app()


def options_of(run_config: Any) -> FlowerOptions:
    timeout = float(run_config.get("timeout", 0) or 0)
    return FlowerOptions(
        timeout=timeout or None,
        wait_for_nodes=float(run_config.get("wait-for-nodes", 120)),
        secagg=bool(run_config.get("secagg", False)),
    )


@server.main()
def main(grid: Any, context: Any) -> None:
    run_config = context.run_config
    if "config" not in run_config:
        raise ValueError("plural.flower.app: the Flower App's run config needs config = PATH")
    out = str(run_config.get("out", "")) or None
    run_on_grid(grid, str(run_config["config"]), out, options_of(run_config))
