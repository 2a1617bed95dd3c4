"""The one round loop.

For each round it samples a cohort, lets the algorithm run its round (client work goes
through the backend, under the robustness hooks when faults or attackers are configured),
scores every client on evaluated rounds, and hands a :class:`RoundEvent` to the round
callbacks. Everything written to disk (metrics, diagnostics, artifacts, checkpoints) is a
round callback (:mod:`plural.runner.recorders`), so the engine neither writes files nor
imports ``plural.report`` or ``plural.diagnostics``. Assembling a run from a config lives
above the engine, in :mod:`plural.runner`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pandas as pd

from plural.core.algorithm import Algorithm, ServerState
from plural.data.federated import FederatedDataset
from plural.engine.backends import Backend, WorkerEnv, WorkerSetup
from plural.engine.context import RoundLedger, round_context
from plural.engine.diagnostics import drift_summary
from plural.engine.heldout import (
    mark_unseen,
    metric_columns,
    newcomer_rows,
    seen_clients,
    server_rows,
    split_summaries,
)
from plural.engine.rows import METRIC_COLUMNS, evaluation_rows, summarize_round, training_rows
from plural.engine.sampler import sample_cohort
from plural.engine.store import StateStore
from plural.experiment import ExperimentConfig
from plural.robust.runtime import Robustness
from plural.safety.numerics import check_scores, check_server


@dataclasses.dataclass
class Progress:
    """Counters that survive a resume."""

    round: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    wall_time: float = 0.0
    last_eval: int = 0
    flops: float = 0.0

    def advance(self, round_index: int, ledger: RoundLedger, seconds: float, evaluated: bool):
        """Count a finished round."""
        self.round = round_index
        self.bytes_up += sum(ledger.up.values())
        self.bytes_down += sum(ledger.down.values())
        self.wall_time += seconds
        self.flops += sum(ledger.flops.values())
        if evaluated:
            self.last_eval = round_index


@dataclasses.dataclass
class RoundEvent:
    """What round callbacks receive after each round."""

    round: int
    server: ServerState
    rows: list[dict[str, Any]]
    """The round's metric rows (``fit`` rows, and evaluation rows when ``evaluated``)."""
    frame: pd.DataFrame
    """``rows`` as a frame with the columns of ``metrics.parquet``."""
    evaluated: bool
    ledger: RoundLedger
    store: StateStore
    backend: Backend
    progress: Progress
    """The run's counters, this round included."""
    record: dict[str, Any]
    """The round's line of ``diagnostics.jsonl``; callbacks' metrics are added to it."""
    history: list[dict[str, Any]]
    """The records of the earlier rounds."""


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    """A round callback's answer: stop the run after this round, and/or metrics to add to
    the round's record."""

    stop: bool = False
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class RoundCallback(Protocol):
    def on_round(self, event: RoundEvent) -> RoundOutcome | None:
        """React to a finished round (see :class:`RoundEvent`)."""
        ...


class RoundLoop:
    """The rounds of one run, from ``progress.round + 1`` to ``cfg.rounds``."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        algorithm: Algorithm,
        federation: FederatedDataset,
        store: StateStore,
        progress: Progress,
        history: list[dict[str, Any]],
        robust: Robustness | None = None,
        setup: WorkerSetup | None = None,
    ) -> None:
        self.cfg = cfg
        self.algorithm = algorithm
        self.federation = federation
        self.store = store
        self.progress = progress
        self.history = history
        self.robust = robust if robust is not None and robust.active else None
        self.stopped_early = False
        self.setup = setup
        self._env: WorkerEnv | None = None

    def run(
        self,
        server: ServerState,
        backend: Backend,
        round_callbacks: Sequence[RoundCallback],
        callbacks: Sequence[Any] = (),
    ) -> ServerState:
        """Play the remaining rounds; ``round_callbacks`` get each round's event, then
        ``callbacks`` their ``on_round_end(round, summary)``. Any of them may stop the run."""
        for round_index in range(self.progress.round + 1, self.cfg.rounds + 1):
            server, event = self.play(round_index, server, backend)
            stop = self._notify(round_callbacks, event)
            summary = (
                split_summaries(event.frame, round_index, summarize_round)
                if event.evaluated
                else {}
            )
            stop |= any([end(round_index, summary) for end in _hooks(callbacks, "on_round_end")])
            if stop:
                self.stopped_early = round_index < self.cfg.rounds
                break
        return server

    def play(
        self, round_index: int, server: ServerState, backend: Backend
    ) -> tuple[ServerState, RoundEvent]:
        """One round: sample, run the algorithm's round, check and score the result."""
        cfg, started = self.cfg, time.perf_counter()
        available = (
            self.robust.available(round_index, cfg.sampling.round_hours) if self.robust else None
        )
        available = seen_clients(self.federation.num_clients, self.federation.unseen, available)
        cohort = sample_cohort(
            self.federation.num_clients, cfg.sampling, cfg.seed, round_index, available
        )
        evaluate = round_index % cfg.eval.every == 0 or round_index == cfg.rounds
        context = functools.partial(
            round_context,
            cfg.train,
            self.federation.unseen,
            *(round_index, cfg.seed, server, self.algorithm, self.store, backend, evaluate),
        )
        played: dict[str, Any] = {}
        if self.robust is not None:
            server, ctx, played = self.robust.play_round(
                self.algorithm, server, round_index, cohort, available, self.history, context
            )
        else:
            ctx = context()
            if cohort:  # a Poisson-sampled round may have no client
                server = self.algorithm.round(server, cohort, ctx)
        check_server(server.params, round_index, cfg.train.lr)
        rows = training_rows(round_index, ctx.ledger)
        if evaluate:
            rows += evaluation_rows(
                round_index,
                self.algorithm,
                server,
                self.store,
                backend,
                self.federation.num_clients,
                cfg.eval.splits,
            )
            rows = self._held_out_rows(rows, round_index, server)
            check_scores(rows, round_index, cfg.train.lr)
        mark_unseen(rows, self.federation.unseen)
        self.progress.advance(round_index, ctx.ledger, time.perf_counter() - started, evaluate)
        record: dict[str, Any] = {"round": round_index, **drift_summary(ctx.ledger.drift)}
        if ctx.ledger.dropped:
            record["dropped_nonfinite"] = sorted(ctx.ledger.dropped)
        record.update(played)
        frame = pd.DataFrame(rows, columns=metric_columns(rows, METRIC_COLUMNS))
        event = RoundEvent(
            round_index,
            server,
            rows,
            frame,
            evaluate,
            ctx.ledger,
            self.store,
            backend,
            self.progress,
            record,
            self.history,
        )
        return server, event

    def _held_out_rows(
        self, rows: list[dict[str, Any]], round_index: int, server: ServerState
    ) -> list[dict[str, Any]]:
        """Newcomers' rows for unseen clients of clustered methods; the server set's rows."""
        federation = self.federation
        if federation.server is None and not federation.unseen:
            return rows
        env = self._env = self._env or WorkerEnv(self.setup)  # type: ignore[arg-type]
        rows = newcomer_rows(
            rows, self.algorithm, server, env, federation.unseen, round_index, self.cfg.eval.splits
        )
        if federation.server is not None:
            rows += server_rows(round_index, self.algorithm, server, env, federation.server)
        return rows

    @staticmethod
    def _notify(round_callbacks: Sequence[RoundCallback], event: RoundEvent) -> bool:
        stop = False
        for callback in round_callbacks:
            outcome = callback.on_round(event)
            if outcome is not None:
                event.record.update(outcome.metrics)
                stop |= outcome.stop
        return stop


def _hooks(callbacks: Sequence[Any], name: str) -> list[Any]:
    """The ``name`` methods of the callbacks that define one."""
    return [getattr(cb, name) for cb in callbacks if hasattr(cb, name)]
