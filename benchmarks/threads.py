"""Torch threads per process: plural's default choice against every manual setting.

Each workload (the demo's per-algorithm runs, a 20-client LeNet run on MNIST) runs in a fresh
process with ``backend.threads`` unset (plural's default, :mod:`plural.engine.threads`) and
with each manual setting 1..usable cores, once alone and once beside a second copy of itself
started at the same moment. The default must be within 1.3x of the best manual setting in
both cases. Child processes run without OMP_NUM_THREADS / MKL_NUM_THREADS, as a user's would.

    flock /tmp/plural-bench.lock python benchmarks/threads.py           # ~25 min on 2 busy cores
    flock /tmp/plural-bench.lock python benchmarks/threads.py --quick   # ~8 min

Results: ``benchmarks/results/threads.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LIMIT = 1.3


def workloads(quick: bool) -> dict[str, dict[str, Any]]:
    """Configs by name: the demo's runs of some algorithms, and a 20-client LeNet run."""
    from plural.cli import DEMO_CONFIG, demo_algorithms, demo_settings
    from plural.experiment import load_config

    rounds = 3 if quick else 15
    names = ["fedavg"] if quick else demo_algorithms()
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        config = load_config(
            DEMO_CONFIG, [f"rounds={rounds}", f"algorithm={{name: {name}}}"]
        ).to_dict()
        config["algorithm"].update(demo_settings(name, rounds))
        config["backend"] = {}  # threads unset: what the run chooses by default
        out[f"demo-{name}"] = config
    out["lenet-20"] = {
        "name": "lenet-20",
        "rounds": 1 if quick else 5,
        "dataset": {"name": "mnist", "max_samples": 3000 if quick else 20000},
        "partition": {"name": "dirichlet", "num_clients": 20, "alpha": 0.5},
        "model": {"name": "lenet"},
        "algorithm": {"name": "fedavg"},
        "train": {"lr": 0.05, "batch_size": 32},
        "eval": {"every": 100},
    }
    return out


class _Threads:
    """A run callback that keeps the threads the run's processes used (its header info)."""

    threads: int | None = None

    def on_run_info(self, info: Any) -> None:
        self.threads = info.threads

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        return False


def child(config: dict[str, Any], threads: int | None) -> None:
    """Run one config and print its wall time, the threads it chose and, where they adapted
    to the load, the client tasks run at each count (a child process)."""
    import tempfile

    import plural
    from plural.report.rundir import RunDirectory

    if threads is not None:
        config = {**config, "backend": {**config.get("backend", {}), "threads": threads}}
    used = _Threads()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        plural.run(config, out=Path(folder) / "run", progress=False, callbacks=[used])
        seconds = time.perf_counter() - started
        environment = RunDirectory(Path(folder) / "run").read_environment()[-1]
    tasks = environment.get("torch_threads_used")
    print(json.dumps({"seconds": seconds, "threads": used.threads, "tasks_at": tasks}))


def _spawn(name: str, setting: int | None, copies: int) -> tuple[list[float], int]:
    """Wall seconds of each of ``copies`` simultaneous child runs of workload ``name``, and
    the threads each used."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    command = [sys.executable, __file__, "--child", name]
    if setting is not None:
        command += ["--threads", str(setting)]
    command += ["--quick"] if QUICK else []
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)
    ]
    seconds, used = [], {}
    for process in processes:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{name} (threads {setting}) failed")
        reply = json.loads(out.strip().splitlines()[-1])
        seconds.append(reply["seconds"])
        used = {"threads": reply["threads"], "tasks_at": reply.get("tasks_at")}
    return seconds, used


QUICK = False


def measure(names: list[str], settings: list[int | None], repeats: int) -> list[dict[str, Any]]:
    """Per workload and mode, the median over ``repeats`` of the slower copy's seconds."""
    rows = []
    for name in names:
        for copies, mode in ((1, "alone"), (2, "beside a copy")):
            times, runs, chosen = {}, {}, None
            for setting in settings:
                label = "default" if setting is None else str(setting)
                runs[label] = []
                for _ in range(repeats):
                    seconds, used = _spawn(name, setting, copies)
                    runs[label].append(max(seconds))
                    chosen = used if setting is None else chosen
                    print(
                        f"{name:16s} {mode:14s} threads={label:>7} {used}: {max(seconds):6.1f} s",
                        flush=True,
                    )
                times[label] = statistics.median(runs[label])
            best = min(v for k, v in times.items() if k != "default")
            rows.append(
                {
                    "workload": name,
                    "mode": mode,
                    "seconds": times,
                    "runs": runs,
                    "default_threads": chosen,
                    "default_over_best": times["default"] / best,
                }
            )
    return rows


def main() -> None:
    global QUICK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer workloads and rounds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "results" / "threads.json"))
    parser.add_argument(
        "--workloads", nargs="+", metavar="NAME", help="only these (demo-ALGORITHM, lenet-20)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (median)")
    args = parser.parse_args()
    QUICK = args.quick
    if args.child:
        child(workloads(args.quick)[args.child], args.threads)
        return
    sys.path.insert(0, str(HERE))
    from common import machine_info

    from plural.engine.threads import usable_cores

    settings: list[int | None] = [None, *range(1, usable_cores() + 1)]
    names = list(workloads(args.quick))
    unknown = sorted(set(args.workloads or []) - set(names))
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(unknown)}; known: {', '.join(names)}")
    started = time.time()
    rows: list[dict[str, Any]] = []
    for name in args.workloads or names:  # written after each workload: nothing is lost
        rows += measure([name], settings, args.repeats)
        result = {
            "machine": machine_info(loadavg_1m_at_end=os.getloadavg()[0]),
            "quick": args.quick,
            "repeats": args.repeats,
            "seconds_total": time.time() - started,
            "rows": rows,
            "limit": LIMIT,
            "within_limit": all(r["default_over_best"] <= LIMIT for r in rows),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ndefault / best manual setting (must be <= {LIMIT}):")
    for row in rows:
        print(f"  {row['workload']:16s} {row['mode']:14s} {row['default_over_best']:.2f}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
