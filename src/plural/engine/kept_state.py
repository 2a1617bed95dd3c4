"""Client states kept by the workers that run the clients (the Ray backend's actors).

With such a backend the engine's store on the server holds only which clients have a state;
:meth:`get` on it answers :data:`KEPT`, a marker that travels in the work item instead of
the state. The worker that owns the client swaps the marker for the state it keeps, runs
the phase, keeps the new state and sends back the marker again (or None when the client
has no state any more). A client without a state yet receives ``algorithm.init_client``'s
state from the server, as with every backend, so results do not change. Evaluation runs on
the worker too (:func:`evaluate_kept`): the algorithm picks the client's evaluated models
there, next to the state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from plural.core.algorithm import Algorithm, ServerState
from plural.core.trainer import EvalResult
from plural.data.federated import SplitName
from plural.engine.backends import (
    ClientWork,
    EvalWork,
    PhaseCost,
    WorkerEnv,
    evaluate_client,
    run_client_phase,
)
from plural.engine.store import StateStore


class _Kept:
    """The marker of a state that the client's worker keeps."""

    _instance: _Kept | None = None

    def __new__(cls) -> _Kept:  # one marker, also after pickling
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (_Kept, ())

    def __repr__(self) -> str:
        return "KEPT"


KEPT = _Kept()


def worker_store(env: WorkerEnv) -> StateStore:
    """The store of the client states this worker keeps (set when the worker started)."""
    store = getattr(env, "kept_states", None)
    if store is None:
        raise RuntimeError("this worker keeps no client states (no store was opened on it)")
    return store


def run_kept_phase(env: WorkerEnv, work: ClientWork) -> tuple[Any, Any, PhaseCost]:
    """:func:`run_client_phase` with the client's state kept on this worker."""
    store = worker_store(env)
    state = store.get(work.client_id) if work.state is KEPT else work.state
    reply, state, cost = run_client_phase(env, dataclasses.replace(work, state=state))
    store.put(work.client_id, state)
    return reply, (None if state is None else KEPT), cost


class HeldStates:
    """The server's side of client states kept elsewhere (Ray actors, Flower nodes): only
    which clients have one. :meth:`get` gives :data:`KEPT` for them; the holder swaps it
    for the state. Subclasses say how snapshots are taken (``holder`` names the keeper in
    errors)."""

    on_workers = True
    holder = "worker"

    def __init__(self) -> None:
        self._held: set[int] = set()

    def get(self, client_id: int) -> Any:
        return KEPT if client_id in self._held else None

    def put(self, client_id: int, state: Any) -> None:
        if state is None:
            self._held.discard(client_id)
        elif state is KEPT:
            self._held.add(client_id)
        else:
            raise TypeError(
                f"client {client_id}'s state is kept by its {self.holder}, not the server"
            )

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._held))


@dataclasses.dataclass(frozen=True)
class KeptEvalWork:
    """Evaluate a client whose state its worker keeps, with the models the algorithm picks
    for it there."""

    client_id: int
    round: int
    algorithm: Algorithm
    server: ServerState
    splits: tuple[SplitName, ...]


def evaluate_kept(env: WorkerEnv, work: KeptEvalWork) -> list[tuple[str, dict[str, EvalResult]]]:
    """(model name, results per split) of every model ``algorithm.evaluated`` names."""
    state = worker_store(env).get(work.client_id)
    models = work.algorithm.evaluated(work.server, state, work.client_id)
    return [
        (name, evaluate_client(env, EvalWork(work.client_id, work.round, params, work.splits)))  # type: ignore[arg-type]
        for name, params in models.items()
    ]
