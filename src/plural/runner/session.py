"""``plural.run``: validate the config, assemble the run, play its rounds with the engine's
loop and the recorders, and return the results. A resumed run continues from the checkpoint
and gives exactly the results of an uninterrupted one."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from plural.config import ConfigError
from plural.core.algorithm import Algorithm, ServerState
from plural.core.params import state_of
from plural.core.rng import numpy_rng
from plural.data.federated import FederatedDataset
from plural.data.splits import record_split_source
from plural.data.types import ArrayDataset
from plural.engine.backend_registry import make_backend
from plural.engine.backends import ClientModels, WorkerSetup, resolve_device
from plural.engine.callbacks import Callback, ProgressBar, notify
from plural.engine.initial import reinitialised
from plural.engine.loop import Progress, RoundCallback, RoundLoop
from plural.engine.rows import METRIC_COLUMNS
from plural.engine.store import StateStore, make_store
from plural.experiment import ExperimentConfig, differing_sections, load_config, with_defaults
from plural.privacy.run import PrivateRun, plan_privacy
from plural.report.environment import environment_entry
from plural.report.header import run_info
from plural.report.rundir import RunDirectory
from plural.robust.runtime import Robustness, check_algorithm
from plural.runner.assembly import (
    ModelSource,
    build_algorithm,
    build_client_models,
    build_federation,
    federation_info,
)
from plural.runner.recorders import (
    CHECKPOINT_VERSION,
    ArtifactWriter,
    Checkpointer,
    ClusterQuality,
    DiagnosticsLog,
    GradientDissimilarity,
    MetricsWriter,
    PrivacyAccounting,
    RobustMetrics,
    RunSummary,
)
from plural.safety.checks import check_config, check_federation, check_validation
from plural.safety.runlock import check_run_target, run_lock

# Settings that may change when a run is resumed: they do not change the results.
RESUMABLE_CHANGES = ("rounds", "backend", "eval", "name", "diagnostics", "allow_import")


@dataclasses.dataclass
class Results:
    """What a run produced. ``metrics`` has one row per (round, client, split)."""

    config: ExperimentConfig
    summary: dict[str, Any]
    metrics: pd.DataFrame
    server: ServerState
    run_dir: Path | None = None
    diagnostics: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    """One row per round: participants' drift (mean, max) and, where measured, G^2 / B^2."""

    def final(self, split: str = "test") -> pd.DataFrame:
        """Per-client rows of ``split`` at the last evaluated round."""
        rows = self.metrics[self.metrics["split"] == split]
        return rows[rows["round"] == rows["round"].max()].reset_index(drop=True)


@dataclasses.dataclass
class _Run:
    """A run assembled from its config, before its first round."""

    cfg: ExperimentConfig
    algorithm: Algorithm
    federation: FederatedDataset
    setup: WorkerSetup
    server: ServerState
    run_dir: RunDirectory | None
    privacy: PrivateRun | None
    robust: Robustness
    device: Any
    models: ClientModels


def run(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    resume: bool = False,
    dataset: ArrayDataset | FederatedDataset | None = None,
    model: ModelSource | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = None,
    keep_weights: bool = False,
) -> Results:
    """Run one experiment (see the module docstring) and return its results.

    ``out`` is the run directory; ``None`` keeps nothing on disk (and cannot resume).
    ``dataset`` / ``model`` replace the config's with the user's own data or module; a
    module is re-initialised from the run's seed unless ``keep_weights`` is True.
    ``progress`` shows a progress bar (default: only when stderr is a terminal).
    ``callbacks`` get ``on_round_end(round, summary)``, and ``on_round(event)`` (a
    :class:`plural.engine.loop.RoundEvent`) where they define it.
    """
    given = [name for name, obj in (("dataset", dataset), ("model", model)) if obj is not None]
    if isinstance(dataset, FederatedDataset):
        given.append("partition")
    cfg = load_config(config, overrides, provided=given)
    assembled = _assemble(cfg, out, resume, dataset, model, keep_weights)
    run_dir = assembled.run_dir
    with run_lock(run_dir.path) if run_dir is not None else contextlib.nullcontext():
        results = _play(assembled, resume, callbacks, progress)
    notify(callbacks, "on_run_end", results)
    return results


def _assemble(
    cfg: ExperimentConfig,
    out: str | Path | None,
    resume: bool,
    dataset: ArrayDataset | FederatedDataset | None,
    model: ModelSource | None,
    keep_weights: bool = False,
) -> _Run:
    """Every check that can fail before work starts, then the federation, models and the
    algorithm's initial state."""
    device = resolve_device(cfg.backend.device)  # fail before any data is loaded
    algorithm = build_algorithm(cfg)
    algorithm.check(cfg)
    check_config(cfg)
    check_algorithm(cfg, algorithm)
    privacy = plan_privacy(cfg, algorithm)
    run_dir = RunDirectory(out) if out is not None else None
    if resume and run_dir is None:
        raise ConfigError("resume: needs the run directory (out=...) to resume from")
    if run_dir is not None:
        check_run_target(run_dir.path)  # before any data is loaded; writes nothing
    federation = build_federation(cfg, dataset)
    cfg = record_split_source(cfg, federation)
    if isinstance(model, nn.Module) and not keep_weights:
        model = reinitialised(model, cfg.seed)
    robust = Robustness.build(cfg, federation)
    federation = robust.poison_data(cfg, federation)
    models = build_client_models(cfg, federation, algorithm, model)
    check_federation(cfg, federation, models)
    check_validation(algorithm, federation)
    info = federation_info(federation, models, cfg.seed)
    if privacy is not None:
        privacy.start(info.num_clients, federation.sizes("train").tolist(), info.parameters)
    server = algorithm.init(state_of(models.members[0]), info, numpy_rng(cfg.seed, "init"))
    train = privacy.train_config(cfg.train) if privacy is not None else cfg.train
    setup = WorkerSetup(
        federation, models, train, cfg.seed, cfg.eval.batch_size, cfg.backend.device
    )
    return _Run(cfg, algorithm, federation, setup, server, run_dir, privacy, robust, device, models)


def _play(run: _Run, resume: bool, callbacks: Sequence[Callback], progress: bool | None) -> Results:
    """Restore or start the run directory, then play the rounds; the results."""
    cfg, run_dir = run.cfg, run.run_dir
    store = make_store(cfg.backend, run_dir.path if run_dir is not None else None)
    counters, frames, server = Progress(), [], run.server
    resumed = False
    if run_dir is not None:
        if resume and run_dir.has_checkpoint():
            server, counters = _restore(run_dir, cfg, store, run.privacy)
            resumed = True
            run_dir.drop_rounds_after(counters.round)
            frames.append(run_dir.read_metrics())
        elif resume:  # no checkpoint (killed in round 1): what was written goes
            run_dir.forget_rounds()
        _start_run_directory(run, resume)
    if not resumed:
        store.restore({})  # a fresh run: no states left from an earlier attempt
    history = run_dir.read_diagnostics() if run_dir is not None else []
    loop = RoundLoop(
        cfg, run.algorithm, run.federation, store, counters, history, run.robust, run.setup
    )
    summary = RunSummary(
        cfg, run.algorithm, run.federation, counters, history, run.privacy, run.robust
    )
    bar = ProgressBar(cfg.rounds, counters.round, enabled=progress)
    backend = make_backend(run.setup, cfg.backend)
    try:
        keep_states = getattr(backend, "keep_states", None)
        if keep_states is not None:  # client states move to the workers that run the clients
            store = loop.store = keep_states(store)
        if run_dir is not None:  # the threads the backend's processes actually use
            threads = getattr(backend, "threads", None)
            adapt = getattr(backend, "governor", None) is not None
            run_dir.record_environment(environment_entry(str(run.device), threads, adapt))
        path = run_dir.path if run_dir else None
        info = run_info(cfg, run.federation, run.models, backend, run.device, path)
        notify(callbacks, "on_run_info", info)  # e.g. the header `plural run` prints
        notify(callbacks, "on_run_start", cfg, path, counters.round)
        recorders = [*_recorders(run, frames, summary), *_round_hooks(callbacks)]
        server = loop.run(server, backend, recorders, [bar, *callbacks])
    finally:
        _record_backend(run_dir, backend)
        backend.close()
        bar.close()
        store.close()
    metrics = _metrics(run_dir, frames)
    return _results(run, server, metrics, history, summary(metrics, server, loop.stopped_early))


def _record_backend(run_dir: RunDirectory | None, backend: Any) -> None:
    """What the backend did that the config does not say, in ``environment.json``: how many
    client tasks ran at each thread count (where the threads adapted), and what a backend
    reports itself (e.g. plural.flower's secure aggregation)."""
    if run_dir is None:
        return
    used = getattr(backend, "threads_used", None)
    if used:
        run_dir.amend_environment({"torch_threads_used": {str(k): v for k, v in used.items()}})
    reported = getattr(backend, "environment", None)
    if callable(reported) and reported():
        run_dir.amend_environment(reported())


def _start_run_directory(run: _Run, resume: bool) -> None:
    run_dir = run.run_dir
    assert run_dir is not None
    run_dir.prepare(run.cfg.to_dict(), resume=resume)
    described = run.federation.describe()
    if run.robust.malicious:
        described = {**described, **run.robust.describe()}
    run_dir.write_json(run_dir.federation_path, described)


def _recorders(run: _Run, frames: list[pd.DataFrame], summary: RunSummary) -> list[Any]:
    """The round callbacks that record the run, in the order they must run."""
    cfg, run_dir = run.cfg, run.run_dir
    recorders: list[Any] = []
    if run.robust.active:
        recorders.append(RobustMetrics(run.robust, run.algorithm, run.setup))
    federation = run.federation
    recorders.append(ClusterQuality(run.algorithm, federation.groups, federation.unseen))
    if cfg.diagnostics.gradient_every is not None:
        every = cfg.diagnostics.gradient_every
        recorders.append(GradientDissimilarity(every, run.federation.num_clients))
    if run.privacy is not None:
        recorders.append(PrivacyAccounting(run.privacy))
    recorders.append(DiagnosticsLog(run_dir))
    if run_dir is not None:
        recorders.append(ArtifactWriter(run_dir, run.algorithm, run.federation))
    recorders.append(MetricsWriter(run_dir, frames, summary))
    if run_dir is not None:
        recorders.append(Checkpointer(run_dir, cfg, run.privacy))
    return recorders


def _round_hooks(callbacks: Sequence[Any]) -> list[RoundCallback]:
    return [cb for cb in callbacks if hasattr(cb, "on_round")]


def _metrics(run_dir: RunDirectory | None, frames: list[pd.DataFrame]) -> pd.DataFrame:
    if run_dir is not None:
        return run_dir.consolidate_metrics()
    if frames:
        return pd.concat(frames, ignore_index=True)
    return pd.DataFrame(columns=METRIC_COLUMNS)


def _results(
    run: _Run,
    server: ServerState,
    metrics: pd.DataFrame,
    history: list[dict[str, Any]],
    summary: dict[str, Any],
) -> Results:
    run_dir = run.run_dir
    if run_dir is not None:
        run_dir.write_json(run_dir.summary_path, summary)
    path = run_dir.path if run_dir else None
    return Results(run.cfg, summary, metrics, server, path, pd.DataFrame(history))


def _restore(
    run_dir: RunDirectory, cfg: ExperimentConfig, store: StateStore, privacy: PrivateRun | None
) -> tuple[ServerState, Progress]:
    checkpoint = run_dir.load_checkpoint()
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"--resume: {run_dir.checkpoint_path} has checkpoint version "
            f"{checkpoint.get('version')!r}, and this plural reads version {CHECKPOINT_VERSION} "
            "(version 1 is from before server states were typed parts): resume it with the "
            "plural that wrote it, or start the run again in a new directory"
        )
    _check_resumable(with_defaults(checkpoint["config"]), cfg.to_dict(), run_dir.path)
    progress = Progress(**checkpoint["progress"])
    if progress.round > cfg.rounds:
        raise ConfigError(
            f"--resume: rounds = {cfg.rounds}, but the run in {str(run_dir.path)!r} has done "
            f"{progress.round} rounds; resuming continues a run, so give rounds >= "
            f"{progress.round} (every round's metrics are in metrics.parquet)"
        )
    store.restore(checkpoint["store"])
    if privacy is not None:
        privacy.restore(checkpoint.get("privacy"))
    return checkpoint["server"], progress


def _check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path) -> None:
    differing = differing_sections(saved, current, RESUMABLE_CHANGES)
    if differing:
        raise ConfigError(
            f"--resume: the config differs from the run in {str(run_dir)!r} "
            f"in {', '.join(differing)}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change on resume. "
            "Use another --out for a new run."
        )
