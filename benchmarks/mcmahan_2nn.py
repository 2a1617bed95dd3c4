"""McMahan et al. 2017, Table 1 (2NN, IID, B = 10, C = 0.1, E = 1): rounds of FedAvg to reach
97% accuracy on MNIST's official 10k test images, the server set, beside the paper's 87.

Runs examples/papers/mcmahan2017_mnist_2nn.yaml once per learning rate of a small grid (the
paper tuned the learning rate per setting and reports the best), each until the server
accuracy reaches the target or the round limit, and writes the curves and rounds-to-target to
benchmarks/results/mcmahan_2nn.json. One torch thread; run it under the shared lock:

    flock /tmp/plural-bench.lock .venv/bin/python benchmarks/mcmahan_2nn.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from common import machine_info

import plural
from plural.report.efficiency import cost_to_target

HERE = Path(__file__).parent
CONFIG = HERE.parent / "examples" / "papers" / "mcmahan2017_mnist_2nn.yaml"
PAPER_ROUNDS = 87
TARGET = 0.97
LR_GRID = (0.05, 0.1, 0.2)


class StopAtTarget:
    """Stop the run once the server accuracy reaches the target."""

    def __init__(self, target: float) -> None:
        self.target = target

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        server = summary.get("server")
        return bool(server) and server["accuracy"]["mean"] >= self.target


def one_lr(lr: float, rounds: int, overrides: list[str], seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    results = plural.run(
        CONFIG,
        overrides=[
            f"train.lr={lr}",
            f"rounds={rounds}",
            f"seed={seed}",
            "backend.threads_per_worker=1",
            *overrides,
        ],
        callbacks=[StopAtTarget(TARGET)],
    )
    server = results.metrics.query("split == 'server'")
    cost = cost_to_target(results.metrics, TARGET, split="server")
    return {
        "lr": lr,
        "seed": seed,
        "rounds_to_target": cost.round,
        "rounds_run": int(server["round"].max()),
        "best_accuracy": float(server["accuracy"].max()),
        "bytes_to_target": cost.bytes if cost.reached else None,
        "curve": server[["round", "accuracy"]].to_dict("list"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def plot(record: dict[str, Any], out: Path) -> None:
    """Server accuracy per round for each learning rate (seed 0), with the target and the
    paper's rounds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.0))
    for run in (r for r in record["runs"] if r.get("seed", 0) == 0):
        reached = run["rounds_to_target"]
        label = f"lr {run['lr']}: " + (f"{reached} rounds" if reached else "not reached")
        axes.plot(run["curve"]["round"], run["curve"]["accuracy"], label=label)
    axes.axhline(record["target"], color="black", linewidth=0.8, linestyle=":")
    axes.axvline(record["paper_rounds"], color="grey", linewidth=0.8, linestyle="--")
    axes.annotate(
        f"paper: {record['paper_rounds']} rounds",
        (record["paper_rounds"], 0.978),
        fontsize=8,
        ha="right",
        xytext=(-3, 0),
        textcoords="offset points",
    )
    axes.set_ylim(0.9, 0.985)
    axes.set_xlabel("round")
    axes.set_ylabel("server (official test) accuracy")
    axes.set_title("FedAvg, MNIST 2NN, IID, C = 0.1, E = 1, B = 10", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="round limit per learning rate")
    parser.add_argument("--lr", type=float, nargs="*", default=list(LR_GRID))
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0],
        help="run seeds (each also seeds the data: another IID partition and initial model)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 rounds on 6000 images: checks the pipeline"
    )
    parser.add_argument(
        "--plot", action="store_true", help="only redraw the figure from the recorded JSON"
    )
    parser.add_argument(
        "--extend", action="store_true", help="add these learning rates to the recorded grid"
    )
    args = parser.parse_args()
    name = "mcmahan_2nn_quick" if args.quick else "mcmahan_2nn"
    if args.plot:
        record = json.loads((HERE / "results" / f"{name}.json").read_text())
        plot(record, HERE / "results" / f"{name}.png")
        return
    torch.set_num_threads(1)
    overrides = ["dataset.max_samples=7000"] if args.quick else []
    rounds = 5 if args.quick else args.rounds
    out = HERE / "results" / f"{name}.json"
    runs = json.loads(out.read_text())["runs"] if args.extend and out.is_file() else []
    for lr, seed in ((lr, seed) for lr in args.lr for seed in args.seeds):
        runs.append(one_lr(lr, rounds, overrides, seed))
        print(
            f"lr {lr}, seed {seed}: rounds to {TARGET:.0%}: {runs[-1]['rounds_to_target']} "
            f"(best {runs[-1]['best_accuracy']:.4f} in {runs[-1]['rounds_run']} rounds, "
            f"{runs[-1]['seconds']} s)",
            flush=True,
        )
    seed0 = [r for r in runs if r.get("seed", 0) == 0]
    reached = [r for r in seed0 if r["rounds_to_target"] is not None]
    best = min(reached, key=lambda r: r["rounds_to_target"]) if reached else None
    record = {
        "target": TARGET,
        "paper_rounds": PAPER_ROUNDS,
        "quick": args.quick,
        "lr_grid": sorted({r["lr"] for r in runs}),
        "best": None if best is None else {k: best[k] for k in ("lr", "rounds_to_target")},
        "runs": runs,
        "machine": machine_info(),
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    plot(record, out.with_suffix(".png"))
    print(f"best: {record['best']} (paper: {PAPER_ROUNDS} rounds); written to {out}")


if __name__ == "__main__":
    main()
