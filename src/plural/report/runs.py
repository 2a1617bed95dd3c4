"""Finished (or running) runs read back from their directories, and grouped into methods.

A *method* here is one setting run over one or more seeds: runs whose configs differ only in
``seed`` (and in settings that do not change results: name, backend, eval, diagnostics).
Its label is the algorithm's name, plus the settings that tell it apart from the other
methods being compared (``fedavg [partition.alpha=0.1]``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from plural.config import ConfigError
from plural.report.rundir import METRIC_COLUMNS, RunDirectory

SWEEP_FILE = "sweep.json"
"""The file that marks a sweep directory (see :mod:`plural.runner.sweep`)."""
UNCOMPARED = ("seed", "data_seed", "name", "backend", "eval", "diagnostics")
"""Config sections that do not define a method: runs differing only in these are its seeds."""
SEARCH_DEPTH = 3


@dataclasses.dataclass(frozen=True, eq=False)
class RunRecord:
    """One run directory's files, read lazily (metrics can be large)."""

    path: Path
    config: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        directory = RunDirectory(path)
        if not directory.config_path.is_file():
            raise ConfigError(
                f"{str(path)!r} is not a run directory (it has no config.yaml); give run "
                "directories, sweep directories, or folders holding them"
            )
        return cls(directory.path, yaml.safe_load(directory.config_path.read_text()) or {})

    @property
    def directory(self) -> RunDirectory:
        return RunDirectory(self.path)

    @property
    def algorithm(self) -> str:
        return str(self.config.get("algorithm", {}).get("name", "?"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @functools.cached_property
    def summary(self) -> dict[str, Any]:
        path = self.directory.summary_path
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def complete(self) -> bool:
        return bool(self.summary.get("complete")) or bool(self.summary.get("stopped_early"))

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        """Every metric row on disk. The summary is read first: a run writes a round's
        metrics before its summary, so a record read while the run goes never pairs a
        summary of round t with metrics of an earlier round."""
        _ = self.summary
        frame = self.directory.read_metrics()
        return frame if len(frame.columns) else pd.DataFrame(columns=METRIC_COLUMNS)

    @functools.cached_property
    def diagnostics(self) -> pd.DataFrame:
        return pd.DataFrame(self.directory.read_diagnostics())

    @functools.cached_property
    def timeline(self) -> pd.DataFrame:
        """Per round: cumulative wall seconds, bytes and FLOPs (empty for runs that predate
        ``timeline.jsonl``; :func:`cost_curve` then rebuilds what it can from the metrics)."""
        return pd.DataFrame(self.directory.read_timeline())

    @functools.cached_property
    def federation(self) -> dict[str, Any]:
        path = self.directory.federation_path
        return json.loads(path.read_text()) if path.is_file() else {}

    @functools.cached_property
    def environment(self) -> list[dict[str, Any]]:
        return self.directory.read_environment()

    def artifacts(self) -> dict[str, Path]:
        """Saved arrays and records by name (``influence_round0003`` -> its ``.npy``, or its
        ``.npz`` for a sparse matrix: pFedLIA above 2,000 clients)."""
        folder = self.directory.artifacts_dir
        if not folder.is_dir():
            return {}
        return {
            p.stem: p for p in sorted(folder.iterdir()) if p.suffix in (".npy", ".npz", ".json")
        }

    def evaluated(self, split: str = "test") -> pd.DataFrame:
        """Per-client rows of ``split`` at every evaluated round."""
        return self.metrics[self.metrics["split"] == split]

    def final(self, split: str = "test") -> pd.DataFrame:
        """Per-client rows of ``split`` at the last evaluated round."""
        rows = self.evaluated(split)
        return rows[rows["round"] == rows["round"].max()].reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class Method:
    """One setting over its seeds."""

    label: str
    runs: tuple[RunRecord, ...]
    settings: dict[str, Any]
    """The flattened settings that tell this method apart from the others compared."""

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def algorithm(self) -> str:
        return self.runs[0].algorithm


def is_run_directory(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (
        (path / "metrics").is_dir() or (path / "metrics.parquet").is_file()
    )


def discover_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """The runs under ``paths``: run directories, sweep directories (their cells), or folders
    holding either (searched :data:`SEARCH_DEPTH` levels deep). Each run is listed once."""
    found: dict[Path, RunRecord] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise ConfigError(f"{str(path)!r} does not exist")
        runs = list(_runs_under(path, SEARCH_DEPTH))
        if not runs:
            raise ConfigError(
                f"no runs under {str(path)!r}: a run directory holds config.yaml and metrics/ "
                "(as `plural run` writes); give run directories, sweep directories, or "
                "folders holding them"
            )
        for run in runs:
            found.setdefault(run.path.resolve(), run)
    return list(found.values())


def _runs_under(path: Path, depth: int) -> Iterable[RunRecord]:
    if is_run_directory(path):
        yield RunRecord.load(path)
        return
    if (path / SWEEP_FILE).is_file():
        yield from _sweep_runs(path)
        return
    if depth == 0 or not path.is_dir():
        return
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        yield from _runs_under(child, depth - 1)


def _sweep_runs(path: Path) -> Iterable[RunRecord]:
    """A sweep's cells that have started, in the sweep's order."""
    spec = json.loads((path / SWEEP_FILE).read_text())
    for cell in spec.get("runs", []):
        run_path = path / cell["dir"]
        if is_run_directory(run_path):
            yield RunRecord.load(run_path)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (lists stay values): ``{"train": {"lr": 1}}`` ->
    ``{"train.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def method_key(config: Mapping[str, Any]) -> str:
    """What identifies a run's method: its config without seed and result-neutral sections."""
    kept = {k: v for k, v in config.items() if k not in UNCOMPARED}
    return json.dumps(kept, sort_keys=True, default=str)


def group_methods(runs: Sequence[RunRecord]) -> list[Method]:
    """Runs grouped by :func:`method_key` (seeds of one setting together), labelled by what
    differs between the groups; in the order the runs were given, seeds ascending."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(method_key(run.config), []).append(run)
    members = [sorted(g, key=lambda r: r.seed) for g in groups.values()]
    flats = [
        flatten({k: v for k, v in g[0].config.items() if k not in UNCOMPARED}) for g in members
    ]
    methods = []
    for group, flat in zip(members, flats, strict=True):
        settings = {k: flat.get(k) for k in _distinguishing(flat, flats)}
        methods.append(Method(_label(group[0].algorithm, settings), tuple(group), settings))
    return _unique_labels(methods)


def _distinguishing(flat: Mapping[str, Any], flats: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys of ``flat`` whose value is not shared by all ``flats``. An algorithm's own settings
    count only against methods of the same algorithm (``ditto`` and ``fedavg`` differ in name,
    not in ``lam``)."""
    name = flat.get("algorithm.name")
    same = [f for f in flats if f.get("algorithm.name") == name]
    keys = []
    for key in sorted({k for f in flats for k in f}):
        own = key.startswith("algorithm.") and key != "algorithm.name"
        against = same if own else flats
        if len({json.dumps(f.get(key), default=str) for f in against}) > 1:
            keys.append(key)
    return keys


def _label(algorithm: str, settings: Mapping[str, Any]) -> str:
    """``ditto [partition.alpha=0.1, train.lr=0.05]``; settings of the algorithm section drop
    their ``algorithm.`` prefix; the algorithm's name alone when nothing else differs."""
    extra = []
    for key, value in settings.items():
        if key == "algorithm.name":
            continue
        name = key.removeprefix("algorithm.")
        extra.append(f"{name}={_short(value)}")
    return f"{algorithm} [{', '.join(extra)}]" if extra else algorithm


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


def _unique_labels(methods: list[Method]) -> list[Method]:
    """Number labels that still collide (settings that differ only inside lists of sections)."""
    counts: dict[str, int] = {}
    for method in methods:
        counts[method.label] = counts.get(method.label, 0) + 1
    seen: dict[str, int] = {}
    unique = []
    for method in methods:
        if counts[method.label] > 1:
            seen[method.label] = seen.get(method.label, 0) + 1
            method = dataclasses.replace(method, label=f"{method.label} #{seen[method.label]}")
        unique.append(method)
    return unique


def assignments(run: RunRecord) -> tuple[list[int], np.ndarray] | None:
    """Rounds and the clients' cluster per round (rounds x clients; -1: none yet) of a method
    that clusters, or None."""
    diagnostics = run.diagnostics
    if "assignment" not in diagnostics.columns:
        return None
    rows = diagnostics.dropna(subset=["assignment"])
    if rows.empty:
        return None
    matrix = np.array([np.asarray(a, dtype=np.int64) for a in rows["assignment"]])
    return [int(r) for r in rows["round"]], matrix
