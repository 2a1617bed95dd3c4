"""Fuzzing: random mutations of the example configs and corruptions of data files,
checkpoints and records must each end in a result or a clean error, never a traceback, a
hang or an exit 0 with a non-finite metric. ``PLURAL_FUZZ_SEED`` picks other cases."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plural.config import ConfigError
from plural.safety.fuzz import (
    CaseTimeout,
    corrupt_bytes,
    mutate,
    nonfinite_metric,
    run_case,
    time_cap,
)

ROOT = Path(__file__).parents[1]
MEMORY_CAP = 8 * 2**30  # bytes of address space for the whole campaign
CONFIG_CASES, RUN_CASES, FILE_CASES = 300, 30, 50


def test_the_fuzzer_tells_clean_errors_from_failures() -> None:
    def config_error() -> None:
        raise ConfigError("train.lr: expected a number")

    def crash() -> None:
        raise KeyError("name")

    def spin() -> None:
        while True:
            time.sleep(0.01)

    assert run_case("a", lambda: None, 5).kind == "ok"
    assert run_case("b", config_error, 5).kind == "clean"
    crashed = run_case("c", crash, 5)
    assert crashed.kind == "traceback" and "KeyError" in crashed.detail and crashed.failed
    assert run_case("d", spin, 0.2).kind == "hang"
    assert run_case("e", lambda: "exit 0 but test accuracy mean is None", 5).kind == "nonfinite"
    with pytest.raises(CaseTimeout), time_cap(0.05):
        spin()


def test_a_summary_with_a_null_mean_is_a_non_finite_result(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"test": {"accuracy": {"mean": None}, "loss": {"mean": 1.0}}}))
    assert nonfinite_metric(path) == "exit 0 but test accuracy mean is None"
    path.write_text(json.dumps({"test": {"accuracy": {"mean": 0.5}, "loss": {"mean": 1.0}}}))
    assert nonfinite_metric(path) is None


def test_mutations_and_corruptions_are_seeded_and_change_the_input() -> None:
    raw = {"train": {"lr": 0.1}, "model": {"name": "mlp"}}
    first = [mutate(raw, np.random.default_rng(s), [0, None]) for s in range(20)]
    again = [mutate(raw, np.random.default_rng(s), [0, None]) for s in range(20)]
    assert first == again and all(m != raw for m in first)
    assert raw == {"train": {"lr": 0.1}, "model": {"name": "mlp"}}  # not mutated in place
    good = bytes(range(256)) * 4
    for seed in range(20):
        _, bad = corrupt_bytes(good, np.random.default_rng(seed))
        assert bad != good


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX time and memory limits")
def test_fuzzed_configs_and_files_end_cleanly(tmp_path: Path) -> None:
    seed = int(os.environ.get("PLURAL_FUZZ_SEED", "0"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "plural.safety.fuzz", str(ROOT / "examples"), str(tmp_path)]
    counts = [f"--seed={seed}", f"--configs={CONFIG_CASES}", f"--runs={RUN_CASES}"]
    done = subprocess.run(
        [*command, *counts, f"--files={FILE_CASES}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        preexec_fn=_limit_memory,
    )
    assert done.stdout.strip(), f"the campaign died (memory?): {done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    failures = "\n\n".join(f"{f['kind']}: {f['case']}\n{f['detail']}" for f in report["failures"])
    assert not report["failures"], f"seed {seed}:\n{failures}"
    assert report["configs"]["tried"] == CONFIG_CASES
    assert report["files"]["tried"] == FILE_CASES
    assert report["configs"]["clean"] > 0 and report["configs"]["ok"] > 0
    assert done.returncode == 0
