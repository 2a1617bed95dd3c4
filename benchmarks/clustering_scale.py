"""Clustered methods from 20 to 1,000 clients: pFedLIA (central, decentral), IFCA, CFL, Oracle
and FedAvg at their defaults (IFCA told the number of groups), on MNIST federations.

Three experiments (all by default; ``--experiments`` picks some):

* ``synthetic``: the clustering step alone, on block-structured score matrices calibrated on
  a measured one (see ``tests/test_score_graph.py``): OPTICS alone, OPTICS then merging
  alike clusters (the central rule before the scores checked the row distances), pFedLIA's
  central step at its defaults and the score-graph spectral clustering (``clustering:
  spectral``), 20 to 1,000 clients, equal and very unequal groups, noise 1x, 1.5x and 2x
  the measured level; ARI per seed and clusters found.
* ``federations``: every method on rotation (4 groups), label swap (4), class pairs
  (``class_groups``, 5 groups of 2 classes) and mixed (2 rotations x 2 label permutations
  drawn independently: 4 groups of unequal sizes), unequal (label swap, 6 groups with
  shares 50/30/12/5/2/1%: 250 to 5 clients a group at 500 clients) and IID, at each
  ``--sizes`` client count: ARI, clusters (decentral: neighbourhood purity and recall), mean
  and worst-10% test accuracy and their gap to Oracle, lazy-phase bytes and seconds.
* ``lazy``: pFedLIA's lazy phase at ``--lazy-sizes`` clients: seconds with the lazy models
  evaluated together for all clients (vectorized backend), stacked client by client and one
  model at a time (sequential backend; up to ``--one-at-a-time-max`` clients; see
  :mod:`plural.core.batched_eval`), and ARI (central) or purity and recall
  (decentral) and bytes against ``--peers-scored`` (default: all, 20, 10 peers).

``--warmup`` sets pFedLIA's ``warmup_rounds`` in ``federations``. Every row is written to the
results file as it comes. ``--save-scores DIR`` keeps each pFedLIA run's last score matrix and
the true groups (``DIR/scores_<clients>_<federation>_<seed>_<method>.npz``, arrays ``scores``
and ``groups``), so a clustering rule can be re-run on them without the lazy phase.

Workload: MNIST, 60 training images a client (split 60/20/20 train/val/test of 100), MLP
784-32-10, SGD lr 0.1, batch 20, one local epoch, full participation, sequential backend,
torch threads 1; pFedLIA warm-up 5 rounds; ``--rounds`` rounds (CFL: ``--cfl-rounds``).

Run from the repository root, under the shared lock (figures in
``benchmarks/results/clustering_scale.json``)::

    flock /tmp/plural-bench.lock .venv/bin/python benchmarks/clustering_scale.py
    .venv/bin/python benchmarks/clustering_scale.py --quick   # seconds: 20/100 clients, 1 seed
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

import plural
import plural.core.batched_eval as batched_eval
from plural.algorithms.pfedlia import PFedLIAConfig, lia_records
from plural.core.influence import influence_features, merge_alike_clusters, optics_clusters
from plural.core.score_graph import graph_clusters
from plural.core.sparse_scores import SparseMatrix
from plural.experiment import parse_config
from plural.runner import build_algorithm, build_federation
from plural.safety.diskio import atomic_write

HERE = Path(__file__).parent
EXPERIMENTS = ("synthetic", "federations", "lazy")
SAMPLES_PER_CLIENT = 100
MERGE_SHARE = PFedLIAConfig().merge_share or 0.6  # pFedLIA's default (0.6)

FEDERATIONS: dict[str, dict[str, Any]] = {
    "rotation": {"transforms": [{"name": "rotation", "groups": 4}]},
    "label swap": {"transforms": [{"name": "label_swap", "groups": 4}]},
    "class pairs": {"partition": {"name": "class_groups", "groups": 5, "classes_per_group": 2}},
    "iid": {},  # no groups: a clustered method should keep one cluster
    # very unequal groups: 250, 150, 60, 25, 10 and 5 clients at 500 clients
    "unequal": {
        "transforms": [
            {"name": "label_swap", "groups": 6, "shares": [0.5, 0.3, 0.12, 0.05, 0.02, 0.01]}
        ]
    },
    # 2 rotations x 2 label permutations, drawn independently: 4 groups of unequal sizes
    "mixed": {
        "transforms": [{"name": "rotation", "groups": 2}, {"name": "label_swap", "groups": 2}]
    },
}
GROUPS = {"rotation": 4, "label swap": 4, "class pairs": 5, "mixed": 4, "iid": 1, "unequal": 6}
METHODS: dict[str, dict[str, Any]] = {
    "pFedLIA central": {"name": "pfedlia"},
    "pFedLIA spectral": {"name": "pfedlia", "clustering": "spectral"},
    "pFedLIA decentral": {"name": "pfedlia", "variant": "decentral"},
    "IFCA": {"name": "ifca"},
    "CFL": {"name": "cfl"},
    "Oracle": {"name": "oracle"},
    "FedAvg": {"name": "fedavg"},
}


def config(num_clients: int, federation: str, seed: int, rounds: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "clustering_scale",
        "seed": seed,
        "rounds": rounds,
        "dataset": {"name": "mnist", "max_samples": num_clients * SAMPLES_PER_CLIENT},
        "partition": {"name": "iid", "num_clients": num_clients},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"lr": 0.1, "batch_size": 20},
        "split": {"val": 0.2, "test": 0.2},
        "sampling": {"fraction": 1.0},
        "eval": {"every": rounds, "splits": ["test"]},
        "backend": {"threads_per_worker": 1},
    }
    changes = copy.deepcopy(FEDERATIONS[federation])
    if "partition" in changes:
        cfg["partition"] = {**changes.pop("partition"), "num_clients": num_clients}
    cfg.update(changes)
    return cfg


def method_run(
    num_clients: int,
    federation: str,
    method: str,
    seed: int,
    rounds: int,
    cfl_rounds: int,
    warmup: int | None = None,
    save_scores: Path | None = None,
) -> dict[str, Any]:
    algorithm = dict(METHODS[method])
    if algorithm["name"] == "ifca":
        algorithm["k"] = GROUPS[federation]
    if algorithm["name"] == "pfedlia" and warmup is not None:
        algorithm["warmup_rounds"] = warmup
    cfg = config(num_clients, federation, seed, cfl_rounds if method == "CFL" else rounds)
    cfg["algorithm"] = algorithm
    started = time.perf_counter()
    results = plural.run(cfg)
    row: dict[str, Any] = {
        "clients": num_clients,
        "federation": federation,
        "method": method,
        "seed": seed,
        "rounds": cfg["rounds"],
        "warmup": algorithm.get("warmup_rounds"),
        "mean": results.summary["test"]["accuracy"]["mean"],
        "worst10": results.summary["test"]["accuracy"]["worst10"],
        "seconds": time.perf_counter() - started,
    }
    clustering = results.summary.get("clustering", {})
    row["ari"] = clustering.get("ari")
    row["clusters"] = clustering.get("clusters")
    records = lia_records(results.server) if algorithm["name"] == "pfedlia" else []
    if records:
        cost = records[-1]["cost"]
        row["lazy_bytes"] = cost["bytes_up"] + cost["bytes_down"]
        row["lazy_seconds"] = cost["seconds"]
        if "neighbourhoods" in records[-1]:
            row.update({k: records[-1]["neighbourhoods"][k] for k in ("purity", "recall")})
        if save_scores is not None:
            scores = lia_records(results.server, dense=True)[-1]["scores"]
            groups = build_federation(plural.load_config(cfg)).groups
            np.savez_compressed(
                scores_path(save_scores, num_clients, federation, seed, method),
                scores=scores,
                groups=groups,
            )
    return row


def scores_path(folder: Path, clients: int, federation: str, seed: int, method: str) -> Path:
    """Where ``--save-scores`` keeps one run's score matrix."""
    name = f"scores_{clients}_{federation}_{seed}_{method}".replace(" ", "_")
    return folder / f"{name}.npz"


def planned_scores(args: argparse.Namespace) -> list[Path]:
    """The files ``--save-scores`` will write (pFedLIA runs of ``federations``)."""
    if args.save_scores is None or "federations" not in args.experiments:
        return []
    return [
        scores_path(args.save_scores, n, federation, seed, method)
        for n in args.sizes
        for federation in args.federations
        for seed in args.seeds
        for method in args.methods
        if METHODS[method]["name"] == "pfedlia"
    ]


def federations_experiment(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    for n in args.sizes:
        for federation in args.federations:
            for seed in args.seeds:
                for method in args.methods:
                    if method == "CFL" and n > args.cfl_max_clients:
                        continue
                    yield method_run(
                        n,
                        federation,
                        method,
                        seed,
                        args.rounds,
                        args.cfl_rounds,
                        args.warmup,
                        args.save_scores,
                    )


def lazy_experiment(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """Lazy-phase seconds of the three evaluations (one model at a time up to
    ``--one-at-a-time-max`` clients); ARI (central) or purity and recall (decentral) and bytes
    against peers_scored."""
    for n in args.lazy_sizes:
        for variant in args.variants:
            for peers in args.peers_scored:
                timed = variant == "central" and peers == 1.0
                evaluations = ["together", "stacked"] if timed else ["together"]
                if timed and n <= args.one_at_a_time_max:
                    evaluations.append("one at a time")
                for evaluation in evaluations:
                    yield lazy_row(n, variant, peers, evaluation, args.seeds[0])


LAZY_EVALUATIONS = {
    "together": "vectorized",  # every client's scoring at once (evaluate_offsets_together)
    "stacked": "sequential",  # client by client, each stacking the models it scores
    "one at a time": "sequential",  # client by client, model by model (stacking refused)
}


def lazy_row(n: int, variant: str, peers: float, evaluation: str, seed: int) -> dict[str, Any]:
    """One lazy phase (6 rounds: 5 warm-up, then the lazy phase) of ``n`` rotated clients,
    its lazy models evaluated as ``evaluation`` says (:data:`LAZY_EVALUATIONS`)."""
    cfg = config(n, "rotation", seed, 6)
    cfg["algorithm"] = {"name": "pfedlia", "variant": variant, "peers_scored": peers}
    cfg["backend"]["name"] = LAZY_EVALUATIONS[evaluation]
    original = batched_eval.stack_offsets  # refused: evaluate_offsets falls back at once
    if evaluation == "one at a time":
        batched_eval.stack_offsets = _one_at_a_time  # type: ignore[assignment]
    try:
        record = lia_records(plural.run(cfg).server)[-1]
    finally:
        batched_eval.stack_offsets = original  # type: ignore[assignment]
    cost = record["cost"]
    row = {
        "clients": n,
        "variant": variant,
        "peers_scored": peers,
        "evaluation": evaluation,
        "ari": record["ari"],
        "clusters": record["clusters"],
        "lazy_seconds": cost["seconds"],
        "lazy_bytes": cost["bytes_up"] + cost["bytes_down"],
        "peer_exchange_bytes": cost["peer_exchange_bytes"],
    }
    if "neighbourhoods" in record:
        row.update({k: record["neighbourhoods"][k] for k in ("purity", "recall")})
    return row


def _one_at_a_time(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("benchmark: evaluate the lazy models one at a time")


def block_scores(
    sizes: list[int], seed: int, noise: float = 0.21, cross: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic score matrices of ``tests/test_score_graph.py``."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    n, k = len(groups), len(sizes)
    mean = rng.normal(cross, 0.05, size=(k, k))
    np.fill_diagonal(mean, 1.0)
    row_noise = noise * np.exp(rng.normal(0, 0.25, n))
    scores = mean[groups][:, groups] + rng.normal(0, 0.1, n)[None, :]
    scores += row_noise[:, None] * rng.normal(size=(n, n))
    scores[np.arange(n), np.arange(n)] += 0.35
    return scores * np.exp(rng.normal(0, 0.15, n))[:, None], groups


SYNTHETIC = {
    "4x5": [5] * 4,
    "4x25": [25] * 4,
    "4x50": [50] * 4,
    "20x10": [10] * 20,
    "20x3": [3] * 20,
    "8x3": [3] * 8,
    "3,250,250,3,5": [3, 250, 250, 3, 5],
    "250,100,50,20,8x3": [250, 100, 50, 20] + [3] * 8,
    "4x250": [250] * 4,
    "20x50": [50] * 20,
    "1x100 (IID)": [100],
    "1x1000 (IID)": [1000],
}


SYNTHETIC_NOISE = ((0.21, 0.08), (0.3, 0.08), (0.42, 0.3))  # 1x, 1.5x, 2x the measured noise
SYNTHETIC_METHODS = ("optics", "optics+merge", "pFedLIA central", "spectral")


def central_defaults(scores: np.ndarray) -> np.ndarray:
    """pFedLIA's central clustering step at its default settings, on a dense score matrix."""
    config = parse_config(
        {
            "dataset": {"name": "digits"},
            "partition": {"name": "iid", "num_clients": len(scores)},
            "model": {"name": "logreg"},
            "algorithm": {"name": "pfedlia"},
        }
    )
    algorithm = build_algorithm(config)
    return algorithm.central_clusters(SparseMatrix.from_dense(scores))


def synthetic_labels(method: str, scores: np.ndarray) -> np.ndarray:
    """``method``'s clusters of ``scores``: OPTICS alone, OPTICS then merging (the central
    rule before the scores checked the row distances), pFedLIA's central defaults, or the
    spectral score graph."""
    if method == "spectral":
        return graph_clusters(scores)
    if method == "pFedLIA central":
        return central_defaults(scores)
    labels = optics_clusters(influence_features(scores, "row"), 3, 0.05)
    return merge_alike_clusters(scores, labels, MERGE_SHARE) if method == "optics+merge" else labels


def synthetic_experiment(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    for name, sizes in SYNTHETIC.items():
        if sum(sizes) > max(args.sizes):
            continue
        for noise, cross in SYNTHETIC_NOISE:
            for method in SYNTHETIC_METHODS:
                aris, found = [], []
                for seed in args.seeds:
                    scores, groups = block_scores(sizes, seed, noise, cross)
                    labels = synthetic_labels(method, scores)
                    aris.append(adjusted_rand_score(groups, labels))
                    found.append(int(labels.max()) + 1)
                yield {
                    "case": name,
                    "clients": sum(sizes),
                    "noise": noise,
                    "cross": cross,
                    "method": method,
                    "ari_min": min(aris),
                    "ari": aris,
                    "clusters": found,
                }


def summarise(rows: list[dict[str, Any]]) -> None:
    """Mean over seeds per (clients, federation, method), with the gap to Oracle."""
    keys = sorted({(r["clients"], r["federation"], r["method"]) for r in rows})
    oracle = {
        (n, f): statistics.mean(
            r["mean"]
            for r in rows
            if (r["clients"], r["federation"], r["method"]) == (n, f, "Oracle")
        )
        for n, f, m in keys
        if m == "Oracle"
    }
    columns = "clients federation method ARI clusters mean vs-Oracle worst-10% lazy-MB lazy-s"
    print("| " + " | ".join(c.replace("-", " ") for c in columns.split()) + " |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, f, m in keys:
        mine = [r for r in rows if (r["clients"], r["federation"], r["method"]) == (n, f, m)]
        mean = statistics.mean(r["mean"] for r in mine)
        gap = f"{mean - oracle[(n, f)]:+.3f}" if (n, f) in oracle else "-"
        ari = _mean_of(mine, "ari")
        clusters = _mean_of(mine, "clusters", ".1f")
        if mine[0].get("purity") is not None:
            clusters = f"purity {_mean_of(mine, 'purity')}, recall {_mean_of(mine, 'recall')}"
        worst = statistics.mean(r["worst10"] for r in mine)
        mb = _mean_of(mine, "lazy_bytes", ".1f", 1e-6)
        seconds = _mean_of(mine, "lazy_seconds", ".1f")
        cells = [n, f, m, ari, clusters, f"{mean:.3f}", gap, f"{worst:.3f}", mb, seconds]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def _mean_of(rows: list[dict[str, Any]], key: str, fmt: str = ".3f", scale: float = 1.0) -> str:
    values = [r[key] * scale for r in rows if r.get(key) is not None]
    return format(statistics.mean(values), fmt) if values else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[20, 100, 200])
    parser.add_argument("--lazy-sizes", nargs="+", type=int, default=[200])
    parser.add_argument(
        "--peers-scored",
        nargs="+",
        type=positive_float,
        default=[1.0, 20, 10],
        help="lazy: pFedLIA's peers_scored values (1: all; above 1: a count)",
    )
    parser.add_argument(
        "--variants", nargs="+", choices=["central", "decentral"], default=["central", "decentral"]
    )
    parser.add_argument(
        "--one-at-a-time-max",
        type=int,
        default=200,
        help="lazy: time the one-model-at-a-time evaluation up to this many clients (it is "
        "the slow path: N^2 evaluations one by one)",
    )
    parser.add_argument("--federations", nargs="+", choices=list(FEDERATIONS), default=["rotation"])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cfl-rounds", type=int, default=40)
    parser.add_argument(
        "--warmup", type=int, default=None, help="pFedLIA's warmup_rounds (default: its own, 5)"
    )
    parser.add_argument("--cfl-max-clients", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 and 100 clients, short runs")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--save-scores",
        type=Path,
        default=None,
        metavar="DIR",
        help="federations: keep each pFedLIA run's last score matrix and true groups here",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.lazy_sizes, args.rounds, args.cfl_rounds = [20, 100], [100], 8, 30
    existing = [str(path) for path in planned_scores(args) if path.exists()]
    if existing:  # never overwrite a file this run did not write
        parser.error(f"--save-scores would overwrite {', '.join(existing[:3])}; move them first")
    if args.save_scores is not None:
        args.save_scores.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = args.out or (None if args.quick else HERE / "results" / "clustering_scale.json")
    results: dict[str, Any] = {}
    experiments = {
        "synthetic": synthetic_experiment,
        "federations": federations_experiment,
        "lazy": lazy_experiment,
    }
    for name, experiment in experiments.items():
        if name not in args.experiments:
            continue
        results[name] = []
        for row in experiment(args):
            results[name].append(row)
            print(json.dumps(row), flush=True)
            save(results, out, started)  # every row as it comes: nothing computed is lost
        if name == "federations":
            summarise(results[name])
    print(f"total {save(results, out, started):.0f} s")


def positive_float(text: str) -> float:
    """An argparse type: a number above 0 (peers_scored: a share up to 1, a count above)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def save(results: dict[str, Any], out: Path | None, started: float) -> float:
    """Write ``results`` with the run's metadata to ``out`` (if any); the seconds so far."""
    seconds = time.perf_counter() - started
    results["meta"] = {
        "command": " ".join(sys.argv),
        "seconds": seconds,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    if out is not None:  # written whole or not at all: a run stopped mid-write keeps the last
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=1, default=float)
        atomic_write(out, lambda tmp: tmp.write_text(text))
    return seconds


if __name__ == "__main__":
    main()
