"""pFedLoRA against the model-heterogeneous baselines, its cost to a target accuracy, and its
open questions (adapter rank, mu, iterative against synchronous training, the two adapter
constructions).

The federation follows pFedLoRA's recipe at a size this CPU can run many times: 20
Fashion-MNIST clients (3000 images), 2 classes each with shares from U(0.4, 0.6), five CNN
architectures of the paper's family shape with every width divided down (conv2 / fc1 =
(8, 64), (4, 64), (8, 48), (8, 40), (8, 32); conv1 4; representation 32), client i on
architecture (i mod 5) + 1. SGD lr 0.05, momentum 0.9, batch 32, 2 local epochs per phase,
full participation, 15 rounds, test accuracy every 5 rounds.

Experiments (all by default; ``--experiments`` picks some):

* ``methods``: Standalone (Local), LG-FedAvg, FedProto, FML, pFedLoRA (LoRA and parallel
  adapters): mean and worst per-client test accuracy, bytes and training FLOPs, and the cost
  to reach ``--target`` mean accuracy with its ratio to each method's.
* ``rank``, ``mu``: the LoRA adapter's rank and mixing weight.
* ``schedule``: iterative (the paper's) against synchronous training, both constructions.

Run from the repository root (about 10 minutes on a 2-core machine)::

    .venv/bin/python benchmarks/pfedlora.py [--experiments methods rank] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import plural
from plural.report.efficiency import cost_ratios, cost_to_target

BASE: dict[str, Any] = {
    "name": "pfedlora-bench",
    "seed": 0,
    "rounds": 15,
    "dataset": {"name": "fashion_mnist", "max_samples": 3000},
    "partition": {
        "name": "classes_per_client",
        "num_clients": 20,
        "classes": 2,
        "share_low": 0.4,
        "share_high": 0.6,
    },
    "model": {
        "name": "cnn_family",
        "architectures": [[8, 64], [4, 64], [8, 48], [8, 40], [8, 32]],
        "representation": 32,
        "conv1": 4,
    },
    "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "local_epochs": 2},
    "sampling": {"fraction": 1.0},
    "eval": {"splits": ["test"], "every": 5},
    "backend": {"threads_per_worker": 1},
}
METHODS: dict[str, dict[str, Any]] = {
    "Standalone": {"name": "local"},
    "LG-FedAvg": {"name": "lg_fedavg"},
    "FedProto": {"name": "fedproto"},
    "FML": {"name": "fml"},
    "pFedLoRA (LoRA)": {"name": "pfedlora"},
    "pFedLoRA (parallel)": {"name": "pfedlora", "adapter": "parallel"},
}


def run_one(algorithm: dict[str, Any], seed: int) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    cfg["algorithm"], cfg["seed"] = algorithm, seed
    started = time.perf_counter()
    results = plural.run(cfg, progress=False)
    final = results.final()
    fit = results.metrics[results.metrics["split"] == "fit"]
    return {
        "accuracy": float(final["accuracy"].mean()),
        "worst": float(final["accuracy"].min()),
        "bytes": float(fit["bytes_up"].sum() + fit["bytes_down"].sum()),
        "flops": float(fit["flops"].sum()),
        "wall_s": time.perf_counter() - started,
        "metrics": results.metrics,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    accuracies = [r["accuracy"] for r in runs]
    return {
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_std": statistics.pstdev(accuracies),
        "accuracy_per_seed": accuracies,
        "worst_mean": statistics.fmean(r["worst"] for r in runs),
        "bytes_mb": statistics.fmean(r["bytes"] for r in runs) / 1e6,
        "train_gflops": statistics.fmean(r["flops"] for r in runs) / 1e9,
        "wall_s": statistics.fmean(r["wall_s"] for r in runs),
    }


def compare(variants: dict[str, dict[str, Any]], seeds: list[int], target: float | None) -> dict:
    out: dict[str, Any] = {}
    costs: dict[str, list[Any]] = {}
    for label, algorithm in variants.items():
        runs = [run_one(algorithm, seed) for seed in seeds]
        out[label] = summarise(runs)
        if target is not None:
            costs[label] = [cost_to_target(r["metrics"], target) for r in runs]
        print(
            f"{label:24s} {out[label]['accuracy_mean']:.3f} +- {out[label]['accuracy_std']:.3f}"
            f"  {out[label]['bytes_mb']:.2f} MB  {out[label]['train_gflops']:.1f} GFLOPs",
            flush=True,
        )
    if target is not None:
        out["cost_to_target"] = cost_table(costs, seeds, target)
    return out


def cost_table(costs: dict[str, list[Any]], seeds: list[int], target: float) -> dict[str, Any]:
    """Per seed: each method's cost to ``target`` and its ratios to pFedLoRA (LoRA)'s."""
    table: dict[str, Any] = {"target": target, "per_seed": []}
    for i, seed in enumerate(seeds):
        frame = cost_ratios({k: v[i] for k, v in costs.items()}, reference="pFedLoRA (LoRA)")
        table["per_seed"].append({"seed": seed, "rows": frame.to_dict(orient="records")})
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["methods", "rank", "mu", "schedule"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--out", default="benchmarks/results/pfedlora.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "config": BASE,
        "seeds": args.seeds,
    }
    lora = {"name": "pfedlora"}
    experiments = {
        "methods": (METHODS, args.target),
        "rank": ({f"rank {r}": {**lora, "rank": r} for r in (2, 8, 32)}, None),
        "mu": ({f"mu {m}": {**lora, "mu": m} for m in (0.2, 0.5, 0.8)}, None),
        "schedule": (
            {
                f"{adapter} {schedule}": {**lora, "adapter": adapter, "schedule": schedule}
                for adapter in ("lora", "parallel")
                for schedule in ("iterative", "synchronous")
            },
            None,
        ),
    }
    for name in args.experiments:
        print(f"== {name}", flush=True)
        variants, target = experiments[name]
        results[name] = compare(variants, args.seeds, target)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
