"""A run killed with SIGKILL at any write (in round 1 before the first checkpoint, inside the
checkpoint write, at a random write) and then resumed gives the uninterrupted run's files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from plural.cli import main
from plural.engine import store
from plural.report import rundir
from plural.safety.kills import _Killer, compare_runs, install

ROOT = Path(__file__).parents[1]
CONFIG = {
    "name": "kill",
    "seed": 4,
    "rounds": 3,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 6, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "mlp", "hidden": [16]},
    "algorithm": {"name": "ditto"},  # personal state on disk: three kinds of writes
    "train": {"batch_size": 32},
    "sampling": {"fraction": 0.5},
    "eval": {"every": 2},
    "backend": {"threads_per_worker": 1, "state": "disk"},
}


def killed_at(config: Path, out: Path, event: int, mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "plural.safety.kills", str(config), str(out)]
    done = subprocess.run(
        [*command, f"--kill-at={event}", f"--mode={mode}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return done.returncode


def test_resume_after_a_kill_at_any_write_gives_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    reference = tmp_path / "reference"
    counter = _Killer(0, "inside")  # counts the writes of the uninterrupted run
    for target, name in ((rundir, "_atomic_write"), (rundir.RunDirectory, "append_record")):
        monkeypatch.setattr(target, name, getattr(target, name))
    monkeypatch.setattr(store.DiskStateStore, "put", store.DiskStateStore.put)
    install(counter)
    assert main(["run", str(config), "--out", str(reference), "--quiet"]) == 0
    monkeypatch.undo()
    events = counter.events
    first_checkpoint = events.index("write checkpoint.pt") + 1
    seed = int(os.environ.get("PLURAL_FUZZ_SEED", "0"))
    rng = np.random.default_rng(seed)
    kills = [
        (first_checkpoint - 1, "inside"),  # round 1, before its checkpoint exists
        (first_checkpoint, "inside"),  # inside the first checkpoint write
        (
            int(rng.integers(first_checkpoint + 1, len(events) + 1)),
            str(rng.choice(["before", "inside", "after"])),
        ),
    ]
    for event, mode in kills:
        out = tmp_path / f"killed-{event}-{mode}"
        assert killed_at(config, out, event, mode) == -9, (event, mode, events[event - 1])
        assert main(["run", str(config), "--out", str(out), "--resume", "--quiet"]) == 0
        problems = compare_runs(reference, out)
        assert not problems, (event, events[event - 1], mode, problems)
    capsys.readouterr()
