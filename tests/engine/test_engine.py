from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest
import torch

import plural
from plural.config import ConfigError
from plural.core.params import nbytes
from plural.engine.sampler import cohort_size, sample_cohort
from plural.experiment import SamplingConfig
from plural.report.rundir import METRIC_COLUMNS, RunDirectory, deterministic


def test_cohort_sizes_and_determinism() -> None:
    assert cohort_size(10, SamplingConfig()) == 10
    assert cohort_size(10, SamplingConfig(fraction=0.25)) == 3
    assert cohort_size(10, SamplingConfig(fraction=0.01)) == 1
    assert cohort_size(10, SamplingConfig(count=50)) == 10
    cohorts = [
        sample_cohort(100, SamplingConfig(count=10), seed=0, round_index=r) for r in range(1, 6)
    ]
    for cohort in cohorts:
        assert cohort == sorted(set(cohort)) and len(cohort) == 10
    assert cohorts[0] != cohorts[1]
    assert cohorts[0] == sample_cohort(100, SamplingConfig(count=10), seed=0, round_index=1)


def test_run_directory_files_and_metric_rows(tiny_config: dict[str, Any], tmp_path) -> None:
    results = plural.run(tiny_config, out=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "config.yaml",
        "federation.json",
        "metrics",
        "metrics.parquet",
        "summary.json",
        "checkpoint.pt",
    }
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert list(metrics.columns) == METRIC_COLUMNS
    pd.testing.assert_frame_equal(metrics, results.metrics)
    fit = metrics[metrics["split"] == "fit"]
    assert (fit.groupby("round").size() == 3).all()  # fraction 0.5 of 6 clients
    evaluated = metrics[metrics["split"].isin(["val", "test"])]
    assert len(evaluated) == 2 * 2 * 6  # 2 rounds x 2 splits x 6 clients
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["round"] == 2
    test = summary["test"]["accuracy"]
    final = results.final("test")
    assert test["mean"] == pytest.approx(final["accuracy"].mean())
    assert test["worst10"] == pytest.approx(final["accuracy"].min())  # 10% of 6 clients is 1
    federation = json.loads((tmp_path / "federation.json").read_text())
    assert len(federation["label_histogram"]) == 6


def test_bytes_are_counted_exactly(tiny_config: dict[str, Any]) -> None:
    results = plural.run(tiny_config)
    model_bytes = nbytes(results.server.params)
    fit = results.metrics[results.metrics["split"] == "fit"]
    assert (fit["bytes_up"] == model_bytes).all() and (fit["bytes_down"] == model_bytes).all()
    assert results.summary["bytes"]["total"] == 2 * model_bytes * 3 * 2
    tiny_config["algorithm"] = {"name": "local"}
    assert plural.run(tiny_config).summary["bytes"]["total"] == 0


def test_eval_every_and_splits(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(rounds=5, eval={"every": 2, "splits": ["train"]})
    metrics = plural.run(tiny_config).metrics
    evaluated = metrics[metrics["split"] != "fit"]
    assert sorted(evaluated["round"].unique()) == [2, 4, 5]
    assert set(evaluated["split"]) == {"train"}


def test_callback_can_stop_the_run(tiny_config: dict[str, Any]) -> None:
    class StopAtTwo:
        def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
            assert "test" in summary
            return round_index == 2

    tiny_config["rounds"] = 5
    results = plural.run(tiny_config, callbacks=[StopAtTwo()])
    assert results.summary["rounds_done"] == 2 and results.summary["stopped_early"]


def test_resume_refuses_a_changed_config(tiny_config: dict[str, Any], tmp_path) -> None:
    plural.run(tiny_config, out=tmp_path)
    with pytest.raises(ConfigError, match="train"):
        plural.run(tiny_config, out=tmp_path, resume=True, overrides=["train.lr=0.5"])


def test_resume_can_extend_a_finished_run(tiny_config: dict[str, Any], tmp_path) -> None:
    plural.run(tiny_config, out=tmp_path)
    extended = plural.run(tiny_config, out=tmp_path, resume=True, overrides=["rounds=3"])
    straight = plural.run(tiny_config, overrides=["rounds=3"])
    pd.testing.assert_frame_equal(deterministic(extended.metrics), deterministic(straight.metrics))


def test_round_files_after_the_checkpoint_are_dropped(tmp_path) -> None:
    run_dir = RunDirectory(tmp_path)
    run_dir.metrics_dir.mkdir()
    for r in (1, 2, 3):
        run_dir.write_round_metrics(r, [{"round": r, "client": 0, "split": "fit"}])
        run_dir.append_diagnostics({"round": r, "drift_mean": 0.1})
        run_dir.append_record(run_dir.timeline_path, {"round": r, "wall_time_s": r})
    run_dir.drop_rounds_after(2)
    assert sorted(run_dir.read_metrics()["round"]) == [1, 2]
    assert [r["round"] for r in run_dir.read_diagnostics()] == [1, 2]
    assert [r["round"] for r in run_dir.read_timeline()] == [1, 2]


def test_run_directory_records_timeline_environment_and_callback_hooks(
    tiny_config: dict[str, Any], tmp_path
) -> None:
    class Hooks:
        def __init__(self) -> None:
            self.events: list[tuple[str, Any]] = []

        def on_run_start(self, config: Any, run_dir: Any, start_round: int) -> None:
            self.events.append(("start", (config.name, run_dir, start_round)))

        def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
            self.events.append(("round", round_index))
            return False

        def on_run_end(self, results: Any) -> None:
            self.events.append(("end", results.summary["rounds_done"]))

    hooks = Hooks()
    plural.run(tiny_config, out=tmp_path, overrides=["rounds=2"], callbacks=[hooks])
    plural.run(tiny_config, out=tmp_path, resume=True, overrides=["rounds=3"], callbacks=[hooks])
    name = tiny_config.get("name", "experiment")
    assert hooks.events == [
        ("start", (name, tmp_path, 0)),
        ("round", 1),
        ("round", 2),
        ("end", 2),
        ("start", (name, tmp_path, 2)),
        ("round", 3),
        ("end", 3),
    ]
    run_dir = RunDirectory(tmp_path)
    timeline = run_dir.read_timeline()
    assert [r["round"] for r in timeline] == [1, 2, 3]
    walls = [r["wall_time_s"] for r in timeline]
    assert walls == sorted(walls) and walls[0] > 0
    fit = run_dir.read_metrics().query("split == 'fit'")
    assert timeline[-1]["bytes_up"] == fit["bytes_up"].sum()
    environment = run_dir.read_environment()
    assert len(environment) == 2  # one entry per start
    assert environment[0]["packages"]["torch"] == torch.__version__
    assert environment[0]["packages"]["plural"] == plural.__version__


def test_existing_run_is_not_overwritten(tiny_config: dict[str, Any], tmp_path) -> None:
    plural.run(tiny_config, out=tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        plural.run(tiny_config, out=tmp_path)


def test_clients_train_and_are_scored_on_the_data_of_the_current_round(
    tiny_config: dict[str, Any],
) -> None:
    # Every client's labels are permuted from round 4 on: a model trained on the old concept
    # collapses exactly there, because evaluation (and training) use the round's data.
    tiny_config.update(
        rounds=4,
        sampling={},
        partition={"name": "iid", "num_clients": 4},
        model={"name": "mlp", "hidden": [32]},
        train={"lr": 0.1, "momentum": 0.9, "batch_size": 16},
        transforms=[
            {
                "name": "drift",
                "fraction": 1.0,
                "start_round": 4,
                "change": {"name": "label_swap", "groups": 1, "identity_first": False},
            }
        ],
    )
    results = plural.run(tiny_config)
    test = results.metrics.query("split == 'test'").groupby("round")["accuracy"].mean()
    assert test[3] > 0.7 and test[4] < test[3] - 0.4, test.to_dict()


def test_an_environment_built_after_training_keeps_the_initial_parameters(
    tiny_config: dict[str, Any],
) -> None:
    """In-process trainers load every client's parameters into the shared model template; an
    environment built later (newcomers, the server set) must still start clients from the
    initial parameters, not from whatever the template last held."""
    from plural.engine.backends import WorkerEnv, WorkerSetup
    from plural.experiment import load_config
    from plural.runner import build_federation, build_model

    cfg = load_config(tiny_config)
    federation = build_federation(cfg)
    model = build_model(cfg, federation)
    setup = WorkerSetup(federation, model, cfg.train, cfg.seed)
    initial = {n: t.clone() for n, t in model.state_dict().items()}
    trainer = WorkerEnv(setup).trainer
    data = federation.client(0).train
    trainer.fit(trainer.initial_params, data.x, data.y, rng=torch.Generator().manual_seed(0))
    assert not all(torch.equal(initial[n], t) for n, t in model.state_dict().items())
    later = WorkerEnv(setup).trainer.initial_params
    assert all(torch.equal(initial[n], later[n]) for n in initial)
