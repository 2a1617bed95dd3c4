"""Client backends: where client work runs.

Every backend maps a task over work items. A work item holds only what crosses the
server/client boundary (client id, round, message, the client's own state); the federation
and the model template are given to each worker once, when it starts. Client randomness is
derived from (seed, round, client, phase), so results do not depend on the backend.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import functools
import importlib
import math
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from plural.config import ConfigError
from plural.core.algorithm import Algorithm, OnClient, full_params
from plural.core.params import Params, state_of
from plural.core.rng import torch_generator
from plural.core.trainer import EvalResult, LocalTrainer, Mixture, TrainConfig
from plural.data.federated import FederatedDataset, SplitName
from plural.engine.threads import ThreadGovernor, choose_threads, cores_per_process, usable_cores
from plural.experiment import BackendConfig
from plural.registry import COMPONENT_MODULES

CPU = torch.device("cpu")
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True, eq=False)
class ClientModels:
    """The modules clients train: one per architecture, and each client's architecture."""

    members: tuple[nn.Module, ...]
    architecture: tuple[int, ...] = ()
    """Index into ``members`` per client; () when every client has ``members[0]``."""

    def index_of(self, client_id: int) -> int:
        return self.architecture[client_id] if self.architecture else 0

    @property
    def heterogeneous(self) -> bool:
        return len(self.members) > 1


@dataclasses.dataclass(frozen=True, eq=False)
class WorkerSetup:
    """What a worker needs once: the clients' data, the model template(s), training settings."""

    federation: FederatedDataset
    model: nn.Module | ClientModels
    train: TrainConfig
    seed: int
    eval_batch_size: int = 1024
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' (see :func:`resolve_device`)."""
    initial_params: tuple[Params, ...] = dataclasses.field(default=(), repr=False)
    """Each architecture's initial parameters, copied when the setup is made: in-process
    trainers load every client's parameters into the shared templates, so an environment
    built later (for newcomers or the server set) cannot read them off the modules."""

    def __post_init__(self) -> None:
        if not self.initial_params:
            members = self.model.members if isinstance(self.model, ClientModels) else (self.model,)
            object.__setattr__(self, "initial_params", tuple(state_of(m) for m in members))


def resolve_device(name: str) -> torch.device:
    """The torch device called ``name``; a ConfigError naming what this machine offers when it
    is not available ('auto': cuda, else mps, else cpu)."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = torch.device(name)
    available = {"cpu": True, "cuda": cuda, "mps": mps}.get(device.type, False)
    if device.type == "cuda" and cuda and (device.index or 0) >= torch.cuda.device_count():
        available = False
    if not available:
        offered = ["cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
        raise ConfigError(
            f"backend.device: {name!r} is not available on this machine (torch "
            f"{torch.__version__}); available: {', '.join(offered)}, or 'auto'"
        )
    return device


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside it (dicts, lists, tuples, dataclasses) on ``device``;
    other objects unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return type(value)((k, to_device(v, device)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(to_device(v, device) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: to_device(getattr(value, f.name), device)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    return value


class WorkerEnv:
    """A worker's long-lived environment, built once from a :class:`WorkerSetup`: one
    trainer per architecture, each with that architecture's initial parameters."""

    def __init__(self, setup: WorkerSetup) -> None:
        models = setup.model
        if isinstance(models, nn.Module):
            models = ClientModels((models,))
        self.device = resolve_device(setup.device)
        self.federation = setup.federation
        initial = setup.initial_params
        if self.device.type != "cpu":
            self.federation = self.federation.to(self.device)
            members = tuple(copy.deepcopy(m).to(self.device) for m in models.members)
            models = ClientModels(members, models.architecture)
            initial = tuple(to_device(params, self.device) for params in initial)
        self.models = models
        self.trainers = [
            LocalTrainer(model, setup.train, dict(params))
            for model, params in zip(models.members, initial, strict=True)
        ]
        self.seed = setup.seed
        self.eval_batch_size = setup.eval_batch_size

    @property
    def trainer(self) -> LocalTrainer:
        """The trainer of the first architecture (the only one for a homogeneous model)."""
        return self.trainers[0]

    def trainer_for(self, client_id: int) -> LocalTrainer:
        return self.trainers[self.models.index_of(client_id)]


@dataclasses.dataclass(frozen=True)
class PhaseCost:
    """What one client phase cost its worker: training FLOPs and wall time."""

    flops: float
    seconds: float
    privacy_steps: int = 0
    """DP-SGD steps run (counted by the privacy accountant)."""
    released_epsilon: float = 0.0
    """Pure epsilon of the client's own epsilon-DP releases (see ``WorkMeter``)."""


@dataclasses.dataclass(frozen=True)
class ClientWork:
    """One client's part of one phase of a round."""

    algorithm: Algorithm
    phase: str
    client_id: int
    round: int
    message: Any
    state: Any


@dataclasses.dataclass(frozen=True)
class EvalWork:
    """Evaluate one client's model on some of its splits."""

    client_id: int
    round: int
    params: Params | Mixture | OnClient
    """A model, a :class:`~plural.core.trainer.Mixture` of models (FedEM), or some entries
    completed with the client's own initial parameters (:class:`OnClient`)."""
    splits: tuple[SplitName, ...]


def run_client_phase(
    env: WorkerEnv, work: ClientWork, trainer: LocalTrainer | None = None
) -> tuple[Any, Any, PhaseCost]:
    """Call ``algorithm.<phase>`` for one client with its data, its architecture's trainer
    (or ``trainer``) and its rng; returns (reply, new state, cost)."""
    client = env.federation.client(work.client_id, work.round)
    rng = torch_generator(env.seed, work.round, work.client_id, work.phase)
    phase = getattr(work.algorithm, work.phase)
    trainer = env.trainer_for(work.client_id) if trainer is None else trainer
    trainer.meter.reset()
    started = time.perf_counter()
    message, state = work.message, work.state
    if env.device.type != "cpu":
        message, state = to_device(message, env.device), to_device(state, env.device)
    reply, state = phase(message, state, client, trainer, rng)
    if env.device.type != "cpu":  # what crosses back to the server lives on the CPU
        reply, state = to_device(reply, CPU), to_device(state, CPU)
    seconds = time.perf_counter() - started
    meter = trainer.meter
    cost = PhaseCost(meter.flops, seconds, meter.privacy_steps, meter.released_epsilon)
    return reply, state, cost


def evaluate_client(env: WorkerEnv, work: EvalWork) -> dict[str, EvalResult]:
    """Loss and accuracy of ``work.params`` (a model or a mixture) on the client's splits."""
    client = env.federation.client(work.client_id, work.round)
    trainer = env.trainer_for(work.client_id)
    params = work.params if isinstance(work.params, Mixture) else full_params(work.params, trainer)
    results = {}
    for split in work.splits:
        data = client.split(split)
        if isinstance(params, Mixture):
            results[split] = trainer.evaluate_mixture(params, data.x, data.y, env.eval_batch_size)
        else:
            results[split] = trainer.evaluate(params, data.x, data.y, env.eval_batch_size)
    return results


class Backend(Protocol):
    num_clients: int

    def map(self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]) -> list[Result]:
        """``[task(env, item) for item in items]``, in order."""
        ...

    def imap(
        self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]
    ) -> Iterator[Result]:
        """The results of :meth:`map` one at a time, in order, each as soon as it (and those
        before it) are done, so that a caller can fold them without holding them all."""
        ...

    def close(self) -> None: ...


class SequentialBackend:
    """Clients one after another in this process (no copies, no pickling).

    ``threads`` sets torch's thread count for the run (restored on close); small models
    often run faster on one thread than on several competing ones. With ``adapt``, a
    :class:`~plural.engine.threads.ThreadGovernor` moves between one thread and
    ``threads`` with the load other processes put on this process's cores.
    """

    def __init__(self, setup: WorkerSetup, threads: int | None = None, adapt: bool = False):
        self.env = WorkerEnv(setup)
        self.num_clients = setup.federation.num_clients
        self._restore_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.governor = ThreadGovernor(self.threads) if adapt and self.threads > 1 else None

    @property
    def threads_used(self) -> dict[int, int]:
        """Client tasks run at each thread count ({threads: tasks}; empty when fixed)."""
        return dict(self.governor.used) if self.governor is not None else {}

    def map(self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]) -> list[Result]:
        return list(self.imap(task, items))

    def imap(
        self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]
    ) -> Iterator[Result]:
        for item in items:
            self.tick()
            yield task(self.env, item)

    def tick(self) -> None:
        """Before each piece of work: let the governor adjust the threads if it is due."""
        if self.governor is not None:
            self.governor.tick()

    def close(self) -> None:
        torch.set_num_threads(self._restore_threads)


_WORKER_ENV: WorkerEnv | None = None


TORCH_IMPORTED_LATE = "torch._dynamo"
"""What torch imports when a process builds its first optimizer (``torch.optim`` wraps its
methods with a lazy ``import torch._dynamo``): about 2 s of one core."""


def warm_up_torch() -> None:
    """Import now what torch would import during the first local fit, so that a pool's
    workers pay it together at start-up rather than one after another in round 1."""
    importlib.import_module(TORCH_IMPORTED_LATE)


def _init_worker(setup_path: str, threads: int) -> None:
    global _WORKER_ENV
    torch.set_num_threads(threads)
    warm_up_torch()  # already imported when forked from the preloaded server
    with open(setup_path, "rb") as handle:
        _WORKER_ENV = WorkerEnv(pickle.load(handle))


def _run_chunk(task: Callable[[WorkerEnv, Any], Any], payload: bytes) -> bytes:
    # Items and results travel as plain pickles: tensors are copied by value instead of
    # through torch's shared-memory file descriptors, which run out with many clients.
    assert _WORKER_ENV is not None, "worker was not initialised"
    items = pickle.loads(payload)
    return pickle.dumps(
        [task(_WORKER_ENV, item) for item in items], protocol=pickle.HIGHEST_PROTOCOL
    )


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start. On Linux, forked from a server process that has imported
    torch and plural's components once (``forkserver``), so a pool starts in a fraction of a
    second instead of importing torch in every worker; each worker still starts clean (the
    server never ran torch, so no thread pool or device state is inherited; ``sys.path`` and
    the working folder are the parent's, as with spawn, but environment variables are those
    of the moment the server started, at the first pool). Elsewhere, ``spawn`` (fork is
    unsafe on macOS, absent on Windows)."""
    if not sys.platform.startswith("linux"):
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *COMPONENT_MODULES, TORCH_IMPORTED_LATE])
    return context


class ProcessBackend:
    """A pool of persistent worker processes on this machine.

    Each worker loads the federation once at start-up, from a file written once (passing
    it as a start-up argument would make workers start one after another); per round only
    work items (messages and client states) and replies cross. Workers use ``threads``
    torch threads each, so that workers x threads does not exceed the cores.
    """

    def __init__(self, setup: WorkerSetup, workers: int | None = None, threads: int | None = None):
        self.num_clients = setup.federation.num_clients
        self.workers = workers or usable_cores()
        self.threads = threads or cores_per_process(self.workers)
        self._setup_dir = tempfile.mkdtemp(prefix="plural-workers-")
        setup_path = os.path.join(self._setup_dir, "setup.pkl")
        with open(setup_path, "wb") as handle:
            pickle.dump(setup, handle, protocol=pickle.HIGHEST_PROTOCOL)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=worker_context(),
            initializer=_init_worker,
            initargs=(setup_path, self.threads),
        )

    def map(self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]) -> list[Result]:
        return list(self.imap(task, items))

    def imap(
        self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]
    ) -> Iterator[Result]:
        """Results chunk by chunk, in order, as the workers return them."""
        if not items:
            return
        chunk = math.ceil(len(items) / (self.workers * 2))
        payloads = [
            pickle.dumps(list(items[i : i + chunk]), protocol=pickle.HIGHEST_PROTOCOL)
            for i in range(0, len(items), chunk)
        ]
        for reply in self._pool.map(functools.partial(_run_chunk, task), payloads):
            yield from pickle.loads(reply)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._setup_dir, ignore_errors=True)


def step_flops(setup: WorkerSetup) -> float:
    """FLOPs of one training step (forward and backward of a minibatch) of the largest model
    clients train: what sets the threads worth using. Counted by torch's FLOP counter on a
    forward pass of two training samples, times three for the backward pass."""
    samples = next((c.train.x[:2] for c in setup.federation.clients if len(c.train.x)), None)
    if samples is None:
        return 0.0
    members = setup.model.members if isinstance(setup.model, ClientModels) else (setup.model,)
    per_sample = max(_forward_flops(member, samples) for member in members) / len(samples)
    return 3 * per_sample * setup.train.batch_size


def _forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    replica = copy.deepcopy(model).eval()  # neither buffers nor random state move
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        replica(x)
    return float(counter.get_total_flops())


def backend_threads(setup: WorkerSetup, config: BackendConfig) -> int:
    """Torch threads per process of the backend ``config`` names (see
    :mod:`plural.engine.threads`); ``backend.threads`` when the config gives it."""
    if config.thread_override is not None:
        return config.thread_override
    processes = 1
    if config.name in ("process", "ray"):
        processes = config.workers or usable_cores()
    return choose_threads(step_flops(setup), processes)
