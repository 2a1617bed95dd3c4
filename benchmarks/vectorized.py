"""Vectorized against one-by-one local training, for many small clients.

Three measurements, each alternating the two ways of running the same work:

* ``engine``: ``plural.run`` of FedAvg with every client taking part, the sequential backend
  against the vectorized backend (``vectorize: always``), for models from small to large:
  a 32-unit MLP on digits, logistic regression, a 64-unit MLP and FedAvg's 2NN on MNIST, and
  LeNet (a CNN). The figure is the median time of a training round (rounds 2..R-1; the last
  round, which evaluates every client, is left out), engine costs included.
* ``rounds``: whole engine rounds, training and evaluation: the same runs with every client
  evaluated (on its test split) after every round, for the small models (the MLP on digits,
  logistic regression on MNIST); the median of rounds 2..R, so batched evaluation counts.
* ``dpsgd``: the ``engine`` measurement under ``privacy: {level: sample}`` (DP-SGD: Poisson
  samples, per-example gradients clipped and noised) for the small models; the vectorized
  backend batches DP-SGD across clients (a vmap over clients of per-example gradients).
  Written to ``results/vectorized_dpsgd.json``.
* ``fit``: the local training alone, 100 clients: ``LocalTrainer.fit`` client after client
  against one :func:`plural.engine.vectorized.batched_fit` of all of them, for the small
  MLP on digits and logistic regression on MNIST (every parameter trains) and for head-only
  training of LeNet (the body frozen, as FedRep's head phase or a fine-tuned classifier).

Both check that the two ways give the same models (up to float rounding), so the timings
are of the same work.

Usage::

    .venv/bin/python benchmarks/vectorized.py                 # MNIST subset, 100 clients
    .venv/bin/python benchmarks/vectorized.py --device cuda   # on a GPU
    .venv/bin/python benchmarks/vectorized.py --only rounds   # whole rounds, small models
    .venv/bin/python benchmarks/vectorized.py --only dpsgd    # DP-SGD rounds, small models
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from common import RoundClock, machine_info

import plural
from plural.core.params import max_abs_difference
from plural.core.rng import torch_generator
from plural.core.trainer import FitRequest, FitResult, LocalTrainer
from plural.engine.vectorized import batched_fit
from plural.experiment import load_config
from plural.runner import build_federation, build_model

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "vectorized.json"
DPSGD_PATH = RESULTS_PATH.with_name("vectorized_dpsgd.json")
DPSGD = {"level": "sample", "clip": 1.0, "noise_multiplier": 1.0}
"""The ``dpsgd`` measurement's privacy section (DP-SGD on every client)."""
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
    parser.add_argument("--only", choices=("engine", "rounds", "fit", "dpsgd"), default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = DPSGD_PATH if args.only == "dpsgd" else RESULTS_PATH
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 warms up, the last evaluates)")
    return args


WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits_mlp32": ("digits", {"name": "mlp", "hidden": [32]}),
    "mnist_logreg": ("mnist", {"name": "logreg"}),
    "mnist_mlp64": ("mnist", {"name": "mlp", "hidden": [64]}),
    "mnist_2nn": ("mnist", {"name": "mlp", "hidden": [200, 200]}),
    "mnist_lenet": ("mnist", {"name": "lenet"}),
}
ROUND_WORKLOADS = ("digits_mlp32", "mnist_logreg")
"""Whole-round workloads (training and evaluation every round): the small models."""
FIT_WORKLOADS = {"digits_mlp32": False, "mnist_logreg": False, "mnist_lenet": True}
"""Fit-level workloads: name -> head-only training."""


def experiment(
    args: argparse.Namespace,
    model: dict[str, Any],
    backend: str,
    dataset: str = "mnist",
    eval_every: int | None = None,
    private: bool = False,
) -> dict[str, Any]:
    data: dict[str, Any] = {"name": dataset}
    if dataset == "mnist":
        data["max_samples"] = args.max_samples
    privacy = {"privacy": dict(DPSGD)} if private else {}
    return {
        **privacy,
        "name": f"vectorized-{model['name']}-{backend}",
        "seed": 0,
        "rounds": args.rounds,
        "dataset": data,
        "partition": {"name": "iid", "num_clients": args.clients},
        "model": model,
        "algorithm": {"name": "fedavg", **({"weighting": "uniform"} if private else {})},
        "train": {"lr": 0.05, "batch_size": args.batch_size, "local_epochs": 1},
        "eval": {"every": eval_every or args.rounds, "splits": ["test"]},
        "backend": {
            "name": backend,
            "vectorize": "always",
            "threads_per_worker": args.threads,
            "device": args.device,
        },
    }


def timed_run(config: dict[str, Any], whole: bool = False) -> tuple[float, plural.Results]:
    """The median round seconds of one run (training rounds 2..R-1, or with ``whole`` every
    round 2..R, each evaluated), and its results."""
    clock = RoundClock()
    started = time.perf_counter()
    results = plural.run(config, callbacks=[clock])
    ends = [started, *clock.ends]
    rounds = [b - a for a, b in itertools.pairwise(ends)]
    return statistics.median(rounds[1:] if whole else rounds[1:-1]), results


def measure_engine(
    args: argparse.Namespace, workload: str, whole: bool = False, private: bool = False
) -> dict[str, Any]:
    """Sequential against vectorized engine rounds (``whole``: each round evaluated too;
    ``private``: DP-SGD on every client)."""
    dataset, model = WORKLOADS[workload]
    eval_every = 1 if whole else None
    times: dict[str, list[float]] = {"sequential": [], "vectorized": []}
    params: dict[str, Any] = {}
    accuracy: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = ["sequential", "vectorized"]
        for backend in order if repeat % 2 == 0 else order[::-1]:
            config = experiment(args, model, backend, dataset, eval_every, private)
            seconds, results = timed_run(config, whole)
            times[backend].append(seconds)
            params[backend] = results.server.params
            accuracy[backend] = results.summary["test"]["accuracy"]["mean"]
            print(f"  {workload} {backend}: {seconds:.3f} s/round", flush=True)
    seq, vec = statistics.median(times["sequential"]), statistics.median(times["vectorized"])
    return {
        "dataset": dataset,
        "model": model,
        "sequential_round_s": seq,
        "vectorized_round_s": vec,
        "speedup": seq / vec,
        "runs": times,
        "max_abs_param_diff": max_abs_difference(params["sequential"], params["vectorized"]),
        "test_accuracy": accuracy,
    }


def fit_requests(args: argparse.Namespace, workload: str) -> list[FitRequest]:
    """One fit per client of the workload's federation (of the last layer only for head-only
    workloads), all from the same initial model."""
    dataset, model_spec = WORKLOADS[workload]
    cfg = load_config(experiment(args, model_spec, "sequential", dataset))
    federation = build_federation(cfg)
    model = build_model(cfg, federation).to(args.device)
    trainer = LocalTrainer(model, cfg.train)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = tuple(n for n, _ in model.named_parameters())
    live = names[-2:] if FIT_WORKLOADS[workload] else names
    requests = []
    for c in range(federation.num_clients):
        train = federation.client(c).train
        requests.append(
            FitRequest(
                trainer,
                start,
                train.x.to(args.device),
                train.y.to(args.device),
                torch_generator(0, 1, c, "fit"),
                (),
                live,
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


def measure_fit(args: argparse.Namespace, workload: str) -> dict[str, Any]:
    times: dict[str, list[float]] = {"sequential": [], "vectorized": []}
    results: dict[str, list[FitResult]] = {}
    for repeat in range(args.repeats + 1):  # the first repeat warms up
        order = ["sequential", "vectorized"]
        for way in order if repeat % 2 == 0 else order[::-1]:
            requests = fit_requests(args, workload)
            started = time.perf_counter()
            if way == "sequential":
                results[way] = [fit_alone(r) for r in requests]
            else:
                results[way] = batched_fit(requests)
            seconds = time.perf_counter() - started
            if repeat:
                times[way].append(seconds)
                print(f"  fit {workload} {way}: {seconds:.3f} s", flush=True)
    seq, vec = statistics.median(times["sequential"]), statistics.median(times["vectorized"])
    diff = max(
        max_abs_difference(a.params, b.params)
        for a, b in zip(results["sequential"], results["vectorized"], strict=True)
    )
    return {
        "head_only": FIT_WORKLOADS[workload],
        "sequential_s": seq,
        "vectorized_s": vec,
        "speedup": seq / vec,
        "runs": times,
        "max_abs_param_diff": diff,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {
        "benchmark": "vectorized",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(
            torch_threads=args.threads,
            device=args.device,
            gpu=torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
        ),
        "target_speedup": TARGET,
    }
    if args.only in (None, "engine"):
        print("engine, FedAvg, every client every round:", flush=True)
        payload["engine"] = {name: measure_engine(args, name) for name in WORKLOADS}
    if args.only in (None, "rounds"):
        print("whole rounds (training and evaluation), every client every round:", flush=True)
        payload["rounds"] = {name: measure_engine(args, name, True) for name in ROUND_WORKLOADS}
    if args.only in (None, "dpsgd"):
        print("engine rounds under DP-SGD (privacy level sample):", flush=True)
        payload["dpsgd"] = {
            name: measure_engine(args, name, private=True) for name in ROUND_WORKLOADS
        }
    if args.only in (None, "fit"):
        print("local training alone:", flush=True)
        payload["fit"] = {name: measure_fit(args, name) for name in FIT_WORKLOADS}
    for part in ("engine", "rounds", "dpsgd", "fit"):
        for name, figures in payload.get(part, {}).items():
            print(
                f"{part} {name}: speedup {figures['speedup']:.2f}x (target >= {TARGET}), "
                f"max |param diff| {figures['max_abs_param_diff']:.2g}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
