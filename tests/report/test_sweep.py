"""Sweeps: grid parsing, one run directory per cell and seed, resume without redoing
finished cells, the results table, validation before any work."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from plural.config import ConfigError
from plural.report.runs import discover_runs, group_methods, is_run_directory
from plural.runner.sweep import (
    Axis,
    parse_grid,
    parse_seeds,
    plan_cells,
    run_sweep,
    split_values,
)

BASE: dict[str, Any] = {
    "name": "sweep-test",
    "rounds": 2,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 4, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "train": {"lr": 0.05, "batch_size": 32},
    "eval": {"splits": ["test"]},
    "backend": {"threads_per_worker": 1},
}
GRID = [Axis("algorithm", ("fedavg", "ditto")), Axis("partition.alpha", (0.1, 1.0))]
SEEDS = (0, 1)
CLOCK = ["wall_time_s", "status", "error"]  # differ between otherwise equal sweeps


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def results(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in CLOCK if c in table.columns])


class InterruptAt:
    """Stops the sweep like Ctrl-C during round ``round_index`` of one cell."""

    def __init__(self, run_dir_part: str, round_index: int) -> None:
        self.run_dir_part, self.round_index = run_dir_part, round_index

    def __call__(self, cell: Any, run_dir: Path) -> list[Any]:
        return [self] if self.run_dir_part in str(run_dir) else []

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        if round_index == self.round_index:
            raise KeyboardInterrupt
        return False


class FailIn(InterruptAt):
    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        raise RuntimeError("out of memory (simulated)")


# --------------------------------------------------------------------------- parsing


def test_values_split_on_commas_outside_brackets_and_quotes() -> None:
    assert split_values("fedavg, {name: ditto, lam: 0.5},[1, 2],'a,b'") == [
        "fedavg",
        "{name: ditto, lam: 0.5}",
        "[1, 2]",
        "'a,b'",
    ]


def test_grid_values_are_yaml() -> None:
    axes = parse_grid(["partition.alpha=0.1,1e-2,1", "algorithm=fedavg,{name: ditto, lam: 1}"])
    assert axes[0] == Axis("partition.alpha", (0.1, 0.01, 1))
    assert axes[1].values == ("fedavg", {"name": "ditto", "lam": 1})


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["alpha"], "expected key.path=value1,value2"),
        (["alpha="], "expected key.path=value1,value2"),
        (["a=1,,2"], "an empty value"),
        (["a=1,1"], "a value is repeated"),
        (["a=1", "a=2"], "'a' is given twice"),
        (["seed=1,2"], "--seeds"),
        (["a={x: 1"], "not valid YAML"),
    ],
)
def test_bad_grids_are_named(items: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid(items)


def test_seeds_lists_and_ranges() -> None:
    assert parse_seeds("0,1,2") == (0, 1, 2)
    assert parse_seeds("0-2,7") == (0, 1, 2, 7)
    for bad in ("a", "1,1", "", "-1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_cells_are_the_product_with_readable_distinct_directories() -> None:
    cells = plan_cells([*GRID, Axis("algorithm.lam", ({"a": 1}, {"a": 2}))], SEEDS)
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.dir for c in cells}) == len(cells)
    assert cells[0].dir.startswith("runs/algorithm-fedavg__partition.alpha-0.1__")
    assert cells[0].dir.endswith("/seed-0")
    assert cells[0].overrides[:2] == ["algorithm=fedavg", "partition.alpha=0.1"]


# --------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The sweep run once without interruption (shared by the tests below)."""
    out = tmp_path_factory.mktemp("straight")
    return out, run_sweep(base(), out, GRID, SEEDS, progress=None)


def test_table_has_one_row_per_cell_and_seed(straight: tuple[Path, pd.DataFrame]) -> None:
    out, table = straight
    assert len(table) == 2 * 2 * len(SEEDS)
    assert set(table["status"]) == {"complete"}
    combos = set(zip(table["algorithm"], table["partition.alpha"], table["seed"], strict=True))
    assert combos == {(a, p, s) for a in ("fedavg", "ditto") for p in (0.1, 1.0) for s in SEEDS}
    on_disk = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(on_disk, table)
    assert len(pd.read_csv(out / "results.csv")) == len(table)
    for row in table.itertuples():  # every cell is a normal run directory of its own config
        run_dir = out / row.run_dir
        assert is_run_directory(run_dir)
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["algorithm"]["name"] == row.algorithm
        assert config["partition"]["alpha"] == row._2
        assert config["seed"] == row.seed
    assert table["test_accuracy_mean"].between(0, 1).all()
    assert (table["test_accuracy_worst10"] <= table["test_accuracy_mean"]).all()


def test_a_sweep_groups_into_one_method_per_grid_point(
    straight: tuple[Path, pd.DataFrame],
) -> None:
    methods = group_methods(discover_runs([straight[0]]))
    assert sorted(m.label for m in methods) == [
        "ditto [partition.alpha=0.1]",
        "ditto [partition.alpha=1]",
        "fedavg [partition.alpha=0.1]",
        "fedavg [partition.alpha=1]",
    ]
    assert all(m.seeds == list(SEEDS) for m in methods)


def test_interrupted_sweep_resumes_without_redoing_finished_cells(
    tmp_path: Path, straight: tuple[Path, pd.DataFrame]
) -> None:
    third = "runs/algorithm-fedavg__partition.alpha-1.0/seed-0"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base(), tmp_path, GRID, SEEDS, progress=None, callbacks=InterruptAt(third, 1))
    partial = pd.read_parquet(tmp_path / "results.parquet")
    assert list(partial["status"][:3]) == ["complete", "complete", "incomplete"]
    assert set(partial["status"][3:]) == {"pending"}
    finished = [tmp_path / d / "metrics.parquet" for d in partial["run_dir"][:2]]
    stamps = [p.stat().st_mtime_ns for p in finished]

    seen: list[tuple[str, str]] = []
    table = run_sweep(
        base(),
        tmp_path,
        GRID,
        SEEDS,
        progress=lambda done, total, outcome, sweep: seen.append(
            (outcome.cell.dir, outcome.status)
        ),
    )
    assert [p.stat().st_mtime_ns for p in finished] == stamps  # not run again
    assert seen[0] == (third, "resumed")
    assert [s for _, s in seen[1:]] == ["ran"] * 5
    pd.testing.assert_frame_equal(results(table), results(straight[1]))


def test_extending_the_grid_runs_only_the_new_cells(tmp_path: Path) -> None:
    small = [Axis("algorithm", ("fedavg",))]
    run_sweep(base(), tmp_path, small, (0,), progress=None)
    seen: list[str] = []
    table = run_sweep(
        base(),
        tmp_path,
        [Axis("algorithm", ("fedavg", "ditto"))],
        (0, 1),
        progress=lambda done, total, outcome, sweep: seen.append(outcome.cell.label),
    )
    assert sorted(seen) == [
        "algorithm=ditto seed=0",
        "algorithm=ditto seed=1",
        "algorithm=fedavg seed=1",
    ]
    assert len(table) == 4 and set(table["status"]) == {"complete"}


def test_bad_cell_is_refused_before_any_cell_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sweep cell train.lr=-1 seed=0: train.lr"):
        run_sweep(base(), tmp_path, [Axis("train.lr", (0.1, -1))], (0,), progress=None)
    assert not (tmp_path / "runs").exists()


def test_changed_base_config_is_refused(tmp_path: Path) -> None:
    run_sweep(base(), tmp_path, [], (0,), progress=None)
    changed = base()
    changed["train"]["lr"] = 0.5
    with pytest.raises(ConfigError, match="config differs in train"):
        run_sweep(changed, tmp_path, [], (0,), progress=None)


def test_a_failing_cell_is_recorded_and_retried(tmp_path: Path) -> None:
    grid = [Axis("algorithm", ("fedavg", "ditto"))]
    table = run_sweep(
        base(), tmp_path, grid, (0,), progress=None, callbacks=FailIn("algorithm-fedavg", 1)
    )
    assert list(table["status"]) == ["failed", "complete"]
    assert "out of memory (simulated)" in table["error"][0]
    table = run_sweep(base(), tmp_path, grid, (0,), progress=None)
    assert list(table["status"]) == ["complete", "complete"]


def test_workers_give_the_same_results(tmp_path: Path, straight: tuple[Path, pd.DataFrame]) -> None:
    grid = [Axis("algorithm", ("fedavg", "ditto")), Axis("partition.alpha", (0.1,))]
    table = run_sweep(base(), tmp_path, grid, (0,), workers=2, progress=None)
    expected = straight[1]
    expected = expected[(expected["partition.alpha"] == 0.1) & (expected["seed"] == 0)]
    pd.testing.assert_frame_equal(results(table), results(expected).reset_index(drop=True))


ONE_CELL = [Axis("algorithm", ("fedavg",))]


def stopped_after_round_one(out: Path) -> str:
    """A one-cell sweep in ``out`` whose 2-round run stopped after round 1; its run dir."""
    cell_dir = "runs/algorithm-fedavg/seed-0"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base(), out, ONE_CELL, (0,), progress=None, callbacks=InterruptAt(cell_dir, 1))
    return cell_dir


def test_a_cell_finishing_while_the_table_reads_it_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parallel sweep rewrites its table while other workers' cells run: a cell that
    finishes during that read was read part-way and must not be kept as its result."""
    import plural.runner.sweep as sweep_module

    stopped_after_round_one(tmp_path)
    sweep = sweep_module.Sweep(tmp_path, base(), ONE_CELL, (0,))
    (cell,) = sweep.cells
    read_columns = sweep_module._results_columns

    def read_while_the_worker_finishes(run: Any) -> dict[str, Any]:
        columns = read_columns(run)
        if not sweep.finished(cell):
            sweep_module.run_cell(sweep.base, cell, str(tmp_path / cell.dir))
        return columns

    monkeypatch.setattr(sweep_module, "_results_columns", read_while_the_worker_finishes)
    assert sweep.results(cell)["round"] == 1  # read while the run was at round 1
    assert sweep.finished(cell)
    final = sweep.results(cell)
    assert final["round"] == 2 and final["rounds_done"] == 2


def test_a_run_record_never_pairs_a_later_summary_with_earlier_metrics(tmp_path: Path) -> None:
    from plural.report.runs import RunRecord
    from plural.runner.sweep import run_cell

    cell_dir = stopped_after_round_one(tmp_path)
    record = RunRecord.load(tmp_path / cell_dir)
    assert set(record.metrics["round"]) == {1}  # read while the run was at round 1
    (cell,) = plan_cells(ONE_CELL, (0,))
    run_cell(base(), cell, str(tmp_path / cell_dir))  # the run finishes after that read
    assert not record.complete  # the summary it holds is round 1's too
    assert RunRecord.load(tmp_path / cell_dir).complete


def test_sweep_cells_log_to_tensorboard_each_in_its_folder(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from plural.runner.tracking import Tracking

    grid = [Axis("algorithm", ("fedavg", "ditto"))]
    table = run_sweep(
        base(),
        tmp_path / "sweep",
        grid,
        (0,),
        progress=None,
        callbacks=Tracking(tensorboard=str(tmp_path / "tb")),
    )
    for row in table.itertuples():
        events = EventAccumulator(str(tmp_path / "tb" / row.run_dir))
        events.Reload()
        logged = events.Scalars("test/accuracy_mean")
        assert [e.step for e in logged] == [1, 2]
        assert logged[-1].value == pytest.approx(row.test_accuracy_mean, abs=1e-6)


def test_interrupting_parallel_workers_stops_them_and_the_sweep_resumes(tmp_path: Path) -> None:
    import multiprocessing

    grid = [Axis("algorithm", ("fedavg", "ditto", "fedprox"))]
    slow = {**base(), "rounds": 40}

    def interrupt(done: int, total: int, outcome: Any, sweep: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C as soon as the first cell has finished

    with pytest.raises(KeyboardInterrupt):
        run_sweep(slow, tmp_path, grid, (0,), workers=2, progress=interrupt)
    assert multiprocessing.active_children() == []  # no worker left running
    statuses = list(pd.read_parquet(tmp_path / "results.parquet")["status"])
    assert statuses.count("complete") == 1 and "pending" in statuses
    stopped = [s for s in statuses if s not in ("complete", "pending")]
    assert stopped in ([], ["incomplete"])  # the other running cell, stopped mid-way
    table = run_sweep(slow, tmp_path, grid, (0,), workers=2, progress=None)
    assert set(table["status"]) == {"complete"}
