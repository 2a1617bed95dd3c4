"""Golden metrics: every algorithm's tiny run gives the numbers recorded before the engine
was restructured (issue 19), so refactoring never changes a result.

Each value must agree to 1e-6 everywhere. With ``PLURAL_GOLDEN_BITWISE=1`` (for checking a
refactor on the host that recorded the file) the metrics and the final server parameters must
also be bit-identical (their SHA-256). Not by default: a fresh host with the same torch
version and CPU capability as the recording one gave the same example runs to 3e-7, not bit
for bit (2026-12-05), so a machine label cannot say when bits must match.
A new algorithm adds its entry with ``PLURAL_REGENERATE_GOLDEN=missing pytest
tests/test_golden_metrics.py``; ``=all`` rewrites every entry (only when a change of results
is intended: say so in the commit).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import plural
from plural.report.rundir import deterministic
from test_conformance import NAMES, config_for

GOLDEN = Path(__file__).parent / "golden" / "metrics.json"
VALUES = ["loss", "accuracy", "samples", "bytes_up", "bytes_down", "drift", "flops"]


def machine() -> str:
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}"


def fingerprint(name: str, tiny_config: dict[str, Any]) -> dict[str, Any]:
    cfg = config_for(name, tiny_config)
    cfg["rounds"] = 3
    cfg["diagnostics"] = {"gradient_every": 2}
    return results_fingerprint(plural.run(cfg))


def results_fingerprint(results: plural.Results) -> dict[str, Any]:
    """The run's metric rows (keys and values, clock columns left out) and a SHA-256 of the
    values and the final server parameters."""
    metrics = deterministic(results.metrics)
    keys = metrics[["round", "client", "split"]].astype(str).agg("/".join, axis=1).tolist()
    values = metrics[VALUES].to_numpy(dtype=np.float64)
    server = results.server.params
    digest = hashlib.sha256(np.ascontiguousarray(values).tobytes())
    for entry in sorted(server):
        digest.update(entry.encode() + server[entry].detach().cpu().numpy().tobytes())
    return {"keys": keys, "values": values.tolist(), "sha256": digest.hexdigest()}


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    mode = os.environ.get("PLURAL_REGENERATE_GOLDEN")
    if mode == "all" or (mode and not GOLDEN.exists()):
        return {"machine": machine(), "runs": {}}
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module", autouse=True)
def _save_when_regenerating(golden: dict[str, Any]) -> Any:
    yield
    if os.environ.get("PLURAL_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=0, sort_keys=True) + "\n")


def test_every_algorithm_has_golden_metrics(golden: dict[str, Any]) -> None:
    if os.environ.get("PLURAL_REGENERATE_GOLDEN"):
        pytest.skip("regenerating")
    missing = sorted(set(NAMES) - set(golden["runs"]))
    assert not missing, f"no golden metrics for {missing}: regenerate (see module docstring)"


@pytest.mark.parametrize("name", NAMES)
def test_results_match_the_golden_metrics(
    name: str, tiny_config: dict[str, Any], golden: dict[str, Any]
) -> None:
    if os.environ.get("PLURAL_REGENERATE_GOLDEN"):
        if name not in golden["runs"]:
            golden["runs"][name] = fingerprint(name, tiny_config)
        return
    now = fingerprint(name, tiny_config)
    if name not in golden["runs"]:
        pytest.skip(f"{name} is newer than the golden file")
    assert_same_results(now, golden["runs"][name], golden["machine"])


def assert_same_results(now: dict[str, Any], recorded: dict[str, Any], recorded_on: str) -> None:
    """To 1e-6; bit for bit too with ``PLURAL_GOLDEN_BITWISE=1`` on the recording machine."""
    assert now["keys"] == recorded["keys"]
    if os.environ.get("PLURAL_GOLDEN_BITWISE") == "1" and recorded_on == machine():
        assert now["sha256"] == recorded["sha256"], "results changed (bit for bit)"
    np.testing.assert_allclose(
        np.asarray(now["values"]), np.asarray(recorded["values"]), rtol=1e-6, atol=1e-7
    )
