"""Logging integrations: TensorBoard and MLflow as run callbacks (optional extras).

Both follow the callback protocol of :mod:`plural.engine.callbacks`: pass one to
``plural.run(..., callbacks=[cb])``. The libraries are imported when a callback is created,
never when this module is imported; a missing one raises a :class:`~plural.config.ConfigError`
that names the extra to install (``pip install 'plural[tensorboard]'`` or
``pip install 'plural[mlflow]'``).

Per evaluated round both log ``{split}/{metric}_{stat}`` for accuracy and loss (mean,
worst10, best10, std; NaN values are skipped), at step = round; when the run ends they log
``bytes/total``, ``bytes/up``, ``bytes/down``, ``time/wall_s``, ``train/flops`` and, for
methods that cluster clients, ``clustering/*``. Both continue where a resumed run
(``resume=True``) left off.

A run that raises never reaches ``on_run_end``; use the callbacks as context managers so that
they are closed either way (an MLflow run is then marked FAILED)::

    with MLflowCallback("sqlite:///mlflow.db") as mlflow_cb:
        plural.run(config, out="runs/a", callbacks=[mlflow_cb])
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from plural.config import ConfigError
from plural.report.runs import flatten

if TYPE_CHECKING:
    from plural.experiment import ExperimentConfig
    from plural.runner import Results

ROUND_METRICS = ("accuracy", "loss")
ROUND_STATS = ("mean", "worst10", "best10", "std")
RUN_ID_FILE = "mlflow_run_id"
"""Written into the run directory: the MLflow run that a resumed run continues."""
RUN_ARTIFACTS = ("summary.json", "config.yaml", "metrics.parquet", "environment.json")

# MLflow's limits (mlflow.utils.validation) and allowed name characters.
MLFLOW_MAX_KEY = 250
MLFLOW_MAX_PARAM_VALUE = 6000
MLFLOW_MAX_TAG_VALUE = 8000
MLFLOW_BATCH = 100
_MLFLOW_BAD_CHARACTERS = re.compile(r"[^\w./: -]")


# --- shared helpers ----------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _finite_items(pairs: Iterator[tuple[str, Any]]) -> dict[str, float]:
    return {name: number for name, value in pairs if (number := _finite(value)) is not None}


def round_scalars(summary: Mapping[str, Any], separator: str = "/") -> dict[str, float]:
    """A round summary (split -> accuracy/loss summaries) as ``{split}{sep}{metric}_{stat}``
    -> finite value; empty for rounds without evaluation."""

    def pairs() -> Iterator[tuple[str, Any]]:
        for split, metrics in summary.items():
            for metric in ROUND_METRICS:
                stats = metrics.get(metric, {})
                for stat in ROUND_STATS:
                    yield f"{split}{separator}{metric}_{stat}", stats.get(stat)

    return _finite_items(pairs())


def final_scalars(summary: Mapping[str, Any], separator: str = "/") -> dict[str, float]:
    """Totals of a finished run (``Results.summary``): bytes, wall time, training FLOPs and,
    where the method clusters clients, cluster quality."""
    sent = summary.get("bytes", {})
    clustering = summary.get("clustering", {})
    pairs = [
        *((f"bytes{separator}{key}", sent.get(key)) for key in ("total", "up", "down")),
        (f"time{separator}wall_s", summary.get("wall_time_s")),
        (f"train{separator}flops", summary.get("train_flops")),
        *(
            (f"clustering{separator}{key}", clustering.get(key))
            for key in ("ari", "nmi", "clusters", "changed")
        ),
    ]
    return _finite_items(iter(pairs))


def flatten_config(config: Mapping[str, Any]) -> dict[str, str]:
    """Nested config data as dotted keys (``train.lr``) -> string values; lists are written
    as JSON (``model.hidden`` -> ``[16]``), None as ``null``."""
    return {
        name: value if isinstance(value, str) else json.dumps(value, default=str)
        for name, value in flatten(config).items()
    }


def _missing_extra(library: str, extra: str, error: ImportError) -> ConfigError:
    return ConfigError(
        f"{library} is not installed; install it with `pip install 'plural[{extra}]'` ({error})"
    )


def _end_status(exc_type: type[BaseException] | None) -> str:
    """The MLflow run status for leaving with ``exc_type`` (None: no exception)."""
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


class _Closing:
    """Context-manager support: ``close`` on leaving the block, with the outcome's status."""

    def close(self, status: str = "FINISHED") -> None:
        raise NotImplementedError

    def __enter__(self) -> _Closing:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(_end_status(exc_type))


# --- TensorBoard -------------------------------------------------------------------------


class TensorBoardCallback(_Closing):
    """Write each evaluated round's scalars, the config (as text) and the run's totals to a
    TensorBoard log directory.

    A resumed run appends to the same ``log_dir``; events of rounds after the resumed
    checkpoint (logged before a crash) are purged, so redone rounds appear once.
    ``flush_every``: flush the event file every this many rounds.
    """

    def __init__(self, log_dir: str | Path, *, flush_every: int = 1) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise _missing_extra("TensorBoard", "tensorboard", error) from error
        self.log_dir = Path(log_dir)
        self.flush_every = flush_every
        self._writer_class = SummaryWriter
        self._writer: Any = None
        self._rounds = 0

    def on_run_start(
        self, config: ExperimentConfig, run_dir: Path | None, start_round: int
    ) -> None:
        self.close()
        purge = start_round + 1 if start_round > 0 else None
        self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=purge)
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        self._writer.add_text("config", f"```yaml\n{text}```", global_step=start_round)
        self._writer.flush()

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        writer = self._require_writer()
        for name, value in round_scalars(summary).items():
            writer.add_scalar(name, value, global_step=round_index)
        self._rounds += 1
        if self._rounds % self.flush_every == 0:
            writer.flush()
        return False

    def on_run_end(self, results: Results) -> None:
        writer = self._require_writer()
        step = int(results.summary.get("rounds_done", results.config.rounds))
        for name, value in final_scalars(results.summary).items():
            writer.add_scalar(name, value, global_step=step)
        self.close()

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close the event file (``status`` is ignored); safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _require_writer(self) -> Any:
        if self._writer is None:
            raise RuntimeError("TensorBoardCallback: on_run_start was not called")
        return self._writer


# --- MLflow ------------------------------------------------------------------------------


def _mlflow_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in keys replaced by '_', at most 250
    characters (``test@global/accuracy_mean`` -> ``test_global/accuracy_mean``)."""
    return _MLFLOW_BAD_CHARACTERS.sub("_", name)[:MLFLOW_MAX_KEY]


def _chunks(items: list[Any], size: int = MLFLOW_BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MLflowCallback(_Closing):
    """Log a run to MLflow: the flattened config as params, each evaluated round's scalars as
    metrics (step = round), the run's totals and its files (summary.json, config.yaml,
    metrics.parquet, environment.json) as artifacts.

    ``tracking_uri`` None uses MLflow's default (``MLFLOW_TRACKING_URI``, else MLflow 3's
    ``sqlite:///mlflow.db`` in the current directory). ``artifact_location`` sets where a
    newly created experiment keeps its artifacts (MLflow's default: ``./mlruns`` of the
    current directory, even for a database elsewhere). ``run_name`` defaults to
    ``{config.name}-seed{seed}``; ``tags`` are added to the run.

    With a run directory the MLflow run id is written to ``mlflow_run_id`` there, and a
    resumed run continues that MLflow run. MLflow params cannot change: settings that changed
    on resume (e.g. ``rounds``) are recorded as tags ``resume.<key>`` instead.

    The callback never sets a global active run. ``on_run_end`` ends the MLflow run
    FINISHED; a run that raises does not reach it, so use the callback as a context manager
    (the MLflow run is then ended FAILED, or KILLED on Ctrl-C) or call :meth:`close` yourself.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str = "plural",
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        log_artifacts: bool = True,
        artifact_location: str | None = None,
    ) -> None:
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise _missing_extra("MLflow", "mlflow", error) from error
        self._metric, self._param, self._tag = Metric, Param, RunTag
        self._mlflow_error = MlflowException
        self.client = MlflowClient(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.log_artifacts = log_artifacts
        self.artifact_location = artifact_location
        self.run_id: str | None = None

    # hooks

    def on_run_start(
        self, config: ExperimentConfig, run_dir: Path | None, start_round: int
    ) -> None:
        self.close("FAILED")  # a run left open by an earlier, interrupted use
        saved = run_dir / RUN_ID_FILE if run_dir is not None else None
        if saved is not None and saved.is_file():
            self.run_id = self._continue_run(saved)
        else:
            self.run_id = self._new_run(config)
        with self._failing():
            self._log_params(flatten_config(config.to_dict()))
            self._log_tags(self._run_tags(run_dir, start_round))
            if saved is not None:
                saved.write_text(self.run_id + "\n")

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        with self._failing():
            self._log_metrics(round_scalars(summary), round_index)
        return False

    def on_run_end(self, results: Results) -> None:
        with self._failing():
            step = int(results.summary.get("rounds_done", results.config.rounds))
            self._log_metrics(final_scalars(results.summary), step)
            if self.log_artifacts and results.run_dir is not None:
                self._log_run_files(Path(results.run_dir))
        self.close("FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run (if one is open) with ``status`` (FINISHED, FAILED, KILLED)."""
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, status=status)

    # runs

    def experiment_id(self) -> str:
        """The experiment's id, created in the store if it is not there yet."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(
            self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        )

    def _new_run(self, config: ExperimentConfig) -> str:
        name = self.run_name or f"{config.name}-seed{config.seed}"
        return str(self.client.create_run(self.experiment_id(), run_name=name).info.run_id)

    def _continue_run(self, saved: Path) -> str:
        run_id = saved.read_text().strip()
        try:
            run = self.client.get_run(run_id)
        except self._mlflow_error as error:
            raise ConfigError(
                f"{saved}: MLflow run {run_id!r} is not in the tracking store "
                f"{self.client.tracking_uri!r} ({error.message}); use the store the run was "
                "logged to, or delete the file to log the resumed run as a new MLflow run"
            ) from error
        if run.info.lifecycle_stage == "deleted":
            raise ConfigError(
                f"{saved}: MLflow run {run_id!r} was deleted; restore it, or delete the file "
                "to log the resumed run as a new MLflow run"
            )
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """Within it, an exception ends the MLflow run (FAILED) before propagating."""
        try:
            yield
        except BaseException as error:
            self.close(_end_status(type(error)))
            raise

    # logging

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MLflowCallback: on_run_start was not called")
        return self.run_id

    def _log_params(self, params: Mapping[str, str]) -> None:
        """Log the params the run lacks; ones logged before with another value (settings
        changed on resume) become ``resume.<key>`` tags, since MLflow params are immutable."""
        run_id = self._require_run()
        logged = self.client.get_run(run_id).data.params
        params = {_mlflow_name(k): v[:MLFLOW_MAX_PARAM_VALUE] for k, v in params.items()}
        new = {k: v for k, v in params.items() if k not in logged}
        changed = {f"resume.{k}": v for k, v in params.items() if k in logged and logged[k] != v}
        for chunk in _chunks([self._param(k, v) for k, v in new.items()]):
            self.client.log_batch(run_id, params=chunk)
        self._log_tags(changed)

    def _run_tags(self, run_dir: Path | None, start_round: int) -> dict[str, str]:
        from plural import __version__

        tags = {"plural.version": __version__, **self.tags}
        if run_dir is not None:
            tags["plural.run_dir"] = str(Path(run_dir).resolve())
        if start_round > 0:
            tags["plural.resumed_at_round"] = str(start_round)
        return tags

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        entries = [
            self._tag(_mlflow_name(k), str(v)[:MLFLOW_MAX_TAG_VALUE]) for k, v in tags.items()
        ]
        for chunk in _chunks(entries):
            self.client.log_batch(self._require_run(), tags=chunk)

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [self._metric(_mlflow_name(k), v, now, step) for k, v in values.items()]
        for chunk in _chunks(entries):
            self.client.log_batch(self._require_run(), metrics=chunk)

    def _log_run_files(self, run_dir: Path) -> None:
        for name in RUN_ARTIFACTS:
            path = run_dir / name
            if path.is_file():
                self.client.log_artifact(self._require_run(), str(path))


@dataclasses.dataclass(frozen=True)
class Tracking:
    """Where a run, or every cell of a sweep, is logged: a TensorBoard log folder and/or an
    MLflow tracking URI (``""``: MLflow's own default store). Picklable, so sweep workers
    build their callbacks from it."""

    tensorboard: str | None = None
    mlflow: str | None = None
    experiment: str = "plural"

    @property
    def enabled(self) -> bool:
        return self.tensorboard is not None or self.mlflow is not None

    def callbacks(
        self,
        *,
        subdir: str = "",
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """The callbacks of one run; ``subdir`` separates a sweep's cells in TensorBoard."""
        made: list[Any] = []
        if self.tensorboard is not None:
            made.append(TensorBoardCallback(Path(self.tensorboard) / subdir))
        if self.mlflow is not None:
            made.append(
                MLflowCallback(
                    self.mlflow or None, experiment=self.experiment, run_name=run_name, tags=tags
                )
            )
        return made

    def prepare(self) -> None:
        """Create the MLflow store and experiment once, before parallel workers log to it
        (workers creating a fresh sqlite store at once race in its migrations)."""
        if self.mlflow is not None:
            MLflowCallback(self.mlflow or None, experiment=self.experiment).experiment_id()

    def __call__(self, cell: Any, run_dir: Path) -> list[Any]:
        """The callbacks of a sweep cell (see :func:`plural.runner.sweep.run_sweep`)."""
        tags = {"plural.sweep": str(run_dir.parent.parent.parent), "plural.cell": cell.label}
        return self.callbacks(subdir=cell.dir, run_name=cell.label, tags=tags)
