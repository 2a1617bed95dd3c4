"""Run plural's algorithms across real machines with Flower (extra: ``plural[flower]``).

* :func:`simulate`: a config in Flower's simulation engine (``plural flower run CONFIG``);
* :func:`server_app` / :func:`client_app`: the ``ServerApp`` and ``ClientApp`` (Flower 1.41's
  Message API) for a deployment; :mod:`plural.flower.app` holds them for ``flwr run``;
* :func:`~plural.flower.data.export_clients`: one data spec file per client.

Flower is imported only when these are called.
"""

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "client_app": "plural.flower.client",
    "export_clients": "plural.flower.data",
    "load_client": "plural.flower.data",
    "check_secagg": "plural.flower.secagg",
    "secagg_refusal": "plural.flower.secagg",
    "FlowerOptions": "plural.flower.server",
    "run_on_grid": "plural.flower.server",
    "server_app": "plural.flower.server",
    "simulate": "plural.flower.server",
    "simulate_all": "plural.flower.server",
}
"""Imported on first use, so that ``plural --help`` (which lists ``plural flower``) stays
light."""

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

if TYPE_CHECKING:
    from plural.flower.client import client_app
    from plural.flower.data import export_clients, load_client
    from plural.flower.secagg import check_secagg, secagg_refusal
    from plural.flower.server import FlowerOptions, run_on_grid, server_app, simulate, simulate_all


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'plural.flower' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
