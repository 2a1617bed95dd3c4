"""What a run ran on: Python, the packages, the machine and the command, so a reader can
rerun it (the run directory's ``environment.json``; one entry per start)."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata
from typing import Any

import torch

PACKAGES = (
    "plural",
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "matplotlib",
    "greenlet",
    "ray",
    "flwr",
    "tensorboard",
    "mlflow",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (packages that are not installed are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment_entry(
    device: str = "cpu", threads: int | None = None, threads_adapt: bool = False
) -> dict[str, Any]:
    """This process's environment, for ``environment.json``; ``threads``: the torch threads
    each process of the run uses (default: this process's current setting), or at most
    uses when ``threads_adapt`` (the run adds ``torch_threads_used`` when it ends)."""
    from plural.engine.threads import usable_cores

    entry: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads() if threads is None else threads,
        "torch_threads_adapt": threads_adapt,
        "device": device,
        "packages": package_versions(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        entry["gpu"] = torch.cuda.get_device_name()
    return entry
