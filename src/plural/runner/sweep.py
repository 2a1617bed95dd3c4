"""Sweeps: a base config run over a grid of settings and seeds.

Each grid point and seed (a *cell*) is a normal run directory under ``runs/``; the sweep
directory also holds ``sweep.json`` (the plan) and ``results.parquet`` / ``results.csv``
(one row per cell and seed, rewritten as each finishes). Rerunning the same command skips
finished cells, resumes interrupted ones from their checkpoints, and runs the rest; a grid
extended with new values or seeds runs only what is new. Every cell's config is validated
before the first one starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from plural.config import ConfigError
from plural.engine.threads import CORES_VARIABLE, cores_per_process
from plural.experiment import (
    ExperimentConfig,
    apply_overrides,
    differing_sections,
    load_config,
    load_yaml,
    with_defaults,
)
from plural.report.compare import run_costs, run_results
from plural.report.rundir import _atomic_write
from plural.report.runs import SWEEP_FILE, UNCOMPARED, RunRecord

RESULTS = "results"
"""``results.parquet`` and ``results.csv`` in the sweep directory."""
SLUG_LENGTH = 48


@dataclasses.dataclass(frozen=True)
class Axis:
    """One ``--grid key=v1,v2`` axis: a dotted config key and its values."""

    key: str
    values: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid point and seed: its run directory (relative to the sweep) and overrides."""

    values: dict[str, Any]
    seed: int
    dir: str

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={_yaml_flow(v)}" for k, v in self.values.items()] + [f"seed={self.seed}"]

    @property
    def label(self) -> str:
        settings = ", ".join(f"{k}={_yaml_flow(v)}" for k, v in self.values.items())
        return f"{settings} seed={self.seed}" if settings else f"seed={self.seed}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one cell in this invocation."""

    cell: Cell
    status: str  # "done" (finished earlier), "ran", "resumed", "failed"
    seconds: float = 0.0
    error: str | None = None


def split_values(text: str) -> list[str]:
    """Split ``text`` on commas outside brackets, braces and quotes:
    ``fedavg,{name: ditto, lam: 0.5}`` -> ``["fedavg", "{name: ditto, lam: 0.5}"]``."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def parse_grid(items: Sequence[str]) -> list[Axis]:
    """``["algorithm=fedavg,ditto", "partition.alpha=0.1,1.0"]`` as axes (values read as
    YAML); a ConfigError naming the item for bad syntax, empty or repeated values or keys."""
    axes: list[Axis] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(
                f"--grid {item!r}: expected key.path=value1,value2,... "
                "(e.g. --grid partition.alpha=0.1,1.0)"
            )
        if key in {a.key for a in axes}:
            raise ConfigError(f"--grid {item!r}: {key!r} is given twice; list all its values once")
        if key == "seed":
            raise ConfigError(f"--grid {item!r}: give seeds with --seeds, not as a grid axis")
        texts = split_values(text)
        if any(not t for t in texts):
            raise ConfigError(f"--grid {item!r}: an empty value (two commas, or a trailing one)")
        try:
            values = tuple(load_yaml(t) for t in texts)
        except yaml.YAMLError as err:
            raise ConfigError(f"--grid {item!r}: a value is not valid YAML: {err}") from err
        if len({_yaml_flow(v) for v in values}) < len(values):
            raise ConfigError(f"--grid {item!r}: a value is repeated")
        axes.append(Axis(key, values))
    return axes


MAX_SEEDS = 10_000
"""Most seeds one sweep may run (each is a run per grid point)."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` or a range ``"0-4"`` (inclusive), or a mix: ``"0-2,7"``."""
    seeds: list[int] = []
    for part in split_values(text):
        low, dash, high = part.partition("-")
        try:
            span = range(int(low), int(high) + 1) if dash else [int(part)]
        except ValueError:
            raise ConfigError(
                f"--seeds {text!r}: expected seeds like 0,1,2 or a range 0-4, got {part!r}"
            ) from None
        if len(seeds) + len(span) > MAX_SEEDS:
            raise ConfigError(f"--seeds {text!r}: more than {MAX_SEEDS} seeds; give fewer")
        seeds.extend(span)
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected distinct seeds >= 0, e.g. 0,1,2")
    return tuple(seeds)


def _yaml_flow(value: Any) -> str:
    """A value as one line of YAML, as it is written in an override (``{name: ditto}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()  # scalars end with a document marker


def _slug(values: Mapping[str, Any]) -> str:
    """A readable directory name for a grid point (``algorithm-ditto__partition.alpha-0.1``),
    with a short hash when characters had to be replaced or the name shortened."""
    if not values:
        return "base"
    exact = "__".join(f"{k}-{_yaml_flow(v)}" for k, v in values.items())
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", exact).strip("_")
    if safe == exact and len(safe) <= SLUG_LENGTH:
        return safe
    digest = hashlib.sha1(exact.encode()).hexdigest()[:8]
    return f"{safe[:SLUG_LENGTH].rstrip('_')}_{digest}"


def plan_cells(axes: Sequence[Axis], seeds: Sequence[int]) -> list[Cell]:
    """Every grid point (in the order the axes and values were given) times every seed."""
    cells = []
    for combination in itertools.product(*(a.values for a in axes)):
        values = {a.key: v for a, v in zip(axes, combination, strict=True)}
        for seed in seeds:
            cells.append(Cell(values, seed, f"runs/{_slug(values)}/seed-{seed}"))
    return cells


def cell_config(base: Mapping[str, Any], cell: Cell) -> ExperimentConfig:
    """The cell's validated config (errors name the cell)."""
    try:
        return load_config(base, cell.overrides)
    except ConfigError as err:
        raise ConfigError(f"sweep cell {cell.label}: {err}") from err


def validate_cells(base: Mapping[str, Any], cells: Sequence[Cell]) -> list[ExperimentConfig]:
    """Every cell's config, checked by its algorithm too, before any cell runs."""
    from plural.runner import build_algorithm

    configs = []
    for cell in cells:
        config = cell_config(base, cell)
        try:
            build_algorithm(config).check(config)
        except ConfigError as err:
            raise ConfigError(f"sweep cell {cell.label}: {err}") from err
        configs.append(config)
    return configs


def read_base(
    config: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The base config as plain data (from a YAML file or a mapping), with ``--set``
    overrides applied and checked."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        config = load_yaml(path.read_text()) or {}
    base = apply_overrides(config, overrides)
    load_config(base)  # the base itself must be valid
    return base


class Sweep:
    """A sweep directory: its plan, the state of its cells, its results table."""

    def __init__(
        self,
        out: str | Path,
        base: Mapping[str, Any],
        axes: Sequence[Axis],
        seeds: Sequence[int],
    ) -> None:
        self.path = Path(out)
        self.base = dict(base)
        self.axes = list(axes)
        self.seeds = list(seeds)
        self.cells = plan_cells(self.axes, self.seeds)
        self._finished_results: dict[str, dict[str, Any]] = {}

    def check(self) -> list[ExperimentConfig]:
        """Validate every cell, and that finished cells on disk ran the same configs."""
        configs = validate_cells(self.base, self.cells)
        for cell, config in zip(self.cells, configs, strict=True):
            saved = self.path / cell.dir / "config.yaml"
            if saved.is_file():
                previous = with_defaults(yaml.safe_load(saved.read_text()) or {})
                ignore = set(UNCOMPARED) - {"seed"}
                differing = differing_sections(previous, config.to_dict(), ignore)
                if differing:
                    raise ConfigError(
                        f"sweep cell {cell.label}: {str(saved.parent)!r} holds a run whose "
                        f"config differs in {', '.join(differing)} (the base config changed "
                        "since it ran); use another --out for the new sweep, or delete that "
                        "cell's directory to rerun it"
                    )
        return configs

    def describe(self) -> str:
        """``3 algorithm x 2 partition.alpha x 2 seeds``."""
        sizes = [f"{len(a.values)} {a.key}" for a in self.axes]
        return " x ".join([*sizes, f"{len(self.seeds)} seed{'s' * (len(self.seeds) > 1)}"])

    def write_plan(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        plan = {
            "base": self.base,
            "grid": [{"key": a.key, "values": list(a.values)} for a in self.axes],
            "seeds": self.seeds,
            "runs": [
                {"dir": c.dir, "values": c.values, "seed": c.seed, "overrides": c.overrides}
                for c in self.cells
            ],
        }
        text = json.dumps(plan, indent=2, default=str) + "\n"
        _atomic_write(self.path / SWEEP_FILE, lambda tmp: tmp.write_text(text))

    def finished(self, cell: Cell) -> bool:
        summary = self.path / cell.dir / "summary.json"
        if not summary.is_file():
            return False
        data = json.loads(summary.read_text())
        return bool(data.get("complete") or data.get("stopped_early"))

    def table(self, outcomes: Mapping[str, Outcome] | None = None) -> pd.DataFrame:
        """One row per cell and seed: the grid values, the seed, the cell's state and its
        final per-client results (empty result columns for cells that have not run)."""
        rows = []
        for cell in self.cells:
            row: dict[str, Any] = {k: _cell_value(v) for k, v in cell.values.items()}
            row["seed"] = cell.seed
            outcome = (outcomes or {}).get(cell.dir)
            row["status"] = _status(self, cell, outcome)
            row["error"] = outcome.error if outcome else None
            row["run_dir"] = cell.dir
            row.update(self.results(cell))
            rows.append(row)
        return pd.DataFrame(rows)

    def results(self, cell: Cell) -> dict[str, Any]:
        """The cell's result columns (none before its first evaluation). A finished cell's
        are read once: the table is rewritten after every cell, and rereading every finished
        run each time would grow with the square of the number of cells.

        Whether the cell has finished is asked *before* its files are read: a cell that a
        worker process finishes during the read was read part-way, and must be read again.
        (Asked after, such a read was kept as final: a parallel sweep's table once showed a
        2-round cell's first round.)"""
        if cell.dir in self._finished_results:
            return self._finished_results[cell.dir]
        run_dir = self.path / cell.dir
        if not ((run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()):
            return {}
        finished_before_reading = self.finished(cell)
        columns = _results_columns(RunRecord.load(run_dir))
        if finished_before_reading:
            self._finished_results[cell.dir] = columns
        return columns

    def write_table(self, outcomes: Mapping[str, Outcome] | None = None) -> pd.DataFrame:
        table = self.table(outcomes)
        parquet, csv = self.path / f"{RESULTS}.parquet", self.path / f"{RESULTS}.csv"
        _atomic_write(parquet, lambda tmp: table.to_parquet(tmp, index=False))
        _atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False))
        return table


def _cell_value(value: Any) -> Any:
    """Scalars as they are; sections as one line of YAML (a table column holds one type)."""
    return (
        value if isinstance(value, (str, int, float, bool)) or value is None else _yaml_flow(value)
    )


def _status(sweep: Sweep, cell: Cell, outcome: Outcome | None) -> str:
    if outcome is not None and outcome.status == "failed":
        return "failed"
    if sweep.finished(cell):
        return "complete"
    return "incomplete" if (sweep.path / cell.dir / "checkpoint.pt").is_file() else "pending"


def _results_columns(run: RunRecord) -> dict[str, Any]:
    """Final per-client results of a cell: ``{split}_{metric}_{stat}`` for test and val, and
    the run's cost and cluster columns."""
    columns: dict[str, Any] = {}
    splits = [s for s in ("test", "val") if not run.final(s).empty]
    for split in splits:
        for metric in ("accuracy", "loss"):
            stats = run_results(run, metric, split)
            for stat in ("mean", "worst10", "best10", "std", "weighted_mean"):
                columns[f"{split}_{metric}_{stat}"] = stats[stat]
            columns["round"], columns["clients"] = stats["round"], stats["clients"]
    summary = run.summary
    columns.update(
        {"algorithm": run.algorithm, "rounds_done": summary.get("rounds_done"), **run_costs(run)}
    )
    clustering = summary.get("clustering")
    if clustering:
        columns["clusters"] = clustering.get("clusters")
        columns["ari"] = clustering.get("ari", math.nan)
    return columns


ProgressFn = Callable[[int, int, Outcome, Sweep], None]


def print_progress(done: int, total: int, outcome: Outcome, sweep: Sweep) -> None:
    """``[3/12] algorithm=ditto seed=1: ran in 12.3 s, test accuracy 0.812 (worst 10% 0.61)``.
    ``done`` counts cells finished earlier too."""
    cell = outcome.cell
    text = f"[{done}/{total}] {cell.label}: "
    if outcome.status == "failed":
        text += f"FAILED: {outcome.error}"
    else:
        text += f"{outcome.status} in {outcome.seconds:.1f} s"
        results = sweep.results(cell)
        mean = results.get("test_accuracy_mean", math.nan)
        if not math.isnan(mean):
            text += f", test accuracy {mean:.3f} (worst 10% {results['test_accuracy_worst10']:.3f})"
    print(text, flush=True)


CallbackFactory = Callable[[Cell, Path], Sequence[Any]]


def run_sweep(
    config: str | Path | Mapping[str, Any],
    out: str | Path,
    grid: Sequence[Axis] = (),
    seeds: Sequence[int] = (0,),
    *,
    overrides: Sequence[str] = (),
    workers: int = 1,
    progress: ProgressFn | None = print_progress,
    callbacks: CallbackFactory | None = None,
) -> pd.DataFrame:
    """Run every cell of the grid x seeds that has not finished, ``workers`` at a time, and
    return the results table (also written to ``out/results.{parquet,csv}``).

    ``callbacks(cell, run_dir)`` gives each cell's run callbacks (e.g. logging); with
    ``workers`` > 1 it must be picklable. A failing cell is recorded (status ``failed``, its
    error in the table) and the others go on; the table is rewritten after every cell.
    """
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    sweep = Sweep(out, read_base(config, overrides), grid, seeds)
    sweep.check()
    sweep.write_plan()
    if hasattr(callbacks, "prepare"):
        callbacks.prepare()  # e.g. create a tracking store once, before workers share it
    outcomes = {c.dir: Outcome(c, "done") for c in sweep.cells if sweep.finished(c)}
    todo = [c for c in sweep.cells if c.dir not in outcomes]
    if progress:
        print(
            f"sweep {sweep.path}: {len(sweep.cells)} runs ({sweep.describe()}); "
            f"{len(outcomes)} finished earlier, {len(todo)} to run"
            + (f", {min(workers, len(todo))} at a time" if todo else ""),
            flush=True,
        )
    sweep.write_table(outcomes)
    try:  # closing: an interruption stops running workers before the table is written
        with contextlib.closing(_execute(sweep, todo, workers, callbacks)) as finished:
            for outcome in finished:
                outcomes[outcome.cell.dir] = outcome
                sweep.write_table(outcomes)
                if progress:
                    progress(len(outcomes), len(sweep.cells), outcome, sweep)
    finally:  # interrupted too: the table shows which cells finished, which can resume
        table = sweep.write_table(outcomes)
    return table


def _execute(
    sweep: Sweep, cells: Sequence[Cell], workers: int, callbacks: CallbackFactory | None
) -> Iterator[Outcome]:
    jobs = [(sweep.base, cell, str(sweep.path / cell.dir), callbacks) for cell in cells]
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_cell(*job)
        return
    cores = cores_per_process(workers)  # each cell's runs choose their threads within it
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(cores,)
    )
    waiting = iter(jobs)
    running = {pool.submit(run_cell, *job) for job in itertools.islice(waiting, workers)}
    try:
        while running:  # a cell is handed out only when a worker is free, so none is queued
            done, running = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                yield future.result()
                job = next(waiting, None)
                if job is not None:
                    running.add(pool.submit(run_cell, *job))
    except BaseException:  # Ctrl-C, or the caller stopped: stop the cells still running
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """End the workers now. Their cells lose at most the round in progress: every file of a
    run directory is replaced atomically, so a rerun resumes them from their checkpoints.
    (Asking them to stop with SIGINT was tried: a run could go on for seconds.)"""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle
    for process in processes:
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(cores: int) -> None:
    """A cell process: its runs (and their worker processes) share ``cores`` cores."""
    import torch

    os.environ[CORES_VARIABLE] = str(cores)
    torch.set_num_threads(cores)


def run_cell(
    base: Mapping[str, Any], cell: Cell, run_dir: str, callbacks: CallbackFactory | None = None
) -> Outcome:
    """Run (or resume) one cell; errors are returned, not raised, so the sweep goes on."""
    from plural.runner import run

    started = time.perf_counter()
    resumed = (Path(run_dir) / "checkpoint.pt").is_file()
    try:
        config = cell_config(base, cell)
        extra = list(callbacks(cell, Path(run_dir))) if callbacks else []
        with contextlib.ExitStack() as stack:  # e.g. MLflow runs end FAILED if the cell fails
            for callback in extra:
                if hasattr(callback, "__exit__"):
                    stack.enter_context(callback)
            run(config, out=run_dir, resume=True, progress=False, callbacks=extra)
    except Exception as err:  # the sweep goes on; the table records the failure
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return Outcome(cell, "failed", time.perf_counter() - started, detail)
    return Outcome(cell, "resumed" if resumed else "ran", time.perf_counter() - started)
