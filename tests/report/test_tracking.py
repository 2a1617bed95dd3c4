"""TensorBoard and MLflow callbacks, against the real libraries (skipped where absent)."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import plural
from plural.config import ConfigError
from plural.runner import tracking
from plural.runner.tracking import (
    MLflowCallback,
    TensorBoardCallback,
    final_scalars,
    flatten_config,
    round_scalars,
)

METRIC = "test/accuracy_mean"


def mean_accuracy_by_round(results: plural.Results, split: str = "test") -> dict[int, float]:
    """Per evaluated round: the mean over clients of ``split`` accuracy, from the metrics."""
    rows = results.metrics[results.metrics["split"] == split]
    means = rows.groupby("round")["accuracy"].mean()
    return {int(r): float(v) for r, v in means.items()}


def run(config: dict[str, Any], out: Path | None, rounds: int, *callbacks: Any, **kw: Any) -> Any:
    return plural.run(config, out=out, overrides=[f"rounds={rounds}"], callbacks=callbacks, **kw)


# --- shared helpers ----------------------------------------------------------------------


def test_round_scalars_names_and_skips_nan() -> None:
    stats = {"mean": 0.5, "worst10": math.nan, "best10": 0.9, "std": 0.1, "min": 0.2}
    summary = {"test@global": {"accuracy": stats, "loss": {"mean": float("inf")}}}
    assert round_scalars(summary) == {
        "test@global/accuracy_mean": 0.5,
        "test@global/accuracy_best10": 0.9,
        "test@global/accuracy_std": 0.1,
    }
    assert round_scalars(summary, separator="_")["test@global_accuracy_mean"] == 0.5
    assert round_scalars({}) == {}


def test_final_scalars_and_flattened_config() -> None:
    summary = {
        "bytes": {"up": 3, "down": 4, "total": 7},
        "wall_time_s": 1.5,
        "train_flops": 2e9,
        "clustering": {"clusters": 2, "ari": 0.75, "nmi": math.nan},
    }
    assert final_scalars(summary) == {
        "bytes/total": 7.0,
        "bytes/up": 3.0,
        "bytes/down": 4.0,
        "time/wall_s": 1.5,
        "train/flops": 2e9,
        "clustering/ari": 0.75,
        "clustering/clusters": 2.0,
    }
    config = {"name": "a", "train": {"lr": 0.05, "steps": None}, "model": {"hidden": [16, 8]}}
    assert flatten_config(config) == {
        "name": "a",
        "train.lr": "0.05",
        "train.steps": "null",
        "model.hidden": "[16, 8]",
    }


def test_importing_the_module_imports_neither_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    spec = importlib.util.spec_from_file_location("tracking_copy", tracking.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tracking_copy", module)  # dataclasses look it up
    spec.loader.exec_module(module)  # no ImportError


@pytest.mark.parametrize(
    ("module", "make", "extra"),
    [
        ("mlflow", lambda tmp: MLflowCallback(f"sqlite:///{tmp}/x.db"), "plural[mlflow]"),
        ("torch.utils.tensorboard", lambda tmp: TensorBoardCallback(tmp), "plural[tensorboard]"),
    ],
)
def test_missing_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str, make: Any, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError, match=rf"pip install '{re.escape(extra)}'"):
        make(tmp_path)
    assert not (tmp_path / "x.db").exists()


# --- TensorBoard -------------------------------------------------------------------------


def read_events(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


def scalar_series(events: Any, tag: str) -> tuple[list[int], list[float]]:
    scalars = events.Scalars(tag)
    return [s.step for s in scalars], [s.value for s in scalars]


def test_tensorboard_logs_rounds_config_and_totals(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    log_dir = tmp_path / "tb"
    results = run(tiny_config, tmp_path / "run", 3, TensorBoardCallback(log_dir))
    events = read_events(log_dir)

    expected = mean_accuracy_by_round(results)
    steps, values = scalar_series(events, METRIC)
    assert steps == sorted(expected) == [1, 2, 3]
    assert values == pytest.approx([expected[s] for s in steps], abs=1e-6)
    assert {"val/loss_mean", "test/accuracy_worst10", "test/loss_std"} <= set(
        events.Tags()["scalars"]
    )
    assert scalar_series(events, "bytes/total") == ([3], [results.summary["bytes"]["total"]])

    (text,) = events.Tensors("config/text_summary")
    config_text = text.tensor_proto.string_val[0].decode()
    assert config_text.startswith("```yaml\n")
    assert "name: tiny" in config_text and "lr: 0.05" in config_text


def test_tensorboard_resume_purges_redone_rounds(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    log_dir, out = tmp_path / "tb", tmp_path / "run"
    run(tiny_config, out, 2, TensorBoardCallback(log_dir))
    # Round 3 logged by a run that crashed before its checkpoint: to be purged on resume.
    with SummaryWriter(str(log_dir)) as stray:
        stray.add_scalar(METRIC, 99.0, global_step=3)
    results = run(tiny_config, out, 3, TensorBoardCallback(log_dir), resume=True)

    steps, values = scalar_series(read_events(log_dir), METRIC)
    expected = mean_accuracy_by_round(results)
    assert steps == [1, 2, 3]
    assert values == pytest.approx([expected[s] for s in steps], abs=1e-6)


# --- MLflow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One SQLite store for the module's MLflow tests (creating one takes a second or two),
    with the artifacts beside it."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db", str(root / "artifacts")


@pytest.fixture
def mlflow_client(
    mlflow_store: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # whatever MLflow writes relative to the cwd stays in tmp
    return MlflowClient(mlflow_store[0])


def mlflow_callback(store: tuple[str, str], **kw: Any) -> MLflowCallback:
    uri, artifacts = store
    return MLflowCallback(uri, artifact_location=artifacts, **kw)


def history(client: Any, run_id: str, key: str = METRIC) -> tuple[list[int], list[float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.step for m in points], [m.value for m in points]


def test_mlflow_logs_params_metrics_and_artifacts(
    tiny_config: dict[str, Any], tmp_path: Path, mlflow_store: tuple[str, str], mlflow_client: Any
) -> None:
    out = tmp_path / "run"
    callback = mlflow_callback(mlflow_store, experiment="logs", tags={"team": "fl"})
    results = run(tiny_config, out, 3, callback)
    run_id = (out / "mlflow_run_id").read_text().strip()
    logged = mlflow_client.get_run(run_id)

    assert logged.info.status == "FINISHED" and logged.info.run_name == "tiny-seed3"
    params = logged.data.params
    assert params["algorithm.name"] == "fedavg" and params["train.lr"] == "0.05"
    assert params["model.hidden"] == "[16]" and params["rounds"] == "3"
    assert logged.data.tags["team"] == "fl"
    assert logged.data.tags["plural.version"] == plural.__version__
    assert logged.data.tags["plural.run_dir"] == str(out.resolve())

    expected = mean_accuracy_by_round(results)
    steps, values = history(mlflow_client, run_id)
    assert steps == [1, 2, 3]
    assert values == pytest.approx([expected[s] for s in steps], abs=1e-6)
    assert logged.data.metrics["bytes/total"] == results.summary["bytes"]["total"]
    assert "val/loss_mean" in logged.data.metrics

    artifacts = {a.path for a in mlflow_client.list_artifacts(run_id)}
    assert {"summary.json", "config.yaml", "metrics.parquet", "environment.json"} <= artifacts
    stored = Path(logged.info.artifact_uri.removeprefix("file://"))
    assert stored.is_relative_to(mlflow_store[1]) and (stored / "summary.json").is_file()


def test_mlflow_failed_run_then_resume_continues_it(
    tiny_config: dict[str, Any],
    tmp_path: Path,
    mlflow_store: tuple[str, str],
    mlflow_client: Any,
    crash_after: Any,
) -> None:
    import mlflow

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):  # noqa: SIM117
        with mlflow_callback(mlflow_store, experiment="resume") as callback:
            run(tiny_config, out, 2, callback, crash_after(2))
    run_id = (out / "mlflow_run_id").read_text().strip()
    assert mlflow_client.get_run(run_id).info.status == "FAILED"
    assert mlflow.active_run() is None
    assert history(mlflow_client, run_id)[0] == [1, 2]

    with mlflow_callback(mlflow_store, experiment="resume") as callback:
        results = run(tiny_config, out, 3, callback, resume=True)
    assert (out / "mlflow_run_id").read_text().strip() == run_id
    logged = mlflow_client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    steps, values = history(mlflow_client, run_id)
    expected = mean_accuracy_by_round(results)
    assert steps == [1, 2, 3]
    assert values == pytest.approx([expected[s] for s in steps], abs=1e-6)
    # MLflow params are immutable: the resumed value of a changed setting is a tag.
    assert logged.data.params["rounds"] == "2"
    assert logged.data.tags["resume.rounds"] == "3"
    assert logged.data.tags["plural.resumed_at_round"] == "2"
    experiment = mlflow_client.get_experiment_by_name("resume")
    assert len(mlflow_client.search_runs([experiment.experiment_id])) == 1


def test_mlflow_resume_from_another_store_is_a_clear_error(
    tiny_config: dict[str, Any], tmp_path: Path, mlflow_store: tuple[str, str], mlflow_client: Any
) -> None:
    out = tmp_path / "run"
    run(tiny_config, out, 1)
    (out / "mlflow_run_id").write_text("0" * 32 + "\n")
    with pytest.raises(ConfigError, match="not in the tracking store"):
        run(tiny_config, out, 2, mlflow_callback(mlflow_store), resume=True)


def test_mlflow_default_store_is_mlflows_own(
    tiny_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    run(tiny_config, None, 2, MLflowCallback(run_name="default-store"))

    uri = mlflow.get_tracking_uri()
    client = MlflowClient()
    (logged,) = client.search_runs([client.get_experiment_by_name("plural").experiment_id])
    assert logged.info.run_name == "default-store" and logged.info.status == "FINISHED"
    assert history(client, logged.info.run_id)[0] == [1, 2]
    assert uri.startswith("sqlite:") and tmp_path.as_posix() in uri
    assert (tmp_path / "mlflow.db").is_file()
