"""Engine overhead: plural's round loop against a bare PyTorch loop doing the same SGD steps.

Workload: FedAvg, full participation, one local epoch of minibatch SGD (batch 32, lr 0.05)
per client and round, LeNet-size CNN, evaluation on every client's test split at the last
round only. The bare loop builds the same federation and initial model with plural's own
builders, draws each client's batch order from the generator the engine derives
(``torch_generator(seed, round, client, "client_update")``), averages the client models
weighted by training samples (float64 sums, as the engine does) and evaluates the same way.
The final parameters of both are compared: they must agree, which shows the two timings
are of the same work.

Measured (medians over ``--repeats``, engine and bare runs interleaved):

* ``sequential``: ``plural.run`` with the sequential backend vs the bare loop, total and
  per phase (setup, steady training rounds, the last round with evaluation);
* the other backends (``--backends``, default ``process,vectorized,ray``): ``plural.run``
  with each, including its worker start-up, estimated as round 1 minus a steady round.
  ``process`` and ``ray`` run ``--workers`` workers of one torch thread each; ``vectorized``
  runs with ``vectorize: auto``, which on a CPU trains LeNet's clients one by one (batching
  a CNN does not pay there), so its row is the cost of its machinery when it does not batch.

Usage::

    .venv/bin/python benchmarks/engine_overhead.py               # MNIST (12000 samples)
    .venv/bin/python benchmarks/engine_overhead.py --dataset digits
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RoundClock, machine_info
from torch import nn

import plural
from plural.core.rng import torch_generator
from plural.data.federated import FederatedDataset
from plural.experiment import ExperimentConfig, load_config
from plural.runner import build_federation, build_model

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "engine_overhead.json"
TARGET_RATIO = 1.05
MATCH_TOLERANCE = 1e-5  # engine and bare final parameters must agree to this
Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- configuration


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--max-samples", type=int, default=12000, help="MNIST subset size")
    parser.add_argument("--partition", choices=("iid", "dirichlet"), default="iid")
    parser.add_argument("--alpha", type=float, default=0.5, help="dirichlet concentration")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both loops)")
    parser.add_argument("--workers", type=int, default=2, help="process / ray workers")
    parser.add_argument(
        "--backends", default="process,vectorized,ray", help="backends measured besides sequential"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.clients < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--rounds, --clients, --repeats and --threads must be >= 1")
    return args


def make_config(
    args: argparse.Namespace, rounds: int, backend: str = "sequential"
) -> dict[str, Any]:
    """The experiment as a plain config dict (what ``plural.run`` takes)."""
    dataset: dict[str, Any] = {"name": args.dataset}
    if args.dataset == "mnist":
        dataset["max_samples"] = args.max_samples
    partition: dict[str, Any] = {"name": args.partition, "num_clients": args.clients}
    if args.partition == "dirichlet":
        partition["alpha"] = args.alpha
    threads = args.threads if backend in ("sequential", "vectorized") else 1
    return {
        "name": f"engine-overhead-{backend}",
        "seed": args.seed,
        "rounds": rounds,
        "dataset": dataset,
        "partition": partition,
        "model": {"name": "lenet"},
        "algorithm": {"name": "fedavg"},
        "train": {"lr": 0.05, "batch_size": 32, "local_epochs": 1},
        "eval": {"every": rounds, "splits": ["test"]},
        "backend": {
            "name": backend,
            "workers": args.workers if backend in ("process", "ray") else None,
            "threads_per_worker": threads,
        },
    }


# --------------------------------------------------------------------------- the bare loop


@dataclasses.dataclass
class RunTiming:
    """One timed run. ``round_s`` has one entry per round; the last one includes evaluation."""

    total_s: float
    setup_s: float
    round_s: list[float]
    params: Params
    test: list[tuple[float, float]]  # per client: (loss, accuracy) on its test split


def local_sgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ExperimentConfig, rng: torch.Generator
) -> float:
    """One epoch of minibatch SGD over ``(x, y)`` in the order drawn from ``rng``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    batch = cfg.train.batch_size
    total = torch.zeros(())
    model.train()
    order = torch.randperm(len(y), generator=rng)
    for start in range(0, len(y), batch):
        idx = order[start : start + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return float(total)


def bare_round(
    model: nn.Module,
    federation: FederatedDataset,
    params: Params,
    cfg: ExperimentConfig,
    round_index: int,
) -> Params:
    """Every client trains from ``params``; returns the sample-weighted mean model."""
    sums: dict[str, torch.Tensor] = {}
    total_weight = 0.0
    for client in federation.clients:
        model.load_state_dict(params)
        rng = torch_generator(cfg.seed, round_index, client.client_id, "client_update")
        local_sgd(model, client.train.x, client.train.y, cfg, rng)
        weight = float(len(client.train))
        for name, tensor in model.state_dict().items():
            contribution = tensor.detach().to(torch.float64) * weight
            if name in sums:
                sums[name] += contribution
            else:
                sums[name] = contribution
        total_weight += weight
    return {name: (s / total_weight).to(params[name].dtype) for name, s in sums.items()}


@torch.no_grad()
def bare_evaluate(
    model: nn.Module, federation: FederatedDataset, params: Params, batch: int
) -> list[tuple[float, float]]:
    """(mean loss, accuracy) of ``params`` on each client's test split."""
    model.load_state_dict(params)
    model.eval()
    out = []
    for client in federation.clients:
        x, y = client.test.x, client.test.y
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), batch):
            logits = model(x[start : start + batch])
            target = y[start : start + batch]
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
        out.append((loss_sum / len(y), correct / len(y)))
    return out


def run_bare(config: dict[str, Any]) -> RunTiming:
    """The bare loop, timed the way ``run_engine`` times plural (setup included)."""
    started = time.perf_counter()
    cfg = load_config(config)
    federation = build_federation(cfg)
    model = build_model(cfg, federation)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    setup_s = time.perf_counter() - started
    round_s = []
    test: list[tuple[float, float]] = []
    for round_index in range(1, cfg.rounds + 1):
        round_started = time.perf_counter()
        params = bare_round(model, federation, params, cfg, round_index)
        if round_index == cfg.rounds:
            test = bare_evaluate(model, federation, params, cfg.eval.batch_size)
        round_s.append(time.perf_counter() - round_started)
    return RunTiming(time.perf_counter() - started, setup_s, round_s, params, test)


# --------------------------------------------------------------------------- the engine


def run_engine(config: dict[str, Any]) -> RunTiming:
    """``plural.run`` timed end to end; rounds from the callback and the summary's loop time.

    Round 1 is the summary's ``wall_time_s`` minus the later rounds (the engine measures
    each round from its start to the write of its metrics; the callback follows).
    """
    clock = RoundClock()
    started = time.perf_counter()
    results = plural.run(config, out=None, progress=False, callbacks=[clock])
    total_s = time.perf_counter() - started
    later = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    first = float(results.summary["wall_time_s"]) - sum(later)
    setup_s = clock.ends[0] - first - started
    final = results.final("test").sort_values("client")
    test = list(zip(final["loss"].astype(float), final["accuracy"].astype(float), strict=True))
    return RunTiming(total_s, setup_s, [first, *later], dict(results.server.params), test)


# --------------------------------------------------------------------------- measuring


def timed(run: Callable[[dict[str, Any]], RunTiming], config: dict[str, Any]) -> RunTiming:
    gc.collect()
    return run(config)


def max_abs_diff(a: Params, b: Params) -> float:
    if a.keys() != b.keys():
        raise ValueError(f"parameter names differ: {sorted(set(a) ^ set(b))}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def metric_diff(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Largest difference in per-client test loss or accuracy."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} evaluated clients")
    return max(abs(u - v) for pa, pb in zip(a, b, strict=True) for u, v in zip(pa, pb, strict=True))


def phases(timing: RunTiming) -> dict[str, float]:
    """Seconds of one run: total; setup (config, data, model: before round 1); round 1;
    steady (median of rounds 2..N-1, else of the training rounds); the last round (with
    evaluation); loop (all rounds); after the loop (shutting the backend, results)."""
    rounds = timing.round_s
    steady = rounds[1:-1] or rounds[:-1] or rounds
    return {
        "total_s": timing.total_s,
        "setup_s": timing.setup_s,
        "loop_s": sum(rounds),
        "round1_s": rounds[0],
        "steady_round_s": statistics.median(steady),
        "last_round_s": rounds[-1],
        "after_loop_s": timing.total_s - timing.setup_s - sum(rounds),
    }


def medians(runs: list[RunTiming]) -> dict[str, Any]:
    per_run = [phases(t) for t in runs]
    out: dict[str, Any] = {k: statistics.median(p[k] for p in per_run) for k in per_run[0]}
    out["runs"] = per_run
    return out


def measure_sequential(args: argparse.Namespace) -> dict[str, Any]:
    """Engine (sequential) and bare loop, interleaved, alternating which goes first."""
    config = make_config(args, args.rounds)
    timed(run_engine, make_config(args, 1))  # warm-up: imports, data cache, first calls
    timed(run_bare, make_config(args, 1))
    engine: list[RunTiming] = []
    bare: list[RunTiming] = []
    for i in range(args.repeats):
        order = [(engine, run_engine), (bare, run_bare)]
        for sink, run in order if i % 2 == 0 else order[::-1]:
            sink.append(timed(run, config))
            print(f"  repeat {i + 1}: {run.__name__} {sink[-1].total_s:.3f} s", flush=True)
    engine_m, bare_m = medians(engine), medians(bare)
    return {
        "engine": engine_m,
        "bare": bare_m,
        "ratio_total": engine_m["total_s"] / bare_m["total_s"],
        "ratio_total_paired": statistics.median(
            e.total_s / b.total_s for e, b in zip(engine, bare, strict=True)
        ),
        "ratio_loop": engine_m["loop_s"] / bare_m["loop_s"],
        "ratio_steady_round": engine_m["steady_round_s"] / bare_m["steady_round_s"],
        "ratio_last_round": engine_m["last_round_s"] / bare_m["last_round_s"],
        "max_abs_param_diff": max(
            max_abs_diff(e.params, b.params) for e, b in zip(engine, bare, strict=True)
        ),
        "max_test_metric_diff": max(
            metric_diff(e.test, b.test) for e, b in zip(engine, bare, strict=True)
        ),
        "_params": engine[0].params,
    }


def measure_backend(
    args: argparse.Namespace, backend: str, reference: Params, bare_total: float
) -> dict[str, Any]:
    """Another backend on the same workload; start-up = round 1 - a steady round."""
    timed(run_engine, make_config(args, 1, backend))  # warm-up
    runs = []
    for i in range(args.repeats):
        runs.append(timed(run_engine, make_config(args, args.rounds, backend)))
        print(f"  repeat {i + 1}: {backend} {runs[-1].total_s:.3f} s", flush=True)
    out = medians(runs)
    # Needs a steady round (2..N-1) to subtract: None with fewer than 3 rounds.
    out["startup_est_s"] = (
        statistics.median(p["round1_s"] - p["steady_round_s"] for p in out["runs"])
        if args.rounds >= 3
        else None
    )
    parallel = backend in ("process", "ray")
    out["workers"] = args.workers if parallel else 1
    out["threads_per_worker"] = 1 if parallel else args.threads
    out["ratio_total_vs_bare"] = out["total_s"] / bare_total
    out["max_abs_param_diff_vs_sequential"] = max(max_abs_diff(r.params, reference) for r in runs)
    return out


# --------------------------------------------------------------------------- reporting


def row(name: str, figures: dict[str, Any]) -> list[str]:
    keys = ("total_s", "setup_s", "round1_s", "steady_round_s", "last_round_s", "loop_s")
    keys += ("after_loop_s",)
    return [name, *(f"{figures[k]:.3f}" for k in keys)]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in rows
    ]
    return "\n".join(lines)


def report(seq: dict[str, Any], others: dict[str, dict[str, Any]]) -> str:
    header = ["median seconds", "total", "setup", "round 1", "steady rnd", "last rnd", "loop"]
    header.append("after")
    ratios = ("ratio_total", "", "", "ratio_steady_round", "ratio_last_round", "ratio_loop", "")
    ratio_row = ["engine / bare", *(f"{seq[k]:.3f}" if k else "" for k in ratios)]
    rows = [
        header,
        row("bare loop", seq["bare"]),
        row("engine sequential", seq["engine"]),
        ratio_row,
        *(row(f"engine {name} x{fig['workers']}", fig) for name, fig in others.items()),
    ]
    verdict = "OK" if seq["ratio_total"] <= TARGET_RATIO else "ABOVE TARGET"
    return "\n".join(
        [
            table(rows),
            "",
            f"engine/bare total {seq['ratio_total']:.3f} (median of per-repeat ratios "
            f"{seq['ratio_total_paired']:.3f}; target <= {TARGET_RATIO}): {verdict}",
            f"max |engine - bare| parameters {seq['max_abs_param_diff']:.3g}, "
            f"per-client test loss/accuracy {seq['max_test_metric_diff']:.3g}",
            *(backend_line(name, fig) for name, fig in others.items()),
        ]
    )


def backend_line(name: str, figures: dict[str, Any]) -> str:
    startup = figures["startup_est_s"]
    startup_text = "n/a" if startup is None else f"{startup:.3f} s"
    return (
        f"{name}: total / bare {figures['ratio_total_vs_bare']:.3f}, start-up ~{startup_text} "
        f"(round 1 - steady round); max |{name} - sequential| parameters "
        f"{figures['max_abs_param_diff_vs_sequential']:.3g}"
    )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(torch_threads=args.threads)
    started = time.perf_counter()
    print(f"sequential (engine vs bare), {args.repeats} repeats:", flush=True)
    seq = measure_sequential(args)
    reference = seq.pop("_params")
    others = {}
    for backend in [b for b in args.backends.split(",") if b]:
        print(f"{backend} backend:", flush=True)
        others[backend] = measure_backend(args, backend, reference, seq["bare"]["total_s"])
    info["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {
        "benchmark": "engine_overhead",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "config": {
            "sequential": make_config(args, args.rounds),
            **{b: make_config(args, args.rounds, b) for b in others},
        },
        "machine": info,
        "sequential": seq,
        **others,
        "elapsed_s": time.perf_counter() - started,
    }
    print(report(seq, others))
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    worst = max(
        [seq["max_abs_param_diff"]]
        + [fig["max_abs_param_diff_vs_sequential"] for fig in others.values()]
    )
    if worst > MATCH_TOLERANCE:
        print(f"MISMATCH: parameters differ by {worst:.3g}; the timings are not like for like")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
