"""A Ray backend: client work on Ray actors, on this machine or on a cluster.

Each worker is a Ray actor that builds its :class:`~plural.engine.backends.WorkerEnv` once,
from a :class:`~plural.engine.backends.WorkerSetup` put in Ray's object store once (the
federation's data is sent once per actor, never per round). Actor ``k`` of ``W`` owns the
clients ``c`` with ``c % W == k``: every work item of client ``c`` (its training phases, its
evaluation, its gradient) runs on that actor, so a client's data is only ever read there.
Items travel in blocks (of :data:`BLOCK` items per actor): the items of one actor in a block
travel in one remote call, every block is sent at once, and results come back block by block
in the items' order (:meth:`RayBackend.imap`), so the server can fold them as they arrive.

Client states stay on the actors (:meth:`RayBackend.keep_states`, see
:mod:`plural.engine.kept_state`): each actor keeps the states of the clients it owns, in
memory or, with ``backend.state: disk``, in files on its own node (``worker-K/`` inside the
run's state folder), so a round ships only messages. Evaluation runs on the actors, next to
the states; a checkpoint gathers each actor's snapshot (its states, or with the disk store
the manifest of its files), and a resumed run hands each state to its owner again, so a
resumed run gives exactly the results of an uninterrupted one. Items and results are
serialised as plain pickles (through cloudpickle, so that tasks and classes defined in a
script work too); tensors are copied by value. Client randomness is derived from (seed,
round, client, phase), so results equal the sequential backend's exactly.

Without an address (and with Ray not yet initialised) the backend starts a local Ray
instance with this machine's cores. On a cluster, start Ray there (``ray start --head`` on the
head node, ``ray start --address=HEAD:6379`` on the others; plural must be installed on every
node) and give the head's address (``address="HEAD:6379"`` or ``"auto"`` on a node of the
cluster). Either way the session stays up for the rest of the process and serves its later
runs (see :func:`_connect`); :meth:`RayBackend.close` stops only the actors. If Ray is already
initialised in this process, the backend uses that instance. Settings read when Ray starts
(``RAY_ADDRESS``, the local CPU count) are those of the first run.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from plural.config import ConfigError
from plural.engine.backends import WorkerEnv, WorkerSetup, run_client_phase, warm_up_torch
from plural.engine.kept_state import HeldStates, run_kept_phase
from plural.engine.store import (
    SHARDED_KIND,
    DiskStateStore,
    InMemoryStateStore,
    StateStore,
    _states_of,
)
from plural.engine.threads import usable_cores

Item = TypeVar("Item")
Result = TypeVar("Result")

MISSING_RAY = "backend.name: 'ray' needs Ray: pip install \"plural[ray]\""
BLOCK = 32
"""Items per actor in one remote call; results come back block by block."""


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
        warm_up_torch()
        self.env = WorkerEnv(pickle.loads(setup))

    def pid(self) -> int:
        """The actor's process id (also tells the driver that start-up succeeded)."""
        return os.getpid()

    def run(self, payload: bytes) -> bytes:
        """Run a pickled ``(task, items)`` on this actor's environment; pickled results."""
        task, items = pickle.loads(payload)
        return _dumps([task(self.env, item) for item in items])

    # ---- the client states this actor keeps (see plural.engine.kept_state)

    def open_store(self, folder: str | None, temporary: bool) -> None:
        """Keep client states in memory (``folder`` None) or in files in ``folder``."""
        if folder is None:
            self.env.kept_states = InMemoryStateStore()  # type: ignore[attr-defined]
        else:
            self.env.kept_states = DiskStateStore(folder, temporary=temporary)  # type: ignore[attr-defined]

    def add_states(self, payload: bytes) -> list[int]:
        """Keep the pickled ``{client: state}`` too; the clients that have a state. Files a
        resumed run's checkpoint names are left alone until the next checkpoint is saved."""
        store = self.env.kept_states  # type: ignore[attr-defined]
        for client_id, state in pickle.loads(payload).items():
            store.put(client_id, state)
        return list(store)

    def snapshot_states(self) -> bytes:
        return _dumps(self.env.kept_states.snapshot())  # type: ignore[attr-defined]

    def commit_states(self) -> None:
        """The last snapshot is saved; the first time, files from before (a resumed run's
        old checkpoint) are removed from this actor's folder."""
        store = self.env.kept_states  # type: ignore[attr-defined]
        store.commit()
        if isinstance(store, DiskStateStore) and not getattr(self, "_tidied", False):
            store.restore(store.snapshot())  # adopts its own files, removes the others
            store.commit()
            self._tidied = True

    def close_store(self) -> None:
        store = getattr(self.env, "kept_states", None)
        if store is not None:
            store.close()


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
        _connect(ray, address)
        self._actors: list[Any] = []
        self.states: ActorStates | None = None
        try:
            self.workers = workers or _default_workers(ray, self.threads, self.num_clients)
            self._actors = _start_actors(ray, setup, self.workers, self.threads)
        except BaseException:
            self.close()
            raise

    def map(self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]) -> list[Result]:
        """``[task(env, item) for item in items]``, each item on its client's actor."""
        return list(self.imap(task, items))

    def imap(
        self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]
    ) -> Iterator[Result]:
        """:meth:`map`'s results block by block, in order, as the actors return them."""
        if not items:
            return
        ray = import_ray()
        if task is run_client_phase and self.states is not None:
            task = run_kept_phase  # type: ignore[assignment]
        size = BLOCK * self.workers
        blocks = []
        for start in range(0, len(items), size):
            block = items[start : start + size]
            calls = []
            for actor, positions in zip(self._actors, shard(block, self.workers), strict=True):
                if positions:
                    payload = _dumps((task, [block[p] for p in positions]))
                    calls.append((positions, actor.run.remote(payload)))
            blocks.append((len(block), calls))
        for length, calls in blocks:
            results: list[Any] = [None] * length
            for (positions, _), reply in zip(calls, ray.get([r for _, r in calls]), strict=True):
                for position, result in zip(positions, pickle.loads(reply), strict=True):
                    results[position] = result
            yield from results

    def keep_states(self, store: StateStore) -> ActorStates:
        """Keep the client states on the actors from now on: each actor opens a store of
        the kind of ``store`` (files in ``worker-K/`` of a disk store's folder) and receives
        the states ``store`` holds of the clients it owns (a resumed run's). Returns the
        server's side (see :class:`ActorStates`), which the engine uses as its store."""
        ray = import_ray()
        folder = getattr(store, "folder", None)
        temporary = bool(getattr(store, "temporary", False))
        opened = []
        for k, actor in enumerate(self._actors):
            path = None if folder is None else str(Path(folder) / f"worker-{k}")
            opened.append(actor.open_store.remote(path, temporary))
        ray.get(opened)
        self.states = ActorStates(self, store)
        self.states.restore({cid: store.get(cid) for cid in store})
        return self.states

    def close(self) -> None:
        """Stop the actors (closing the stores they keep). Ray itself stays up for the next run
        in this process (see :func:`_connect`)."""
        ray = import_ray()
        try:
            if self.states is not None and self._actors:
                ray.get([actor.close_store.remote() for actor in self._actors])
        finally:  # Ray outlives the run: actors left alive would hold their CPUs
            self.states = None
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []


class ActorStates(HeldStates):
    """The server's side of the client states the actors keep: which clients have one.
    :meth:`get` gives :data:`~plural.engine.kept_state.KEPT` for them (the actor swaps it
    for the state); snapshots and restores go through the actors."""

    holder = "actor"

    def __init__(self, backend: RayBackend, local: StateStore) -> None:
        super().__init__()
        self._backend = backend
        self._local: StateStore | None = local  # the run's store, until the first commit

    def snapshot(self) -> dict[str, Any]:
        """Every actor's snapshot: its states (memory) or the manifest of its files (disk)."""
        ray = import_ray()
        replies = ray.get([a.snapshot_states.remote() for a in self._backend._actors])
        return {"kind": SHARDED_KIND, "shards": [pickle.loads(r) for r in replies]}

    def commit(self) -> None:
        ray = import_ray()
        ray.get([a.commit_states.remote() for a in self._backend._actors])
        if self._local is not None:  # its states now live on the actors, checkpointed there
            self._local.restore({})
            self._local.close()
            self._local = None

    def restore(self, snapshot: Any) -> None:
        """Hand each state of ``snapshot`` (of any store) to the actor of its client (once,
        to actors that keep nothing yet)."""
        ray = import_ray()
        actors = self._backend._actors
        parts: dict[int, dict[int, Any]] = defaultdict(dict)
        for client_id, state in _states_of(snapshot):
            parts[client_id % len(actors)][client_id] = state
        calls = [
            actor.add_states.remote(_dumps(parts.get(k, {}))) for k, actor in enumerate(actors)
        ]
        self._held = set()
        for held in ray.get(calls):
            self._held.update(held)

    def close(self) -> None:
        if self._local is not None:
            self._local.close()


_connected_as: list[str | None] = []
"""The address this process's Ray session was started with by :func:`_connect` (empty when
plural did not start it)."""


def _connect(ray: Any, address: str | None) -> None:
    """Initialise Ray unless it already is, and leave it up until the process ends (Ray's own
    exit hook shuts it down). Ray does not support ``ray.shutdown()`` followed by another
    ``ray.init()`` in one process reliably (the second session can crash the process,
    ray-project/ray#31145), and several runs in one process (a sweep, a script) would pay
    Ray's start each time; so every run of a process shares one Ray session."""
    if ray.is_initialized():
        _check_same_cluster(ray, address)
        return
    options: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address is None and "RAY_ADDRESS" not in os.environ:
        options.update(num_cpus=usable_cores(), include_dashboard=False)
    with warnings.catch_warnings():
        # A tip about GPU visibility in future Ray versions; the actors use no GPU.
        warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
        ray.init(**options)
    _connected_as[:] = [address]


def release_session() -> None:
    """Shut down the Ray session plural started in this process, if any (a session the
    caller started is left alone). For what needs Ray to itself: a Flower simulation starts
    Ray with its own settings and shuts it down at its end."""
    if not _connected_as:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _connected_as.clear()


def _check_same_cluster(ray: Any, address: str | None) -> None:
    """A run asking for a cluster by ``host:port`` that is not the one this process is
    connected to is refused (it would silently run elsewhere). The same address string as
    the session was started with, or a host:port that resolves to the connected one, is
    accepted; ``auto`` and ``ray://`` addresses, which Ray resolves itself, are not checked."""
    if address is None or address == "auto" or "://" in address or [address] == _connected_as:
        return
    connected = ray.get_runtime_context().gcs_address
    if not _same_endpoint(address, connected):
        raise ConfigError(
            f"backend.address is {address!r}, but this process is already connected to the Ray "
            f"cluster at {connected!r}; Ray serves one cluster per process: run the two in "
            "separate processes, or leave backend.address out to use the connected one"
        )


def _same_endpoint(asked: str, connected: str) -> bool:
    """Whether ``host:port`` ``asked`` names the endpoint ``connected``: the same port, and
    hosts that resolve to a common address (names, case and IPv6 brackets aside)."""
    asked_host, asked_port = _host_and_port(asked)
    host, port = _host_and_port(connected)
    if asked_port != port:
        return False
    return asked_host == host or bool(_resolved(asked_host) & _resolved(host))


def _host_and_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host.strip("[]").lower(), port


def _resolved(host: str) -> set[str]:
    """The addresses ``host`` resolves to (none if it does not resolve)."""
    import socket

    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


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
