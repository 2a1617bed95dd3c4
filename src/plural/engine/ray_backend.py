"""A Ray backend: client work on Ray actors, on this machine or on a cluster.

Each worker is a Ray actor that builds its :class:`~plural.engine.backends.WorkerEnv` once,
from a :class:`~plural.engine.backends.WorkerSetup` put in Ray's object store once (the
federation's data is sent once per actor, never per round). Actor ``k`` of ``W`` owns the
clients ``c`` with ``c % W == k``: every work item of client ``c`` (its training phases, its
evaluation, its gradient) runs on that actor, so a client's data is only ever read there.
Per call of :meth:`RayBackend.map`, the items of one actor travel in one remote call and the
results come back in the items' order. Client state stays on the server: it travels inside
the work items like any message. Items and results are serialised as plain pickles (through
cloudpickle, so that tasks and classes defined in a script work too); tensors are copied by
value. Client randomness is derived from (seed, round, client, phase), so results equal the
sequential backend's exactly.

Without an address (and with Ray not yet initialised) the backend starts a local Ray
instance with this machine's cores and shuts it down on :meth:`RayBackend.close`. On a
cluster, start Ray there (``ray start --head`` on the head node, ``ray start
--address=HEAD:6379`` on the others; plural must be installed on every node) and give the
head's address (``address="HEAD:6379"`` or ``"auto"`` on a node of the cluster). If Ray is
already initialised in this process, the backend uses that instance and leaves it running.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from plural.config import ConfigError
from plural.engine.backends import WorkerEnv, WorkerSetup

Item = TypeVar("Item")
Result = TypeVar("Result")

MISSING_RAY = "backend.name: 'ray' needs Ray: pip install \"plural[ray]\""


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError(MISSING_RAY) from error
    return ray


def _dumps(obj: Any) -> bytes:
    """A plain pickle (readable with :func:`pickle.loads`) that also handles ``__main__``."""
    from ray import cloudpickle

    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class ShardWorker:
    """The body of one Ray actor: a long-lived environment and the clients it owns."""

    def __init__(self, setup: bytes, threads: int) -> None:
        torch.set_num_threads(threads)
        self.env = WorkerEnv(pickle.loads(setup))

    def pid(self) -> int:
        """The actor's process id (also tells the driver that start-up succeeded)."""
        return os.getpid()

    def run(self, payload: bytes) -> bytes:
        """Run a pickled ``(task, items)`` on this actor's environment; pickled results."""
        task, items = pickle.loads(payload)
        return _dumps([task(self.env, item) for item in items])


def owner(item: Any, position: int, workers: int) -> int:
    """The actor that runs ``item``: the owner of its client, else round-robin by position."""
    client_id = getattr(item, "client_id", None)
    return (client_id if isinstance(client_id, int) else position) % workers


def shard(items: Sequence[Any], workers: int) -> list[list[int]]:
    """Positions of ``items`` per actor, in order."""
    positions: list[list[int]] = [[] for _ in range(workers)]
    for position, item in enumerate(items):
        positions[owner(item, position, workers)].append(position)
    return positions


class RayBackend:
    """Client work on ``workers`` Ray actors of ``threads`` CPUs (and torch threads) each.

    ``workers`` defaults to the CPUs the Ray cluster reports divided by ``threads`` (at most
    one actor per client); ``address`` is a Ray cluster's address (None: a local instance).
    """

    def __init__(
        self,
        setup: WorkerSetup,
        workers: int | None = None,
        threads: int | None = None,
        address: str | None = None,
    ) -> None:
        ray = import_ray()
        self.num_clients = setup.federation.num_clients
        self.threads = threads or 1
        self._owns_ray = _connect(ray, address)
        self._actors: list[Any] = []
        try:
            self.workers = workers or _default_workers(ray, self.threads, self.num_clients)
            self._actors = _start_actors(ray, setup, self.workers, self.threads)
        except BaseException:
            self.close()
            raise

    def map(self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]) -> list[Result]:
        """``[task(env, item) for item in items]``, each item on its client's actor."""
        if not items:
            return []
        ray = import_ray()
        calls = []
        for actor, positions in zip(self._actors, shard(items, self.workers), strict=True):
            if positions:
                payload = _dumps((task, [items[p] for p in positions]))
                calls.append((positions, actor.run.remote(payload)))
        results: list[Any] = [None] * len(items)
        for (positions, _), reply in zip(calls, ray.get([ref for _, ref in calls]), strict=True):
            for position, result in zip(positions, pickle.loads(reply), strict=True):
                results[position] = result
        return results

    def close(self) -> None:
        """Stop the actors, and Ray itself if this backend started it."""
        ray = import_ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False


def _connect(ray: Any, address: str | None) -> bool:
    """Initialise Ray unless it already is; True when this call started it."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address is None and "RAY_ADDRESS" not in os.environ:
        options.update(num_cpus=os.cpu_count() or 1, include_dashboard=False)
    with warnings.catch_warnings():
        # A tip about GPU visibility in future Ray versions; the actors use no GPU.
        warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
        ray.init(**options)
    return True


def _cluster_cpus(ray: Any) -> int:
    return int(ray.cluster_resources().get("CPU", 0))


def _default_workers(ray: Any, threads: int, num_clients: int) -> int:
    return max(1, min(_cluster_cpus(ray) // threads, num_clients))


def _gpus_per_actor(ray: Any, setup: WorkerSetup, workers: int) -> float:
    """The share of the cluster's GPUs each actor asks for (Ray hides GPUs from actors that
    ask for none): none on the CPU, else an equal share, at most one GPU each."""
    if setup.device == "cpu" or setup.device == "mps":
        return 0.0
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus == 0:
        if setup.device == "auto":
            return 0.0
        raise ConfigError(
            f"backend.device: {setup.device!r} with backend.name 'ray' needs GPUs in the Ray "
            "cluster, and it reports none"
        )
    return min(1.0, gpus / workers)


def _start_actors(ray: Any, setup: WorkerSetup, workers: int, threads: int) -> list[Any]:
    """``workers`` actors, each with its environment built; errors of start-up raise here."""
    cpus = _cluster_cpus(ray)
    if workers * threads > cpus:
        raise ConfigError(
            f"backend: {workers} Ray workers x {threads} threads need {workers * threads} CPUs, "
            f"but the Ray cluster has {cpus}; lower backend.workers or threads_per_worker"
        )
    setup_ref = ray.put(_dumps(setup))
    actor_class = ray.remote(num_cpus=threads, num_gpus=_gpus_per_actor(ray, setup, workers))(
        ShardWorker
    )
    actors = [actor_class.remote(setup_ref, threads) for _ in range(workers)]
    ray.get([actor.pid.remote() for actor in actors])
    return actors
