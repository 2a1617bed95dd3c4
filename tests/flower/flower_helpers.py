"""Shared by the Flower tests: configs and the comparison with the sequential backend."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plural.registry import ALGORITHMS as REGISTERED
from plural.report.rundir import deterministic

SETTINGS: dict[str, dict[str, Any]] = {
    "ifca": {"k": 2},
    "pfedlia": {"warmup_rounds": 1},
}
"""Algorithm settings for 3-round jobs (the others run with their defaults)."""
FEDERATION_CHANGES: dict[str, dict[str, Any]] = {
    "fedbn": {"model": {"name": "mlp", "hidden": [16], "batch_norm": True}},
    "oracle": {"transforms": [{"name": "rotation", "groups": 2}]},  # true groups
}
"""What an algorithm needs of the federation or model beyond the tiny config."""
ALGORITHMS: list[str] = sorted(entry.name for entry in REGISTERED)
"""Every registered algorithm: each must run through Flower as it runs in plural."""
TIMING_KEYS = frozenset({"wall_time_s", "seconds"})
"""Clock readings in summaries (they differ between any two runs)."""


def config(base: dict[str, Any], algorithm: str, **changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["rounds"] = 3
    cfg["algorithm"] = {"name": algorithm, **SETTINGS.get(algorithm, {})}
    cfg.update(copy.deepcopy(FEDERATION_CHANGES.get(algorithm, {})))
    cfg.update(changes)
    return cfg


def assert_same_metrics(expected: pd.DataFrame, got: pd.DataFrame, atol: float = 1e-6) -> None:
    """Every (round, client, split) row alike: counts exactly, losses and accuracies to atol."""
    keys = ["round", "client", "split"]
    a = deterministic(expected).sort_values(keys).reset_index(drop=True)
    b = deterministic(got).sort_values(keys).reset_index(drop=True)
    assert len(a) == len(b) and len(a) > 0
    pd.testing.assert_frame_equal(a[keys], b[keys])
    for column in a.columns:
        if column in keys:
            continue
        x, y = a[column].to_numpy(dtype=float), b[column].to_numpy(dtype=float)
        np.testing.assert_allclose(y, x, atol=atol, rtol=0, equal_nan=True, err_msg=column)


def without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def summary_without_timing(run_dir: Path) -> dict[str, Any]:
    return without_timing(json.loads((run_dir / "summary.json").read_text()))


def assert_same_run_directory(expected: Path, got: Path) -> None:
    """The same files, the same config, federation, summary (but its clock) and metrics."""
    names = {p.relative_to(expected).as_posix() for p in expected.rglob("*") if p.is_file()}
    got_names = {p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()}
    assert names == got_names
    for name in ("config.yaml", "federation.json"):
        assert (expected / name).read_text() == (got / name).read_text()
    a, b = summary_without_timing(expected), summary_without_timing(got)
    assert _close(a, b), (a, b)
    assert_same_metrics(
        pd.read_parquet(expected / "metrics.parquet"), pd.read_parquet(got / "metrics.parquet")
    )


def _close(a: Any, b: Any, atol: float = 1e-6) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], atol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, atol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, atol=atol, rtol=0, equal_nan=True))
    return a == b
