"""Reliability campaign: how plural takes hostile input and kills.

* Fuzz: ``--seeds`` campaigns of ``plural.safety.fuzz``, each ``--configs`` mutations of the
  example configs (``--runs`` of them mutations of a tiny digits config run for one round,
  the rest validated as ``plural run`` does before loading data) and ``--files`` corrupted
  files (npz, CSV, Parquet data; checkpoints; JSON-lines records). Each campaign runs in a
  subprocess with an 8 GiB address-space limit; each case has a 60 s time cap.
* Kills: a 3-round Ditto run with client states on disk is killed with SIGKILL at write
  events (every event with the temporary file written but not renamed or a half line
  appended, plus ``--random-kills`` random events and modes before/inside/after), and at
  ``--timed-kills`` random moments from outside; each is resumed and its files compared with
  the uninterrupted run's (metrics without the seconds column, summary and timeline without
  wall times, diagnostics, config, federation).

Prints the counts (mutations tried, clean errors, tracebacks, hangs, non-finite results,
kills survived) as a table and JSON. Run it under the shared lock::

    flock /tmp/plural-bench.lock .venv/bin/python benchmarks/reliability.py          # ~10 min
    flock /tmp/plural-bench.lock .venv/bin/python benchmarks/reliability.py --quick  # ~2 min
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from plural.cli import main as plural_main
from plural.engine import store
from plural.report import rundir
from plural.safety.kills import MODES, _Killer, compare_runs, install

ROOT = Path(__file__).resolve().parents[1]
MEMORY_CAP = 8 * 2**30
KILL_CONFIG: dict[str, Any] = {
    "name": "kill",
    "seed": 4,
    "rounds": 3,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 6, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "mlp", "hidden": [16]},
    "algorithm": {"name": "ditto"},
    "train": {"batch_size": 32},
    "sampling": {"fraction": 0.5},
    "eval": {"every": 2},
    "backend": {"threads_per_worker": 1, "state": "disk"},
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def fuzz(seed: int, configs: int, runs: int, files: int, folder: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "plural.safety.fuzz", str(ROOT / "examples"), str(folder)]
    done = subprocess.run(
        [*command, f"--seed={seed}", f"--configs={configs}", f"--runs={runs}", f"--files={files}"],
        capture_output=True,
        text=True,
        env=_env(),
        preexec_fn=_limit_memory,
    )
    if not done.stdout.strip():  # the campaign itself died: count every case as failed
        return {"died": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _quiet_main(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return plural_main(argv)


def reference_run(config: Path, out: Path) -> list[str]:
    """The uninterrupted run, with the list of its write events."""
    saved = (rundir._atomic_write, rundir.RunDirectory.append_record, store.DiskStateStore.put)
    counter = _Killer(0, "inside")
    install(counter)
    try:
        assert _quiet_main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    finally:
        rundir._atomic_write, rundir.RunDirectory.append_record, store.DiskStateStore.put = saved
    return counter.events


def kill_and_resume(
    config: Path, reference: Path, out: Path, event: int | None, mode: str, delay: float
) -> list[str]:
    """Kill a run at write ``event`` (or after ``delay`` s), resume it; what differs."""
    command = [sys.executable, "-m", "plural.safety.kills", str(config), str(out)]
    if event is not None:
        subprocess.run(
            [*command, f"--kill-at={event}", f"--mode={mode}"], capture_output=True, env=_env()
        )
    else:
        child = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
        )
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
    code = _quiet_main(["run", str(config), "--out", str(out), "--resume", "--quiet"])
    if code != 0:
        return [f"resume exited {code}"]
    return compare_runs(reference, out)


def kills(folder: Path, random_kills: int, timed_kills: int, seed: int) -> dict[str, Any]:
    config = folder / "kill.yaml"
    config.write_text(yaml.safe_dump(KILL_CONFIG))
    reference = folder / "reference"
    started = time.perf_counter()
    events = reference_run(config, reference)
    run_seconds = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    plan: list[tuple[int | None, str, float]] = [
        (e, "inside", 0.0) for e in range(1, len(events) + 1)
    ]
    plan += [
        (int(rng.integers(1, len(events) + 1)), str(rng.choice(MODES)), 0.0)
        for _ in range(random_kills)
    ]
    # from outside, at a random moment of the run (after the ~3 s the imports take)
    plan += [
        (None, "timed", float(rng.uniform(2.0, 4.0 + 2 * run_seconds))) for _ in range(timed_kills)
    ]
    failures = []
    for index, (event, mode, delay) in enumerate(plan):
        problems = kill_and_resume(config, reference, folder / f"k{index}", event, mode, delay)
        if problems:
            where = events[event - 1] if event else f"{delay:.1f} s"
            failures.append({"event": event, "where": where, "mode": mode, "problems": problems})
    return {"events": len(events), "kills": len(plan), "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="fuzz campaigns (seeds 0..N-1)")
    parser.add_argument("--configs", type=int, default=600, help="config cases per campaign")
    parser.add_argument("--runs", type=int, default=60, help="of which run for a round")
    parser.add_argument("--files", type=int, default=100, help="file cases per campaign")
    parser.add_argument("--random-kills", type=int, default=12)
    parser.add_argument("--timed-kills", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="1 campaign of 300 + 50, 6 kills")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.configs, args.runs, args.files = 1, 300, 30, 50
        args.random_kills, args.timed_kills = 0, 0
    torch.set_num_threads(1)
    totals = {k: 0 for k in ("tried", "ok", "clean", "traceback", "hang", "nonfinite")}
    file_totals = dict(totals)
    failures: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="plural-reliability-") as scratch:
        for seed in range(args.seeds):
            report = fuzz(seed, args.configs, args.runs, args.files, Path(scratch) / f"f{seed}")
            if "died" in report:
                failures.append({"seed": seed, "died": report["died"]})
                continue
            for key in totals:
                totals[key] += report["configs"][key]
                file_totals[key] += report["files"][key]
            failures += report["failures"]
        kill_folder = Path(scratch) / "kills"
        kill_folder.mkdir()
        if args.quick:
            kill_report = kills_quick(kill_folder)
        else:
            kill_report = kills(kill_folder, args.random_kills, args.timed_kills, seed=0)
    survived = kill_report["kills"] - len(kill_report["failures"])
    rows = [
        ("config mutations tried", totals["tried"]),
        ("  ran or validated cleanly", totals["ok"]),
        ("  clean errors", totals["clean"]),
        ("  tracebacks", totals["traceback"]),
        ("  hangs", totals["hang"]),
        ("  exit 0 with a non-finite metric", totals["nonfinite"]),
        ("corrupted files tried", file_totals["tried"]),
        ("  read (corruption harmless)", file_totals["ok"]),
        ("  clean errors", file_totals["clean"]),
        ("  tracebacks", file_totals["traceback"]),
        ("  hangs", file_totals["hang"]),
        (f"kills (of {kill_report['events']} write events)", kill_report["kills"]),
        ("  survived (resume == uninterrupted)", survived),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{label:<{width}}  {value}" for label, value in rows))
    print(
        json.dumps(
            {
                "configs": totals,
                "files": file_totals,
                "kills": kill_report,
                "fuzz_failures": failures,
            }
        )
    )


def kills_quick(folder: Path) -> dict[str, Any]:
    """Six kills: the first write events of round 1, inside its checkpoint, and the last."""
    config = folder / "kill.yaml"
    config.write_text(yaml.safe_dump(KILL_CONFIG))
    reference = folder / "reference"
    events = reference_run(config, reference)
    first_checkpoint = events.index("write checkpoint.pt") + 1
    picks = [1, first_checkpoint - 1, first_checkpoint, first_checkpoint + 1, len(events) - 1]
    picks.append(len(events))
    failures = []
    for index, event in enumerate(picks):
        problems = kill_and_resume(config, reference, folder / f"k{index}", event, "inside", 0.0)
        if problems:
            failures.append({"event": event, "where": events[event - 1], "problems": problems})
    return {"events": len(events), "kills": len(picks), "failures": failures}


if __name__ == "__main__":
    main()
