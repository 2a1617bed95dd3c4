"""plural.flower against plain Flower and plural's own backends: time per round.

The job of ``flower_compare.py`` (LeNet, Fashion-MNIST subset, 10 clients, Dirichlet(0.5),
FedAvg, every client every round, 1 local epoch, 3 rounds, then every client's test split
scored) run five ways, one after another:

* **plain Flower**: ``flower_compare.run_flower`` (``NumPyClient``, legacy ``FedAvg``
  strategy, ``run_simulation``, ``--cpus`` Ray actors of 1 CPU);
* **plural.flower**: ``plural.flower.simulate`` (the same engine round loop as ``plural run``,
  client work in Flower's simulation on ``--cpus`` virtual SuperNodes of 1 CPU, Message API);
* **plural.flower SecAgg+**: the same with ``secagg`` (Flower's SecAggPlusWorkflow masks
  the nodes' updates every round);
* **plural sequential** (1 thread) and **plural process** (``--cpus`` workers).

Per round: plain Flower's from its strategy's hooks, the others' from a plural round-end
callback (round 1 is the loop's time less the later rounds). ``steady`` is the median of
rounds 2..N-1; ``total`` includes Ray's start-up and shut-down for both Flower rows. The
per-client test accuracy of plural.flower must equal plural sequential's (checked, 1e-6).

Usage (under the shared lock)::

    flock /tmp/plural-bench.lock python benchmarks/flower_plural.py            # full job
    flock /tmp/plural-bench.lock python benchmarks/flower_plural.py --quick    # 2000 images
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flower_compare as fc
import torch
from common import RoundClock, machine_info

from plural.flower import FlowerOptions, simulate

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "flower_plural.json"


def run_plural_flower(config: dict[str, Any], cpus: int, secagg: bool = False) -> fc.RunTiming:
    """``plural.flower.simulate`` timed end to end, rounds from a round-end callback."""
    clock = RoundClock()
    started = time.perf_counter()
    options = FlowerOptions(callbacks=(clock,), secagg=secagg)
    results = simulate(config, None, nodes=cpus, options=options)
    total_s = time.perf_counter() - started
    later = [b - a for a, b in itertools.pairwise(clock.ends)]
    first = float(results.summary["wall_time_s"]) - sum(later)
    final = results.final("test").sort_values("client")
    test = list(zip(final["loss"].astype(float), final["accuracy"].astype(float), strict=True))
    params = {k: v.detach().clone() for k, v in results.server.params.items()}
    return fc.RunTiming(total_s, clock.ends[0] - first - started, [first, *later], test, params)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds
    runs = {
        "plain Flower": lambda: fc.run_flower(fc.make_config(args, rounds), args.cpus),
        "plural.flower": lambda: run_plural_flower(fc.make_config(args, rounds), args.cpus),
        "plural.flower SecAgg+": lambda: run_plural_flower(
            fc.make_config(args, rounds), args.cpus, secagg=True
        ),
        "plural sequential": lambda: fc.run_plural(fc.make_config(args, rounds)),
        "plural process": lambda: fc.run_plural(fc.make_config(args, rounds, "process")),
    }
    timings = {name: job() for name, job in runs.items()}
    seq, flw = timings["plural sequential"], timings["plural.flower"]
    gap = max(abs(a[1] - b[1]) for a, b in zip(seq.test, flw.test, strict=True))
    if gap > 1e-6:
        raise AssertionError(f"plural.flower's test accuracies differ from sequential by {gap}")
    masked = timings["plural.flower SecAgg+"]
    secagg_gap = max(abs(a[1] - b[1]) for a, b in zip(seq.test, masked.test, strict=True))
    return {
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": {name: fc.phases(t) for name, t in timings.items()},
        "accuracy_gap_vs_sequential": gap,
        "secagg_accuracy_gap_vs_sequential": secagg_gap,
    }


def report(figures: dict[str, Any]) -> str:
    rows = [["", "total s", "setup s", "round 1 s", "steady round s", "last round s", "acc"]]
    for name, p in figures["runs"].items():
        rows.append(
            [
                name,
                fc.fmt(p["total_s"], 2),
                fc.fmt(p["setup_s"], 2),
                fc.fmt(p["round1_s"], 2),
                fc.fmt(p["steady_round_s"]),
                fc.fmt(p["last_round_s"], 2),
                fc.fmt(p["mean_test_accuracy"]),
            ]
        )
    return fc.table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    if quick:
        argv = [a for a in argv if a != "--quick"]
        argv += ["--max-samples", "2000"]
        if "--out" not in argv:
            argv += ["--out", str(RESULTS_PATH.with_name("flower_plural_quick.json"))]
    elif "--out" not in argv:
        argv += ["--out", str(RESULTS_PATH)]
    args = fc.parse_args(argv)
    fc.quiet_flower(hide_info=not args.flower_log)
    torch.set_num_threads(1)
    figures = measure(args)
    print(report(figures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
