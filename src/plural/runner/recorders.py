"""What a run records as it goes, as round callbacks of the engine's loop (in this order):
robustness metrics, cluster quality, gradient dissimilarity and the privacy accountant add
to the round's diagnostics record; then the record, the artifacts, the metrics and summary,
and the checkpoint are written. Without a run directory only the in-memory parts run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from plural.core.algorithm import Algorithm, ServerState
from plural.core.cluster_quality import cluster_quality
from plural.core.moments import GradientMoments
from plural.data.federated import FederatedDataset
from plural.diagnostics.plots import plot_similarity
from plural.engine.backends import WorkerEnv, WorkerSetup
from plural.engine.diagnostics import GradientWork, client_gradient
from plural.engine.heldout import split_summaries
from plural.engine.loop import Progress, RoundEvent, RoundOutcome
from plural.engine.rows import summarize_round
from plural.experiment import ExperimentConfig
from plural.privacy.run import PrivateRun
from plural.report.rundir import RunDirectory
from plural.robust.runtime import Robustness

CHECKPOINT_VERSION = 2
"""2: server states are typed parts (``ServerState.part``); 1 held string-keyed values."""
GRADIENT_CHUNK = 32  # clients whose gradients are in memory at once


class RobustMetrics:
    """Attack success and the other robustness figures, on evaluated rounds."""

    def __init__(self, robust: Robustness, algorithm: Algorithm, setup: WorkerSetup) -> None:
        self.robust, self.algorithm, self.setup = robust, algorithm, setup
        self._env: WorkerEnv | None = None

    def on_round(self, event: RoundEvent) -> RoundOutcome | None:
        if not event.evaluated:
            return None
        self._env = self._env or WorkerEnv(self.setup)
        metrics = self.robust.round_metrics(
            event.rows, self.algorithm, event.server, event.store, self._env
        )
        return RoundOutcome(metrics=metrics)


class ClusterQuality:
    """Clusters, ARI/NMI against the true groups and changes, for methods that cluster; of
    the clients that train (unseen clients are recorded as -1, unassigned)."""

    def __init__(
        self, algorithm: Algorithm, groups: np.ndarray | None, unseen: Sequence[int] = ()
    ) -> None:
        self.algorithm, self.groups, self.unseen = algorithm, groups, list(unseen)

    def on_round(self, event: RoundEvent) -> RoundOutcome | None:
        assignment = self.algorithm.cluster_assignment(event.server)
        if assignment is None:
            return None
        if self.unseen:
            assignment = np.array(assignment, dtype=np.int64)
            assignment[self.unseen] = -1
        previous = last_assignment(event.history)
        return RoundOutcome(metrics=cluster_quality(assignment, self.groups, previous))


class GradientDissimilarity:
    """G^2 / B^2 of the global model over every client, every ``every`` rounds."""

    def __init__(self, every: int, num_clients: int) -> None:
        self.every, self.num_clients = every, num_clients

    def on_round(self, event: RoundEvent) -> RoundOutcome | None:
        if event.round % self.every != 0:
            return None
        moments = GradientMoments()
        clients = list(range(self.num_clients))
        for start in range(0, len(clients), GRADIENT_CHUNK):
            work = [
                GradientWork(c, event.round, event.server.params)
                for c in clients[start : start + GRADIENT_CHUNK]
            ]
            for samples, gradient in event.backend.map(client_gradient, work):
                moments.add(gradient, float(samples))
        return RoundOutcome(metrics=moments.result())


class PrivacyAccounting:
    """The round's privacy spending, from what each update sent."""

    def __init__(self, privacy: PrivateRun) -> None:
        self.privacy = privacy

    def on_round(self, event: RoundEvent) -> RoundOutcome | None:
        ledger = event.ledger
        spent = self.privacy.after_round(ledger.fit, ledger.privacy_steps, ledger.released_epsilon)
        return RoundOutcome(metrics=spent)


class DiagnosticsLog:
    """Keeps the round's record (``Results.diagnostics``) and appends it to
    ``diagnostics.jsonl``."""

    def __init__(self, run_dir: RunDirectory | None) -> None:
        self.run_dir = run_dir

    def on_round(self, event: RoundEvent) -> None:
        event.history.append(event.record)
        if self.run_dir is not None:
            self.run_dir.append_diagnostics(event.record)


class ArtifactWriter:
    """Saves the algorithm's new artifacts; clients x clients matrices are also drawn as
    heatmaps ordered by true group."""

    def __init__(
        self, run_dir: RunDirectory, algorithm: Algorithm, federation: FederatedDataset
    ) -> None:
        self.run_dir, self.algorithm, self.federation = run_dir, algorithm, federation

    def on_round(self, event: RoundEvent) -> None:
        n = self.federation.num_clients
        for name, value in self.algorithm.artifacts(event.server).items():
            if self.run_dir.has_artifact(name):
                continue
            if isinstance(value, np.ndarray) and value.shape == (n, n):
                plot_similarity(
                    value,
                    self.run_dir.artifact_path(name, ".png"),
                    groups=self.federation.groups,
                    title=name.replace("_", " "),
                    limit=None,
                    label="value",
                )
            self.run_dir.write_artifact(name, value)


@dataclasses.dataclass
class RunSummary:
    """``summary.json``: the last evaluated round's per-split summaries, clustering, privacy,
    robustness, the algorithm's own figures and the run's costs."""

    cfg: ExperimentConfig
    algorithm: Algorithm
    federation: FederatedDataset
    progress: Progress
    history: list[dict[str, Any]]
    privacy: PrivateRun | None = None
    robust: Robustness | None = None

    def __call__(
        self, metrics: pd.DataFrame, server: ServerState, stopped_early: bool = False
    ) -> dict[str, Any]:
        c, cfg = self.progress, self.cfg
        details = self.algorithm.summary(server)
        robust = self.robust if self.robust is not None and self.robust.active else None
        return {
            "name": cfg.name,
            "algorithm": cfg.algorithm.name,
            "dataset": self.federation.name,
            "seed": cfg.seed,
            "clients": self.federation.num_clients,
            "round": c.last_eval,
            "rounds": cfg.rounds,
            "rounds_done": c.round,
            "complete": c.round == cfg.rounds,
            "stopped_early": stopped_early,
            **split_summaries(metrics, c.last_eval, summarize_round),
            **self._clustering(),
            **({"privacy": self.privacy.summary()} if self.privacy is not None else {}),
            **(robust.summary(cfg, self.history, metrics, c.last_eval) if robust else {}),
            **({cfg.algorithm.name: details} if details else {}),
            "bytes": {"up": c.bytes_up, "down": c.bytes_down, "total": c.bytes_up + c.bytes_down},
            "train_flops": c.flops,
            "wall_time_s": round(c.wall_time, 3),
        }

    def _clustering(self) -> dict[str, Any]:
        """The last round's cluster quality, for methods that cluster clients."""
        for record in reversed(self.history):
            if "assignment" in record:
                keys = ("clusters", "ari", "nmi", "changed")
                return {"clustering": {k: record[k] for k in keys if k in record}}
        return {}


class MetricsWriter:
    """Keeps the round's rows; writes them, the timeline and (evaluated rounds) the summary."""

    def __init__(
        self, run_dir: RunDirectory | None, frames: list[pd.DataFrame], summary: RunSummary
    ) -> None:
        self.run_dir, self.frames, self.summary = run_dir, frames, summary

    def on_round(self, event: RoundEvent) -> None:
        self.frames.append(event.frame)
        if self.run_dir is None:
            return
        c = event.progress
        self.run_dir.write_round_metrics(event.round, event.rows)
        self.run_dir.append_record(
            self.run_dir.timeline_path,
            {
                "round": event.round,
                "wall_time_s": round(c.wall_time, 4),
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "train_flops": c.flops,
            },
        )
        if event.evaluated:
            summary = self.summary(event.frame, event.server)
            self.run_dir.write_json(self.run_dir.summary_path, summary)


class Checkpointer:
    """``checkpoint.pt`` after every round: config, server state, client states (or the
    manifest of their files), counters and the privacy ledger."""

    def __init__(
        self, run_dir: RunDirectory, cfg: ExperimentConfig, privacy: PrivateRun | None
    ) -> None:
        self.run_dir, self.cfg, self.privacy = run_dir, cfg, privacy

    def on_round(self, event: RoundEvent) -> None:
        self.run_dir.save_checkpoint(
            {
                "version": CHECKPOINT_VERSION,
                "config": self.cfg.to_dict(),
                "server": event.server,
                "store": event.store.snapshot(),
                "progress": dataclasses.asdict(event.progress),
                **({"privacy": self.privacy.ledger.to_dict()} if self.privacy else {}),
            }
        )
        event.store.commit()


def last_assignment(history: list[dict[str, Any]]) -> np.ndarray | None:
    """The latest recorded cluster assignment, if any."""
    for record in reversed(history):
        if "assignment" in record:
            return np.asarray(record["assignment"])
    return None
