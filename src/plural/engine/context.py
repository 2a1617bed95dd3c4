"""One round's context: what :meth:`plural.core.algorithm.Algorithm.round` runs client
phases through (the message boundary), and the ledger of bytes and statistics it keeps."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from plural.core.algorithm import Algorithm, ModelMessage, ServerState, Update
from plural.core.params import distance, nbytes
from plural.core.rng import numpy_rng
from plural.core.trainer import TrainConfig
from plural.engine.backends import Backend, ClientWork, run_client_phase
from plural.engine.store import StateStore
from plural.robust.runtime import ClientFailure, ClientsFailed, GuardedAlgorithm, RoundHooks
from plural.safety.numerics import diverged, dropped_result, result_is_finite


@dataclasses.dataclass(frozen=True)
class FitRecord:
    """What the ledger keeps of a client's update: scalars and names, never its tensors."""

    loss: float
    num_samples: int
    sent: tuple[str, ...] = ()
    """Names of the floating-point parameters the update carried."""
    sent_outside: tuple[str, ...] = ()
    """Keys of what else it carried (``Update.extra``)."""

    @classmethod
    def of(cls, update: Update) -> FitRecord:
        params = update.params or {}
        sent = tuple(name for name, tensor in params.items() if tensor.is_floating_point())
        return cls(update.loss, update.num_samples, sent, tuple(update.extra))


class RoundLedger:
    """Per-client bytes and training statistics of the current round (numbers only, so
    that replies folded into the aggregate as they arrive are not kept alive here)."""

    def __init__(self) -> None:
        self.up: dict[int, int] = defaultdict(int)
        self.down: dict[int, int] = defaultdict(int)
        self.fit: dict[int, FitRecord] = {}
        self.drift: dict[int, float] = {}
        self.flops: dict[int, float] = defaultdict(float)
        self.seconds: dict[int, float] = defaultdict(float)
        self.dropped: list[int] = []  # clients whose non-finite updates were left out
        self.privacy_steps: dict[int, int] = defaultdict(int)
        self.released_epsilon: dict[int, float] = defaultdict(float)


def round_context(
    train: TrainConfig, unseen: Sequence[int], *args: Any, **kwargs: Any
) -> EngineRoundContext:
    """A round's context that knows the run's training settings (non-finite updates) and
    the clients that never train (``split.unseen_clients``)."""
    ctx = EngineRoundContext(*args, **kwargs)
    ctx.train = train
    left_out = set(unseen)
    ctx.clients = tuple(c for c in range(ctx.num_clients) if c not in left_out)
    return ctx


class EngineRoundContext:
    """The engine's side of :class:`plural.core.algorithm.RoundContext` for one round."""

    def __init__(
        self,
        round_index: int,
        seed: int,
        server: ServerState,
        algorithm: Algorithm,
        store: StateStore,
        backend: Backend,
        evaluating: bool = False,
        hooks: RoundHooks | None = None,
    ) -> None:
        self.round = round_index
        self.seed = seed
        self.server = server
        self.evaluating = evaluating
        self.num_clients = backend.num_clients
        self.clients: tuple[int, ...] = tuple(range(self.num_clients))
        self._algorithm = algorithm
        self._store = store
        self._backend = backend
        self.ledger = RoundLedger()
        self.train = TrainConfig()  # the run's: what to do with non-finite updates
        self.hooks = hooks
        self._pending: dict[int, Any] = {}  # states of a round that may be replayed

    def commit(self) -> None:
        """Keep the client states of a round that is not replayed."""
        for cid, state in self._pending.items():
            self._store.put(cid, state)
        self._pending.clear()

    def rng(self, purpose: str) -> np.random.Generator:
        return numpy_rng(self.seed, self.round, purpose)

    def _state(self, client_id: int) -> Any:
        if client_id in self._pending:
            return self._pending[client_id]
        if client_id in self._store:
            return self._store.get(client_id)
        return self._algorithm.init_client(self.server, client_id)

    def map(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        *,
        per_client: Mapping[int, Any] | None = None,
    ) -> list[Any]:
        return list(self.stream(phase, cohort, message, per_client=per_client))

    def stream(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        *,
        per_client: Mapping[int, Any] | None = None,
    ) -> Iterator[Any]:
        """:meth:`map`'s replies one at a time, in cohort order, each as the backend returns
        it; the engine keeps none of them (only their bytes and scalar statistics)."""
        if not hasattr(self._algorithm, phase):
            raise AttributeError(f"{type(self._algorithm).__name__} has no client phase {phase!r}")
        hooks = self.hooks
        algorithm: Any = self._algorithm
        if hooks is not None:
            self._charge_absent(hooks, message, per_client)
            algorithm = GuardedAlgorithm(algorithm) if hooks.guard else algorithm
        work = []
        shared: dict[int, tuple[object, int]] = {}  # messages often share their parts
        for cid in cohort:
            msg = per_client[cid] if per_client is not None else message
            self.ledger.down[cid] += nbytes(msg, shared)
            work.append(ClientWork(algorithm, phase, cid, self.round, msg, self._state(cid)))
        results = _imap(self._backend, run_client_phase, work)
        if hooks is not None:  # attacks and failures act on the whole round's replies
            results = iter(self._screen(hooks, phase, cohort, list(results), message, per_client))
        nonfinite: list[int] = []  # clients whose replies stop the run once all are in
        for item, result in zip(work, results, strict=True):
            cid = item.client_id
            if not result_is_finite(result):
                if self.train.on_nonfinite == "drop":
                    result = dropped_result(self.round, item, result, self.train.lr)
                    self.ledger.dropped.append(cid)
                else:
                    nonfinite.append(cid)
            reply, state, cost = result
            if hooks is not None and hooks.guard:
                self._pending[cid] = state
            else:
                self._store.put(cid, state)
            self.ledger.up[cid] += nbytes(reply)
            self.ledger.flops[cid] += cost.flops
            self.ledger.seconds[cid] += cost.seconds
            self.ledger.privacy_steps[cid] += cost.privacy_steps
            if cost.released_epsilon:
                self.ledger.released_epsilon[cid] += cost.released_epsilon
            if isinstance(reply, Update):
                self.ledger.fit[cid] = FitRecord.of(reply)
                msg = per_client[cid] if per_client is not None else message
                if isinstance(msg, ModelMessage) and reply.params is not None:
                    self.ledger.drift[cid] = distance(reply.params, msg.params)
            yield reply
        if nonfinite:
            raise diverged(self.round, nonfinite, self.train.lr)

    def _charge_absent(
        self, hooks: RoundHooks, message: Any, per_client: Mapping[int, Any] | None
    ) -> None:
        """Absent clients downloaded the round's first message, then never replied."""
        if hooks.charged:
            return
        hooks.charged = True
        for cid in hooks.absent:
            msg = message if per_client is None else per_client.get(cid)
            if msg is not None:
                self.ledger.down[cid] += nbytes(msg)

    def _screen(
        self,
        hooks: RoundHooks,
        phase: str,
        cohort: Sequence[int],
        results: list[Any],
        message: Any,
        per_client: Mapping[int, Any] | None,
    ) -> list[Any]:
        """Replay the round without clients that failed; poison the attackers' replies."""
        failed = {
            cid: (phase, reply.error)
            for cid, (reply, _, _) in zip(cohort, results, strict=True)
            if isinstance(reply, ClientFailure)
        }
        if failed:
            raise ClientsFailed(failed)
        replies = hooks.poison(
            phase,
            cohort,
            [reply for reply, _, _ in results],
            lambda cid: per_client[cid] if per_client is not None else message,
        )
        return [(r, state, cost) for r, (_, state, cost) in zip(replies, results, strict=True)]


def _imap(backend: Backend, task: Callable[[Any, Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``backend.imap`` (results as they come), or its ``map`` for a backend without one."""
    imap = getattr(backend, "imap", None)
    return imap(task, items) if imap is not None else iter(backend.map(task, items))
