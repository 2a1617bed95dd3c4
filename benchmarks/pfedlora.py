"""pFedLoRA against the model-heterogeneous baselines, its cost to a target accuracy, and its
open questions (adapter rank, mu, iterative against synchronous training, the two adapter
constructions).

The federation is ``examples/fmnist_five_cnns_small.yaml``: pFedLoRA's recipe at a size this
CPU can run many times (20 Fashion-MNIST clients, 2 classes each with shares from
U(0.4, 0.6), the five-CNN family with every width divided down, client i on architecture
(i mod 5) + 1; SGD lr 0.05, momentum 0.9, batch 32, 2 local epochs per phase, full
participation, 15 rounds).

Experiments (all by default; ``--experiments`` picks some):

* ``methods``: Standalone (Local), LG-FedAvg, FedProto, FML, pFedLoRA (LoRA and parallel
  adapters): mean and worst per-client test accuracy, bytes and training FLOPs, and the cost
  to reach ``--target`` mean accuracy with its ratio to each method's.
* ``rank``, ``mu``: the LoRA adapter's rank and mixing weight.
* ``schedule``: iterative (the paper's) against synchronous training, both constructions.
* ``full_size``: bytes per client and round and training FLOPs per sample of every method on
  the paper's full-size five CNNs (exact, from one short round).

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
import yaml

import plural
from plural.report.efficiency import cost_ratios, cost_to_target

EXAMPLE = Path(__file__).parent.parent / "examples" / "fmnist_five_cnns_small.yaml"
BASE: dict[str, Any] = {**yaml.safe_load(EXAMPLE.read_text()), "backend": {"threads_per_worker": 1}}
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


def full_size_costs() -> dict[str, Any]:
    """Per-round cost of each method on the paper's full-size five CNNs (28x28 input): bytes
    per client and round, and training FLOPs per training sample, read from one round's fit
    rows (both are fixed by the architectures, not by the data, so one short round on a
    small slice measures them exactly)."""
    out: dict[str, Any] = {}
    for label, algorithm in METHODS.items():
        cfg = copy.deepcopy(BASE)
        cfg.update(rounds=1, algorithm=algorithm, model={"name": "cnn_family"})
        cfg["dataset"] = {**cfg["dataset"], "max_samples": 1000}
        fit = plural.run(cfg, progress=False).metrics.query("split == 'fit'")
        out[label] = {
            "bytes_per_client_round": float((fit["bytes_up"] + fit["bytes_down"]).mean()),
            "train_mflops_per_sample": float((fit["flops"] / fit["samples"]).mean() / 1e6),
        }
        print(label, out[label], flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiments", nargs="+", default=["methods", "rank", "mu", "schedule", "full_size"]
    )
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
    if "full_size" in args.experiments:
        print("== full_size", flush=True)
        results["full_size"] = full_size_costs()
    for name in [e for e in args.experiments if e != "full_size"]:
        print(f"== {name}", flush=True)
        variants, target = experiments[name]
        results[name] = compare(variants, args.seeds, target)
        save(results, args.out)
    save(results, args.out)


def save(results: dict[str, Any], path: str) -> None:
    """Write the figures so far; an existing file keeps the experiments not re-run."""
    target = Path(path)
    merged = json.loads(target.read_text()) if target.is_file() else {}
    target.write_text(json.dumps({**merged, **results}, indent=1, default=str))


if __name__ == "__main__":
    main()
