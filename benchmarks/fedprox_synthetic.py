"""FedProx's Synthetic(1,1) comparison (Li et al. 2020, Figure 1 setting), reproduced.

Runs examples/fedprox_synthetic.yaml for FedAvg (stragglers dropped), FedProx mu=0 and
FedProx mu=1 (stragglers' partial work kept), with 0% and 90% stragglers, and records the
global training loss (sample-weighted over all 30 devices) and mean test accuracy every 10
rounds in benchmarks/results/fedprox_synthetic.json.

    .venv/bin/python benchmarks/fedprox_synthetic.py [--rounds 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

import torch

import plural

HERE = Path(__file__).parent
CONFIG = HERE.parent / "examples" / "fedprox_synthetic.yaml"
METHODS: dict[str, str] = {
    "FedAvg": "{name: fedavg, stragglers: S, drop_stragglers: true}",
    "FedProx mu=0": "{name: fedprox, mu: 0.0, stragglers: S}",
    "FedProx mu=1": "{name: fedprox, mu: 1.0, stragglers: S}",
}


def one_run(method: str, stragglers: float, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    algorithm = METHODS[method].replace("S", str(stragglers))
    started = time.perf_counter()
    results = plural.run(CONFIG, overrides=[f"algorithm={algorithm}", f"rounds={rounds}"])
    curve = (
        results.metrics.query("split in ['train', 'test']")
        .assign(weighted=lambda f: f["loss"] * f["samples"])
        .groupby(["round", "split"])
        .agg(loss=("weighted", "sum"), samples=("samples", "sum"), accuracy=("accuracy", "mean"))
    )
    train = curve.xs("train", level="split")
    test = curve.xs("test", level="split")
    return {
        "method": method,
        "stragglers": stragglers,
        "rounds": list(train.index),
        "train_loss": list((train["loss"] / train["samples"]).round(5)),
        "test_accuracy": list(test["accuracy"].round(4)),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    grid = [(m, s) for s in (0.0, 0.9) for m in METHODS]
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(one_run, *zip(*grid, strict=True), [args.rounds] * len(grid)))
    out = HERE / "results" / "fedprox_synthetic.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"config": str(CONFIG.name), "runs": runs}, indent=1) + "\n")
    print(
        f"{'stragglers':>10} {'method':>14} {'train loss @50/100/200':>26} {'test acc':>9} {'s':>6}"
    )
    for r in runs:
        at = {rnd: loss for rnd, loss in zip(r["rounds"], r["train_loss"], strict=True)}
        losses = "/".join(f"{at.get(k, float('nan')):.3f}" for k in (50, 100, r["rounds"][-1]))
        print(
            f"{r['stragglers']:>10.0%} {r['method']:>14} {losses:>26} "
            f"{r['test_accuracy'][-1]:>9.3f} {r['seconds']:>6.0f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
