"""Run plural's algorithms across real machines with Flower (extra: ``plural[flower]``).

* :func:`simulate`: a config in Flower's simulation engine (``plural flower run CONFIG``);
* :func:`server_app` / :func:`client_app`: the ``ServerApp`` and ``ClientApp`` (Flower 1.41's
  Message API) for a deployment; :mod:`plural.flower.app` holds them for ``flwr run``;
* :func:`~plural.flower.data.export_clients`: one data spec file per client.

Flower is imported only when these are called.
"""

from plural.flower.client import client_app
from plural.flower.data import export_clients, load_client
from plural.flower.secagg import check_secagg, secagg_refusal
from plural.flower.server import FlowerOptions, run_on_grid, server_app, simulate, simulate_all

__all__ = [
    "FlowerOptions",
    "check_secagg",
    "client_app",
    "export_clients",
    "load_client",
    "run_on_grid",
    "secagg_refusal",
    "server_app",
    "simulate",
    "simulate_all",
]
