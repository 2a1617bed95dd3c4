"""How many torch intra-op threads each process of a run uses.

A run never asks for more threads than the cores it may use: the cores this process is
allowed to run on (``os.sched_getaffinity``, which containers and ``taskset`` restrict),
or the share a parent gave it (``PLURAL_CORES``: a sweep with ``--workers`` gives each
cell process its share), divided among the worker processes of the backend. Small models
get one thread: their operations are too small for threads to pay, and extra threads only
compete with whatever else runs on the machine (measured in ``benchmarks/threads.py``).
``backend.threads`` overrides the choice.
"""

from __future__ import annotations

import math
import os

CORES_VARIABLE = "PLURAL_CORES"
"""Environment variable: the cores this process (and the processes it starts) may use."""

PARAMETERS_PER_THREAD = 1_000_000
"""One more thread per this many parameters of work per operation (see the module docstring);
below it one thread. In ``benchmarks/threads.py`` a LeNet on MNIST (108k parameters) and the
demo's MLP ran fastest on one thread on 2 cores, alone and beside a copy of themselves (two
threads: 2-7x slower); the threshold for larger models is not measured yet."""


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by ``PLURAL_CORES``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    share = os.environ.get(CORES_VARIABLE, "").strip()
    if share.isdigit() and int(share) >= 1:
        cores = min(cores, int(share))
    return max(1, cores)


def cores_per_process(processes: int, cores: int | None = None) -> int:
    """Each of ``processes`` processes' share of ``cores`` (default: :func:`usable_cores`)."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, processes))


def choose_threads(
    parameters: int,
    processes: int = 1,
    override: int | None = None,
    cores: int | None = None,
) -> int:
    """Torch intra-op threads for each of ``processes`` processes training a model of
    ``parameters`` parameters (per operation): ``override`` when given, else one thread per
    :data:`PARAMETERS_PER_THREAD` parameters, at most the process's share of the cores."""
    if override is not None:
        return override
    wanted = max(1, math.ceil(parameters / PARAMETERS_PER_THREAD))
    return min(wanted, cores_per_process(processes, cores))
