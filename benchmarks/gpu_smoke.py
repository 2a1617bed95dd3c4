"""Every registered algorithm for two tiny rounds on a device, on the sequential and the
vectorized backends: which ones run, and where the others fail.

CI has no GPU, so this is how a GPU machine checks that no code path leaves a tensor on the
CPU (``Expected all tensors to be on the same device``). It also compares each algorithm's
final mean test accuracy between the two backends and with a CPU run.

    PYTHONPATH=src python benchmarks/gpu_smoke.py --device cuda --out OUT_DIR
    PYTHONPATH=src python benchmarks/gpu_smoke.py --device cpu --out /tmp/smoke   # the script

Writes ``OUT_DIR/gpu_smoke.json`` (one row per algorithm and backend) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import plural
from plural.registry import ALGORITHMS

BASE: dict[str, Any] = {
    "seed": 3,
    "rounds": 2,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 6, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"lr": 0.05, "momentum": 0.5, "batch_size": 16},
    "sampling": {"fraction": 0.5},
}
# The conformance table's rows: settings and models some algorithms need.
SETTINGS: dict[str, dict[str, Any]] = {"pfedlia": {"warmup_rounds": 1}}
MODELS: dict[str, dict[str, Any]] = {
    "fedbn": {"name": "mlp", "hidden": [16], "batch_norm": True},
}


def run_one(name: str, backend: str, device: str) -> dict[str, Any]:
    """Two rounds of ``name``: its final mean test accuracy, or the error and where it rose."""
    cfg = {
        **BASE,
        "algorithm": {"name": name, **SETTINGS.get(name, {})},
        "model": MODELS.get(name, BASE["model"]),
        "backend": {"name": backend, "device": device, "threads_per_worker": 1},
    }
    start = time.perf_counter()
    try:
        results = plural.run(cfg)
    except Exception as error:  # report every failure, keep checking the other algorithms
        frames = traceback.extract_tb(error.__traceback__)[-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
        return {"ok": False, "error": f"{type(error).__name__}: {error}"[:300], "where": where}
    accuracy = results.summary["test"]["accuracy"]["mean"]
    return {"ok": True, "accuracy": accuracy, "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backends", nargs="+", default=["sequential", "vectorized"])
    parser.add_argument("--algorithms", nargs="+", default=None, help="default: every one")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; use --device cpu")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.algorithms or ALGORITHMS.names():
        cpu = run_one(name, "sequential", "cpu") if args.device != "cpu" else None
        for backend in args.backends:
            row = {"algorithm": name, "backend": backend, **run_one(name, backend, args.device)}
            if cpu is not None and cpu["ok"] and row["ok"]:
                row["cpu_accuracy"] = cpu["accuracy"]
            rows.append(row)
            status = (
                f"{row['accuracy']:.4f}" if row["ok"] else f"FAIL {row['error']} @ {row['where']}"
            )
            print(f"{name:14s} {backend:11s} {status}", flush=True)
        (args.out / "gpu_smoke.json").write_text(json.dumps(rows, indent=1))
    failed = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - failed} ran, {failed} failed on {args.device}")


if __name__ == "__main__":
    main()
