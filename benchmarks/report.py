"""What comparing and reporting cost: reading runs, the ranked table, the HTML report
(seconds, file sizes), and a sweep's overhead over its runs.

Two workloads:

- ``demo``: every demo algorithm on the demo federation (digits, 20 clients, Dirichlet 0.3),
  ``--rounds`` rounds, one seed: many methods, few clients;
- ``wide``: FedAvg and IFCA on MNIST split over ``--clients`` clients (rotated into 4 true
  groups), 2 seeds, a small logistic regression: few methods, many clients.

    .venv/bin/python benchmarks/report.py                    # both, default sizes
    .venv/bin/python benchmarks/report.py --clients 1000 --out benchmarks/results/report.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine_info

from plural.cli import DEMO_CONFIG, demo_algorithms, demo_settings
from plural.report.compare import comparison_table
from plural.report.html import write_report
from plural.report.runs import discover_runs, group_methods
from plural.runner.sweep import Axis, run_sweep


def demo_sweep(out: Path, rounds: int) -> float:
    """Every demo algorithm as one sweep axis; the sweep's wall seconds."""
    values = []
    for name in demo_algorithms():
        values.append({"name": name, **demo_settings(name, rounds)})
    base = {**DEMO_CONFIG, "rounds": rounds}
    started = time.perf_counter()
    run_sweep(base, out, [Axis("algorithm", tuple(values))], (0,), progress=None)
    return time.perf_counter() - started


def wide_sweep(out: Path, clients: int, rounds: int) -> float:
    base = {
        "name": "wide",
        "rounds": rounds,
        "dataset": {"name": "mnist"},
        "partition": {"name": "iid", "num_clients": clients},
        "transforms": [{"name": "rotation", "groups": 4}],
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg"},
        "sampling": {"fraction": 0.1},
        "train": {"lr": 0.05, "batch_size": 32},
        "eval": {"every": max(1, rounds // 2), "splits": ["test"]},
        "backend": {"name": "vectorized"},
    }
    started = time.perf_counter()
    run_sweep(base, out, [Axis("algorithm", ("fedavg", "ifca"))], (0, 1), progress=None)
    return time.perf_counter() - started


def measure_report(sweep: Path) -> dict[str, Any]:
    """Seconds to read and rank the runs, then to write the report; the report's sizes."""
    started = time.perf_counter()
    methods = group_methods(discover_runs([sweep]))
    comparison_table(methods)
    read = time.perf_counter() - started
    started = time.perf_counter()
    report = write_report(methods, sweep / "report.html")
    written = time.perf_counter() - started
    files = list((sweep / "report_files").iterdir())
    return {
        "methods": len(methods),
        "runs": sum(len(m.runs) for m in methods),
        "read_and_rank_s": round(read, 3),
        "report_s": round(written, 3),
        "report_html_mb": round(report.stat().st_size / 1e6, 3),
        "figures": len(files) // 2,
        "figure_files_mb": round(sum(f.stat().st_size for f in files) / 1e6, 3),
        "largest_svg_mb": round(
            max(f.stat().st_size for f in files if f.suffix == ".svg") / 1e6, 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="demo rounds")
    parser.add_argument("--clients", type=int, default=1000, help="wide workload's clients")
    parser.add_argument("--wide-rounds", type=int, default=10)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine_info()}
    with tempfile.TemporaryDirectory() as folder:
        demo = Path(folder) / "demo"
        seconds = demo_sweep(demo, args.rounds)
        results["demo"] = {"rounds": args.rounds, "sweep_s": round(seconds, 2)}
        results["demo"].update(measure_report(demo))
        print("demo", results["demo"], flush=True)
        wide = Path(folder) / "wide"
        seconds = wide_sweep(wide, args.clients, args.wide_rounds)
        results["wide"] = {
            "clients": args.clients,
            "rounds": args.wide_rounds,
            "sweep_s": round(seconds, 2),
        }
        results["wide"].update(measure_report(wide))
        print("wide", results["wide"], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
