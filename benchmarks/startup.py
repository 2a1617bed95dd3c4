"""Start-up cost of the process and Ray backends: one small run after another.

Each backend starts its worker processes at the start of a run. A fresh Python process
imports torch and plural (about 3 s of one core here) and, at its first optimizer, torch's
``torch._dynamo`` (about 2 s more: ``torch.optim`` imports it lazily). This script runs the
tests' tiny federation (6 clients, 2 rounds) several times in one driver and times each run:

- process backend, workers spawned (the old way) against workers forked from a server that
  preloaded torch, plural and ``torch._dynamo`` (``forkserver``, plural's default on Linux);
- Ray backend (2 actors; each actor imports ``torch._dynamo`` at start-up, all at once).

    .venv/bin/python benchmarks/startup.py            # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/startup.py --repeats 5

Results: ``benchmarks/results/startup.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from common import machine_info  # noqa: E402

import plural  # noqa: E402
from plural.engine import backends  # noqa: E402
from tiny_config import TINY_CONFIG  # noqa: E402


def timed_runs(algorithms: list[str], overrides: list[str]) -> list[float]:
    """Seconds of ``plural.run`` for each algorithm in turn (same driver process)."""
    times = []
    for name in algorithms:
        config = copy.deepcopy(TINY_CONFIG)
        config["algorithm"] = {"name": name}
        started = time.perf_counter()
        plural.run(config, overrides=overrides)
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, Any]:
    return {
        "first_s": times[0],
        "later_median_s": statistics.median(times[1:]),
        "all_s": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="runs per backend (>= 2)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "startup.json")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats: at least 2 (the first run and the later ones)")
    torch.set_num_threads(1)
    algorithms = (["fedavg", "ditto"] * args.repeats)[: args.repeats]
    process = ["backend.name=process", "backend.workers=2"]
    results: dict[str, Any] = {"machine": machine_info(), "algorithms": algorithms}

    forkserver = backends.worker_context
    backends.worker_context = lambda: multiprocessing.get_context("spawn")  # type: ignore[assignment]
    results["process_spawn"] = summary(timed_runs(algorithms, process))
    backends.worker_context = forkserver  # type: ignore[assignment]
    results["process_forkserver"] = summary(timed_runs(algorithms, process))

    try:
        import ray
    except ImportError:
        print("ray is not installed: the Ray rows are skipped")
    else:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        results["ray"] = summary(timed_runs(algorithms, ["backend.name=ray", "backend.workers=2"]))
        ray.shutdown()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for key in ("process_spawn", "process_forkserver", "ray"):
        if key in results:
            row = results[key]
            print(f"{key:20s} first {row['first_s']:6.2f} s   later {row['later_median_s']:6.2f} s")


if __name__ == "__main__":
    main()
