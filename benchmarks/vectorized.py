"""Vectorized against one-by-one local training, for many small clients.

Two measurements, each alternating the two ways of running the same work:

* ``engine``: ``plural.run`` of FedAvg with every client taking part, the sequential backend
  against the vectorized backend (``vectorize: always``), for a small MLP and for LeNet (a
  CNN, where batching on a CPU is expected not to pay, which is why ``auto`` declines it).
  The figure is the median time of a training round (rounds 2..R-1; the last round, which
  evaluates every client, is left out).
* ``head``: head-only training of LeNet (the body frozen, as FedRep's head phase or a
  fine-tuned classifier), 100 clients: ``LocalTrainer.fit`` client after client against one
  :func:`plural.engine.vectorized.batched_fit` of all of them.

Both check that the two ways give the same models (up to float rounding), so the timings
are of the same work.

Usage::

    .venv/bin/python benchmarks/vectorized.py                 # MNIST subset, 100 clients
    .venv/bin/python benchmarks/vectorized.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import plural
from plural.core.params import max_abs_difference
from plural.core.rng import torch_generator
from plural.core.trainer import FitRequest, FitResult, LocalTrainer
from plural.engine import build_federation, build_model
from plural.engine.vectorized import batched_fit
from plural.experiment import load_config

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "vectorized.json"
TARGET = 4.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=12000, help="MNIST subset size")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64, help="MLP hidden width")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("engine", "head"), default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 warms up, the last evaluates)")
    return args


def experiment(args: argparse.Namespace, model: dict[str, Any], backend: str) -> dict[str, Any]:
    return {
        "name": f"vectorized-{model['name']}-{backend}",
        "seed": 0,
        "rounds": args.rounds,
        "dataset": {"name": "mnist", "max_samples": args.max_samples},
        "partition": {"name": "iid", "num_clients": args.clients},
        "model": model,
        "algorithm": {"name": "fedavg"},
        "train": {"lr": 0.05, "batch_size": args.batch_size, "local_epochs": 1},
        "eval": {"every": args.rounds, "splits": ["test"]},
        "backend": {
            "name": backend,
            "vectorize": "always",
            "threads_per_worker": args.threads,
            "device": args.device,
        },
    }


class RoundClock:
    """Times each round (a plural callback)."""

    def __init__(self) -> None:
        self.ends = [time.perf_counter()]

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        self.ends.append(time.perf_counter())
        return False


def timed_run(config: dict[str, Any]) -> tuple[float, plural.Results]:
    """The median training-round seconds (rounds 2..R-1) of one run, and its results."""
    clock = RoundClock()
    results = plural.run(config, callbacks=[clock])
    rounds = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    return statistics.median(rounds[1:-1]), results


def measure_engine(args: argparse.Namespace, model: dict[str, Any]) -> dict[str, Any]:
    times: dict[str, list[float]] = {"sequential": [], "vectorized": []}
    params: dict[str, Any] = {}
    accuracy: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = ["sequential", "vectorized"]
        for backend in order if repeat % 2 == 0 else order[::-1]:
            seconds, results = timed_run(experiment(args, model, backend))
            times[backend].append(seconds)
            params[backend] = results.server.params
            accuracy[backend] = results.summary["test"]["accuracy"]["mean"]
            print(f"  {model['name']} {backend}: {seconds:.3f} s/round", flush=True)
    seq, vec = statistics.median(times["sequential"]), statistics.median(times["vectorized"])
    return {
        "model": model,
        "sequential_round_s": seq,
        "vectorized_round_s": vec,
        "speedup": seq / vec,
        "runs": times,
        "max_abs_param_diff": max_abs_difference(params["sequential"], params["vectorized"]),
        "test_accuracy": accuracy,
    }


def head_requests(args: argparse.Namespace) -> list[FitRequest]:
    """Head-only fits of LeNet for every client of the MNIST federation."""
    cfg = load_config(experiment(args, {"name": "lenet"}, "sequential"))
    federation = build_federation(cfg)
    model = build_model(cfg, federation).to(args.device)
    trainer = LocalTrainer(model, cfg.train)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    head = tuple(names[-2:])
    requests = []
    for c in range(federation.num_clients):
        train = federation.client(c).train
        requests.append(
            FitRequest(
                trainer,
                start,
                train.x.to(args.device),
                train.y.to(args.device),
                torch_generator(0, 1, c, "head"),
                (),
                head,
                None,
                None,
                cfg.train.lr,
            )
        )
    return requests


def fit_alone(request: FitRequest) -> FitResult:
    return request.trainer.fit(
        request.params,
        request.x,
        request.y,
        rng=request.rng,
        trainable=set(request.live).__contains__,
    )


def measure_head(args: argparse.Namespace) -> dict[str, Any]:
    times: dict[str, list[float]] = {"sequential": [], "vectorized": []}
    results: dict[str, list[FitResult]] = {}
    for repeat in range(args.repeats + 1):  # the first repeat warms up
        order = ["sequential", "vectorized"]
        for way in order if repeat % 2 == 0 else order[::-1]:
            requests = head_requests(args)
            started = time.perf_counter()
            if way == "sequential":
                results[way] = [fit_alone(r) for r in requests]
            else:
                results[way] = batched_fit(requests)
            seconds = time.perf_counter() - started
            if repeat:
                times[way].append(seconds)
                print(f"  head-only {way}: {seconds:.3f} s", flush=True)
    seq, vec = statistics.median(times["sequential"]), statistics.median(times["vectorized"])
    diff = max(
        max_abs_difference(a.params, b.params)
        for a, b in zip(results["sequential"], results["vectorized"], strict=True)
    )
    return {
        "sequential_s": seq,
        "vectorized_s": vec,
        "speedup": seq / vec,
        "runs": times,
        "max_abs_param_diff": diff,
    }


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": args.device,
    }
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {
        "benchmark": "vectorized",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(args),
        "target_speedup": TARGET,
    }
    if args.only in (None, "engine"):
        print("engine, FedAvg, every client every round:", flush=True)
        payload["engine_mlp"] = measure_engine(args, {"name": "mlp", "hidden": [args.hidden]})
        payload["engine_lenet"] = measure_engine(args, {"name": "lenet"})
    if args.only in (None, "head"):
        print("head-only LeNet training:", flush=True)
        payload["head_only_lenet"] = measure_head(args)
    for key in ("engine_mlp", "engine_lenet", "head_only_lenet"):
        if key in payload:
            figures = payload[key]
            print(
                f"{key}: speedup {figures['speedup']:.2f}x (target >= {TARGET}), "
                f"max |param diff| {figures['max_abs_param_diff']:.2g}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
