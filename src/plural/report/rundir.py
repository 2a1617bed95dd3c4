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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from plural.config import ConfigError

METRIC_COLUMNS = [
    "round",
    "client",
    "split",
    "loss",
    "accuracy",
    "samples",
    "bytes_up",
    "bytes_down",
    "drift",
    "flops",
    "seconds",
]
TIMING_COLUMNS = ["seconds"]
"""Columns measured by the clock: they differ between otherwise identical runs."""


def deterministic(metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` without the clock-measured columns (to compare runs for equality)."""
    return metrics.drop(columns=[c for c in TIMING_COLUMNS if c in metrics.columns])


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


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
        self.write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")

    def round_metrics_path(self, round_index: int) -> Path:
        return self.metrics_dir / f"round_{round_index:06d}.parquet"

    def write_round_metrics(self, round_index: int, rows: list[dict[str, Any]]) -> None:
        frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
        _atomic_write(
            self.round_metrics_path(round_index), lambda tmp: frame.to_parquet(tmp, index=False)
        )

    def read_metrics(self) -> pd.DataFrame:
        parts = sorted(self.metrics_dir.glob("round_*.parquet"))
        if not parts:
            if self.metrics_path.is_file():
                return pd.read_parquet(self.metrics_path)
            return pd.DataFrame(columns=METRIC_COLUMNS)
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)

    def consolidate_metrics(self) -> pd.DataFrame:
        frame = self.read_metrics()
        _atomic_write(self.metrics_path, lambda tmp: frame.to_parquet(tmp, index=False))
        return frame

    def append_record(self, path: Path, record: Mapping[str, Any]) -> None:
        """Add one round's record as a JSON line (such files are small and append-only)."""
        with path.open("a") as handle:
            handle.write(json.dumps(dict(record), default=_json_default) + "\n")

    def read_records(self, path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

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
            if int(part.stem.split("_")[1]) > round_index:
                part.unlink()
        for path in (self.diagnostics_path, self.timeline_path):
            self.drop_records_after(path, round_index)

    def record_environment(self, entry: Mapping[str, Any]) -> None:
        """Add this start's environment (versions, machine, command) to ``environment.json``."""
        self.write_json(self.environment_path, [*self.read_environment(), dict(entry)])

    def read_environment(self) -> list[dict[str, Any]]:
        if not self.environment_path.is_file():
            return []
        return json.loads(self.environment_path.read_text())

    def artifact_path(self, name: str, suffix: str) -> Path:
        return self.artifacts_dir / f"{name}{suffix}"

    def has_artifact(self, name: str) -> bool:
        return self.artifacts_dir.is_dir() and any(self.artifacts_dir.glob(f"{name}.*"))

    def write_artifact(self, name: str, value: Any) -> Path:
        """Save an array as ``.npy`` or a mapping as ``.json`` under ``artifacts/``."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(value, np.ndarray):
            path = self.artifact_path(name, ".npy")
            _atomic_write(path, lambda tmp: _save_npy(tmp, value))
            return path
        path = self.artifact_path(name, ".json")
        self.write_json(path, value)
        return path

    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        _atomic_write(self.checkpoint_path, lambda tmp: torch.save(dict(state), tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        # Checkpoints hold plural's own dataclasses, so they are loaded with full unpickling:
        # only resume from run directories you trust.
        return torch.load(self.checkpoint_path, weights_only=False)


def _save_npy(path: Path, value: np.ndarray) -> None:
    with path.open("wb") as handle:  # a file object: np.save would append ".npy" to the name
        np.save(handle, value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
