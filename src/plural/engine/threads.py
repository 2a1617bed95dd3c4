"""How many torch intra-op threads each process of a run uses.

A run never asks for more threads than the cores it may use: the cores this process is
allowed to run on (``os.sched_getaffinity``, which containers and ``taskset`` restrict),
or the share a parent gave it (``PLURAL_CORES``: a sweep with ``--workers`` gives each
cell process its share), divided among the worker processes of the backend. How many of
them pay depends on the work of one training step (:data:`FLOPS_PER_THREAD`): small
models get one thread, since their operations are too small for threads to pay and extra
threads only compete with whatever else runs on the machine.

The cores that are free change while a run goes: a second job starts beside it, or ends.
In-process backends (sequential, vectorized) whose threads were not pinned therefore let a
:class:`ThreadGovernor` move between one thread and the chosen number, from the load other
processes put on this process's cores. Two threads on two cores that another process also
uses made a LeNet run 3x slower, and the demo's MLP runs 30-100x slower, than one thread
(``benchmarks/threads.py``). A different thread count can change the last bits of a
result (torch splits sums across threads), so ``backend.threads`` pins the count: runs
that must be bit-identical on a busy machine set it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

CORES_VARIABLE = "PLURAL_CORES"
"""Environment variable: the cores this process (and the processes it starts) may use."""

FLOPS_PER_THREAD = 100e6
"""One more thread per this many FLOPs of one training step (forward and backward of one
minibatch). Measured on 2 cores, alone (``benchmarks/threads.py``, per-step figures): a
LeNet step on 32 MNIST images (126 MFLOPs) ran 1.49x faster on two threads, the FedAvg
CNN (2.3 GFLOPs) 1.84x; a 784-200-200-10 MLP on 50 images (44 MFLOPs) 0.96x and the
demo's MLP (0.3 MFLOPs) 0.81x, i.e. slower."""

ADAPT_EVERY_S = 1.0
"""Seconds of a run between two looks at the load on its cores (:class:`ThreadGovernor`)."""


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
    step_flops: float,
    processes: int = 1,
    override: int | None = None,
    cores: int | None = None,
) -> int:
    """Torch intra-op threads for each of ``processes`` processes whose training steps take
    ``step_flops`` FLOPs each: ``override`` when given, else one thread and one more per
    :data:`FLOPS_PER_THREAD`, at most the process's share of the cores."""
    if override is not None:
        return override
    wanted = 1 + int(step_flops // FLOPS_PER_THREAD)
    return min(wanted, cores_per_process(processes, cores))


def _busy_seconds(cpus: frozenset[int]) -> float | None:
    """CPU seconds all processes have spent on ``cpus`` since boot (Linux ``/proc/stat``:
    user, nice, system, irq, softirq and steal ticks); None where that file is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            lines = stat.readlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def _my_cpus() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


class ThreadGovernor:
    """Moves this process's torch threads between 1 and ``ceiling`` with the load on its
    cores: every :data:`ADAPT_EVERY_S` seconds (when :meth:`tick` is called), the cores
    other processes kept busy are measured (all busy time on this process's CPUs minus its
    own CPU time), and the threads become the cores left free, rounded to the nearest.

    A run starts on one thread, which never oversubscribes, and takes more once it has
    seen the cores free. Where the load cannot be read (no ``/proc/stat``) it stays at
    ``ceiling``. ``used`` counts the ticks spent at each thread count.
    """

    def __init__(
        self,
        ceiling: int,
        cores: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        busy_seconds: Callable[[], float | None] | None = None,
        own_seconds: Callable[[], float] = time.process_time,
    ) -> None:
        self.ceiling, self.cores = ceiling, cores or usable_cores()
        cpus = _my_cpus()
        self._clock, self._own = clock, own_seconds
        self._busy = busy_seconds or (lambda: _busy_seconds(cpus))
        self.used: dict[int, int] = {}
        self._mark = self._sample()
        self.threads = 1 if self._mark is not None and ceiling > 1 else ceiling
        self._apply(self.threads)

    def _sample(self) -> tuple[float, float, float] | None:
        busy = self._busy()
        return None if busy is None else (self._clock(), busy, self._own())

    def _apply(self, threads: int) -> None:
        if torch_threads() != threads:
            set_torch_threads(threads)
        self.threads = threads

    def _others_busy(self, now: tuple[float, float, float]) -> float:
        """Cores other processes kept busy on average since the last look."""
        assert self._mark is not None  # looks are only taken where the load can be read
        wall = now[0] - self._mark[0]
        own = now[2] - self._mark[2]
        return max(0.0, (now[1] - self._mark[1] - own) / wall)

    def tick(self) -> int:
        """Before a piece of work: adjust the threads if a look is due; the threads it runs
        on (counted in ``used``)."""
        due = self._mark is not None and self._clock() - self._mark[0] >= ADAPT_EVERY_S
        now = self._sample() if due and self.ceiling > 1 else None
        if now is not None:
            free = math.floor(self.cores - self._others_busy(now) + 0.5)
            self._mark = now
            self._apply(min(self.ceiling, max(1, free)))
        self.used[self.threads] = self.used.get(self.threads, 0) + 1
        return self.threads


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
