"""The run directory, written as the run goes.

Layout::

    config.yaml          the resolved config (every default filled in)
    federation.json      clients' split sizes, label histogram, true groups
    metrics/round_*.parquet  per-round, per-client rows (one file per round, append-only)
    metrics.parquet      all rows, written when the run ends
    summary.json         summary of the last evaluated round (rewritten after each)
    diagnostics.jsonl    per round: drift, cluster assignments and quality, G^2 / B^2
    timeline.jsonl       per round: cumulative wall-clock seconds, bytes and training FLOPs
    environment.json     versions of Python and the packages, machine, command; one entry
                         per start (a resumed run adds one)
    checkpoint.pt        state after the last finished round (atomic replace)
    artifacts/           method-specific results (e.g. pFedLIA's influence matrix: .npy + .png)

Every file is written to a temporary name and renamed, so a run killed at any moment leaves
only complete files behind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.sparse import issparse, save_npz

from plural.config import ConfigError
from plural.engine.rows import METRIC_COLUMNS, OPTIONAL_COLUMNS
from plural.safety.diskio import atomic_write, writing
from plural.safety.plain import UnsafeCheckpointError, load_plain, save_plain
from plural.safety.runlock import RunDirectoryError

TIMING_COLUMNS = ["seconds"]
"""Columns measured by the clock: they differ between otherwise identical runs."""


def deterministic(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` without the clock-measured columns (to compare runs for equality)."""
    return metrics.drop(columns=[c for c in TIMING_COLUMNS if c in metrics.columns])


_atomic_write = atomic_write


class RunDirectory:
    """Reads and writes one run's files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.federation_path = self.path / "federation.json"
        self.metrics_dir = self.path / "metrics"
        self.metrics_path = self.path / "metrics.parquet"
        self.summary_path = self.path / "summary.json"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.diagnostics_path = self.path / "diagnostics.jsonl"
        self.timeline_path = self.path / "timeline.jsonl"
        self.environment_path = self.path / "environment.json"
        self.artifacts_dir = self.path / "artifacts"

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def prepare(self, config: Mapping[str, Any], *, resume: bool) -> None:
        """Create the directory; refuse to overwrite a finished or started run unless resuming."""
        if not resume and (self.has_checkpoint() or self.metrics_dir.exists()):
            raise ConfigError(
                f"run directory {str(self.path)!r} already holds a run; pass --resume to "
                "continue it or choose another --out"
            )
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.write_text(self.config_path, yaml.safe_dump(dict(config), sort_keys=False))

    def write_text(self, path: Path, text: str) -> None:
        _atomic_write(path, lambda tmp: tmp.write_text(text))

    def write_json(self, path: Path, data: Any) -> None:
        """Strict JSON: non-finite numbers (a metric with no samples) are written as null."""
        text = json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False)
        self.write_text(path, text + "\n")

    def round_metrics_path(self, round_index: int) -> Path:
        return self.metrics_dir / f"round_{round_index:06d}.parquet"

    def write_round_metrics(self, round_index: int, rows: list[dict[str, Any]]) -> None:
        optional = [c for c in OPTIONAL_COLUMNS if any(c in row for row in rows)]
        frame = pd.DataFrame(rows, columns=[*METRIC_COLUMNS, *optional])
        _atomic_write(
            self.round_metrics_path(round_index), lambda tmp: frame.to_parquet(tmp, index=False)
        )

    def read_metrics(self) -> pd.DataFrame:
        parts = sorted(self.metrics_dir.glob("round_*.parquet"))
        if not parts:
            if self.metrics_path.is_file():
                return _read_parquet(self.metrics_path)
            return pd.DataFrame(columns=METRIC_COLUMNS)
        return pd.concat([_read_parquet(p) for p in parts], ignore_index=True)

    def consolidate_metrics(self) -> pd.DataFrame:
        frame = self.read_metrics()
        _atomic_write(self.metrics_path, lambda tmp: frame.to_parquet(tmp, index=False))
        return frame

    def append_record(self, path: Path, record: Mapping[str, Any]) -> None:
        """Add one round's record as a JSON line (such files are small and append-only);
        strict JSON, as :meth:`write_json`: a non-finite number is written as null."""
        line = json.dumps(_finite(dict(record)), default=_json_default, allow_nan=False)
        with writing(path), path.open("a") as handle:
            handle.write(line + "\n")

    def read_records(self, path: Path) -> list[dict[str, Any]]:
        """The records of a JSON-lines file. A last line without its newline was cut short by
        a kill and is left out; any other unreadable line is an error naming the file."""
        if not path.is_file():
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise RunDirectoryError(f"cannot read {str(path)!r}: {err}") from err
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                if number == len(lines):  # no newline after it: a write cut short
                    break
                raise RunDirectoryError(
                    f"{str(path)!r} line {number} is not a JSON record ({err}); the file is "
                    "damaged: delete it (or the run directory) and start again"
                ) from err
            if not isinstance(record, dict) or not isinstance(record.get("round"), int):
                raise RunDirectoryError(
                    f"{str(path)!r} line {number} is not a round's record; the file is damaged"
                )
            records.append(record)
        return records

    def drop_records_after(self, path: Path, round_index: int) -> None:
        kept = [r for r in self.read_records(path) if r["round"] <= round_index]
        self.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def append_diagnostics(self, record: Mapping[str, Any]) -> None:
        self.append_record(self.diagnostics_path, record)

    def read_diagnostics(self) -> list[dict[str, Any]]:
        return self.read_records(self.diagnostics_path)

    def read_timeline(self) -> list[dict[str, Any]]:
        return self.read_records(self.timeline_path)

    def drop_rounds_after(self, round_index: int) -> None:
        """Forget what rounds after ``round_index`` wrote (left by an interrupted run)."""
        for part in self.metrics_dir.glob("round_*.parquet"):
            if part.stem.split("_")[1].isdigit() and int(part.stem.split("_")[1]) > round_index:
                part.unlink()
        for path in (self.diagnostics_path, self.timeline_path):
            self.drop_records_after(path, round_index)

    def forget_rounds(self) -> None:
        """Forget every round a run without a checkpoint wrote (killed before its first
        checkpoint), so a fresh start writes each round once."""
        self.drop_rounds_after(0)
        for path in (self.summary_path, self.metrics_path):
            path.unlink(missing_ok=True)

    def record_environment(self, entry: Mapping[str, Any]) -> None:
        """Add this start's environment (versions, machine, command) to ``environment.json``."""
        self.write_json(self.environment_path, [*self.read_environment(), dict(entry)])

    def amend_environment(self, fields: Mapping[str, Any]) -> None:
        """Add ``fields`` to this start's entry of ``environment.json`` (what the run learnt
        as it went, e.g. the threads it used)."""
        entries = self.read_environment()
        if entries:
            entries[-1].update(fields)
            self.write_json(self.environment_path, entries)

    def read_environment(self) -> list[dict[str, Any]]:
        if not self.environment_path.is_file():
            return []
        return json.loads(self.environment_path.read_text())

    def artifact_path(self, name: str, suffix: str) -> Path:
        return self.artifacts_dir / f"{name}{suffix}"

    def has_artifact(self, name: str) -> bool:
        return self.artifacts_dir.is_dir() and any(self.artifacts_dir.glob(f"{name}.*"))

    def write_artifact(self, name: str, value: Any) -> Path:
        """Save an array as ``.npy``, a scipy sparse matrix as ``.npz`` (its stored entries,
        explicit zeros included) or a mapping as ``.json`` under ``artifacts/``."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        if issparse(value):
            path = self.artifact_path(name, ".npz")
            _atomic_write(path, lambda tmp: _save_npz(tmp, value))
            return path
        if isinstance(value, np.ndarray):
            path = self.artifact_path(name, ".npy")
            _atomic_write(path, lambda tmp: _save_npy(tmp, value))
            return path
        path = self.artifact_path(name, ".json")
        self.write_json(path, value)
        return path

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        _atomic_write(self.checkpoint_path, lambda tmp: save_plain(dict(state), tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        # Loaded with torch's weights-only unpickler (plural.safety.plain): a checkpoint from
        # someone else cannot run code when it is read.
        try:
            checkpoint = load_plain(self.checkpoint_path)
        except UnsafeCheckpointError as err:
            raise RunDirectoryError(f"--resume: {err}") from None
        except Exception as err:  # torch raises many types for a damaged file
            raise RunDirectoryError(
                f"--resume: {str(self.checkpoint_path)!r} cannot be read ({type(err).__name__}: "
                f"{str(err)[:200]}); it is empty or damaged. Delete it to start the run again"
            ) from err
        if not isinstance(checkpoint, dict):
            raise RunDirectoryError(
                f"--resume: {str(self.checkpoint_path)!r} is not a plural checkpoint"
            )
        return checkpoint


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises many types for a damaged file
        raise RunDirectoryError(
            f"{str(path)!r} cannot be read ({type(err).__name__}: {str(err)[:200]}); the file "
            "is damaged: delete the run directory and start again"
        ) from err


def _save_npz(path: Path, value: Any) -> None:
    with path.open("wb") as handle:  # a file object: save_npz would append ".npz" to the name
        save_npz(handle, value, compressed=True)


def _save_npy(path: Path, value: np.ndarray) -> None:
    with path.open("wb") as handle:  # a file object: np.save would append ".npy" to the name
        np.save(handle, value)


def _finite(data: Any) -> Any:
    """``data`` with NaN and infinities replaced by None (JSON null)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    if isinstance(data, np.generic) and np.issubdtype(type(data), np.floating):
        return _finite(float(data))
    if isinstance(data, np.ndarray):
        return _finite(data.tolist())
    return data


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # tensors and other array-likes: their numbers, finite
        return _finite(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
