"""pFedLIA against Oracle, FedAvg, IFCA and Local, and pFedLIA's own options, on MNIST.

Four experiments (all by default; ``--experiments`` picks some):

* ``accuracy``: mean, worst-10% per-client test accuracy, ARI and bytes of pFedLIA (central
  and decentral), Oracle, FedAvg, IFCA (k=5) and Local on three federations: 5 groups of 2
  MNIST classes (20 clients), the same with 20% of clients' train/val labels all wrong, and
  the same on Fashion-MNIST (skipped with a note where its data is missing).
* ``communication``: each client scores a random share of its peers (``peers_scored``) and/or
  receives compressed lazy models (``compression``): lazy-phase bytes against ARI kept.
* ``privacy``: score rows sent as randomized-response votes (``votes: private``) at several
  per-vote epsilons, sign votes and raw scores: epsilon against ARI kept.
* ``drift``: 2 rotation groups, a quarter of the clients rotate by another 180 degrees
  (they move to the other group) at round 12: ``recluster: stale`` against ``never``, with
  FedAvg, IFCA (k=2) and Local as references; per-round test accuracy of the drifting and the
  stable clients, and what the re-clustering cost.

Run from the repository root (about 4 minutes on one core of a 2-core machine; figures in
``benchmarks/results/lia_methods.json``)::

    .venv/bin/python benchmarks/lia_methods.py [--experiments accuracy drift] [--seeds 0 1 2]
    .venv/bin/python benchmarks/lia_methods.py --quick        # smoke run, seed 0, short runs

The accuracy runs evaluate every client's test split every round (to see the last rounds, not
only the last one); IFCA's test-time cluster choice at those extra evaluations is taken out of
its byte count. ``--quick`` writes no JSON unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

import plural
from plural.algorithms.pfedlia import lia_records
from plural.core.params import nbytes
from plural.data.datasets import DatasetUnavailable

HERE = Path(__file__).parent
EXPERIMENTS = ("accuracy", "communication", "privacy", "drift")

# The pathological federation of tests/test_pfedlia.py (GROUPED): 20 clients, 5 groups of 2
# MNIST classes.
BASE: dict[str, Any] = {
    "name": "lia_methods",
    "seed": 0,
    "rounds": 20,
    "dataset": {"name": "mnist", "max_samples": 8000},
    "partition": {"name": "class_groups", "num_clients": 20, "groups": 5, "classes_per_group": 2},
    "model": {"name": "mlp", "hidden": [64]},
    "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "local_epochs": 1},
    "split": {"val": 0.15, "test": 0.2},
    "sampling": {"fraction": 1.0},
    "eval": {"every": 20, "splits": ["test"]},
    "backend": {"threads_per_worker": 1},
    "algorithm": {"name": "pfedlia"},
}
NOISE = [{"name": "label_noise", "fraction": 0.2, "rate": 1.0}]
FEDERATIONS: dict[str, dict[str, Any]] = {
    "mnist 5x2": {},
    "mnist 5x2 + 20% noisy clients": {"transforms": NOISE},
    "fashion-mnist 5x2": {"dataset": {"name": "fashion_mnist", "max_samples": 8000}},
}
METHODS: dict[str, dict[str, Any]] = {
    "pFedLIA central": {"name": "pfedlia"},
    "pFedLIA decentral": {"name": "pfedlia", "variant": "decentral"},
    "Oracle": {"name": "oracle"},
    "FedAvg": {"name": "fedavg"},
    "IFCA (k=5)": {"name": "ifca", "k": 5},
    "Local": {"name": "local"},
}
WARMUP = 5  # pFedLIA's default warmup_rounds; the lazy phase runs at the start of round 6

# Drift: 2 rotation groups (0 and 180 degrees) over an IID split; a quarter of the clients
# rotate by a further 180 degrees from DRIFT_START on, i.e. they move to the other group.
DRIFT_START = 12
DRIFT_ROUNDS = 25
DRIFT_METHODS: dict[str, dict[str, Any]] = {
    "pFedLIA recluster stale": {"name": "pfedlia", "recluster": "stale"},
    "pFedLIA recluster never": {"name": "pfedlia", "recluster": "never"},
    "FedAvg": {"name": "fedavg"},
    "IFCA (k=2)": {"name": "ifca", "k": 2},
    "Local": {"name": "local"},
}


def config(seed: int, rounds: int, algorithm: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """BASE with ``seed``, ``rounds``, ``algorithm`` and top-level ``changes``."""
    cfg = copy.deepcopy(BASE)
    cfg.update(copy.deepcopy(changes))
    cfg.update(seed=seed, rounds=rounds, algorithm=dict(algorithm))
    cfg["eval"] = {**BASE["eval"], "every": rounds, **changes.get("eval", {})}
    return cfg


def drift_config(seed: int, rounds: int, start: int, algorithm: dict[str, Any]) -> dict[str, Any]:
    return config(
        seed,
        rounds,
        algorithm,
        name="lia_drift",
        partition={"name": "iid", "num_clients": 20},
        transforms=[
            {"name": "rotation", "groups": 2, "angles": [0.0, 180.0]},
            {
                "name": "drift",
                "fraction": 0.25,
                "start_round": start,
                "change": {"name": "rotation", "groups": 1, "angles": [180.0]},
            },
        ],
        eval={"every": 1},
    )


def federation_of(cfg: dict[str, Any]) -> Any:
    return plural.runner.build_federation(plural.experiment.load_config(cfg))


def timed_run(cfg: dict[str, Any]) -> tuple[plural.Results, float]:
    started = time.perf_counter()
    results = plural.run(cfg)
    return results, time.perf_counter() - started


# ---- small helpers ----------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else float("nan")


def std(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None]
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        parts = [row[0].ljust(widths[0]), *rest]
        lines.append("  ".join(parts))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def per_client(results: plural.Results, split: str = "test") -> np.ndarray:
    """Accuracy per client (index = client id) at the last evaluated round."""
    final = results.final(split).sort_values("client")
    return final["accuracy"].to_numpy()


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# ---- 1. accuracy ------------------------------------------------------------------------------


def accuracy_experiment(
    seeds: Sequence[int],
    rounds: int,
    federations: Sequence[str] = tuple(FEDERATIONS),
    methods: Sequence[str] = tuple(METHODS),
) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds, "federations": {}, "skipped": {}}
    for fed_name in federations:
        changes = FEDERATIONS[fed_name]
        runs: list[dict[str, Any]] = []
        try:
            for seed in seeds:
                federation = federation_of(config(seed, rounds, {"name": "fedavg"}, **changes))
                noisy = federation.group_ids.get("label_noise")
                for method in methods:
                    algorithm = METHODS[method]
                    cfg = config(seed, rounds, algorithm, eval={"every": 1}, **changes)
                    results, seconds = timed_run(cfg)
                    runs.append(one_accuracy_run(fed_name, method, seed, results, seconds, noisy))
        except DatasetUnavailable as err:
            note = str(err).splitlines()[0]
            out["skipped"][fed_name] = note
            print(f"\n[accuracy] {fed_name}: skipped, dataset unavailable: {note}")
            continue
        rows = summarize_accuracy(runs, noisy_federation="label_noise" in str(changes))
        out["federations"][fed_name] = {"changes": changes, "runs": runs, "summary": rows}
        print_accuracy(fed_name, rows, rounds, len(seeds))
    return out


def one_accuracy_run(
    federation: str,
    method: str,
    seed: int,
    results: plural.Results,
    seconds: float,
    noisy: np.ndarray | None,
) -> dict[str, Any]:
    summary = results.summary
    accuracy = summary["test"]["accuracy"]
    clustering = summary.get("clustering") or {}
    test = results.metrics[results.metrics["split"] == "test"]
    curve = test.groupby("round")["accuracy"].mean()
    run: dict[str, Any] = {
        "federation": federation,
        "method": method,
        "seed": seed,
        "mean": accuracy["mean"],
        "worst10": accuracy["worst10"],
        "last5": float(curve.iloc[-5:].mean()),
        "curve": [round(float(a), 4) for a in curve],
        "ari": clustering.get("ari"),
        "clusters": clustering.get("clusters"),
        "bytes_total": summary["bytes"]["total"],
        "bytes_train": summary["bytes"]["total"] - evaluation_bytes(results, METHODS[method]),
        "seconds": seconds,
    }
    if "pfedlia" in summary:
        run["lazy_bytes"] = summary["pfedlia"]["lazy_cost"]["bytes_up"]
        run["lazy_bytes"] += summary["pfedlia"]["lazy_cost"]["bytes_down"]
        record = lia_records(results.server)[0]
        if "neighbourhoods" in record:
            run["neighbourhoods"] = record["neighbourhoods"]
    if noisy is not None:
        acc = per_client(results)
        run["clean_mean"] = float(acc[noisy == 0].mean())
        run["noisy_mean"] = float(acc[noisy == 1].mean())
        run["noisy_clients"] = np.flatnonzero(noisy).tolist()
    return run


def evaluation_bytes(results: plural.Results, algorithm: dict[str, Any]) -> int:
    """IFCA's test-time cluster choice at every evaluated round but the last: each client
    downloads the k models (and sends back an 8-byte cluster id). The other methods' bytes do
    not depend on how often the engine evaluates."""
    if algorithm["name"] != "ifca":
        return 0
    k = algorithm["k"]
    evaluations = results.metrics.loc[results.metrics["split"] == "test", "round"].nunique()
    clients = results.summary["clients"]
    return (evaluations - 1) * clients * (k * nbytes(results.server.params) + 8)


def summarize_accuracy(runs: list[dict[str, Any]], noisy_federation: bool) -> list[dict[str, Any]]:
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        row = {
            "method": method,
            "mean": mean([r["mean"] for r in mine]),
            "mean_std": std([r["mean"] for r in mine]),
            "worst10": mean([r["worst10"] for r in mine]),
            "worst10_std": std([r["worst10"] for r in mine]),
            "last5": mean([r["last5"] for r in mine]),
            "purity": mean([r["neighbourhoods"]["purity"] for r in mine])
            if "neighbourhoods" in mine[0]
            else None,
            "ari": mean([r["ari"] for r in mine]) if mine[0]["ari"] is not None else None,
            "ari_min": min(r["ari"] for r in mine) if mine[0]["ari"] is not None else None,
            "clusters": mean([r["clusters"] for r in mine]) if mine[0]["clusters"] else None,
            "MB": mean([r["bytes_train"] for r in mine]) / 1e6,
            "MB_recorded": mean([r["bytes_total"] for r in mine]) / 1e6,
            "seconds": mean([r["seconds"] for r in mine]),
        }
        if noisy_federation:
            row["clean_mean"] = mean([r["clean_mean"] for r in mine])
            row["clean_mean_std"] = std([r["clean_mean"] for r in mine])
            row["noisy_mean"] = mean([r["noisy_mean"] for r in mine])
        rows.append(row)
    return rows


def print_accuracy(name: str, rows: list[dict[str, Any]], rounds: int, seeds: int) -> None:
    noisy = "clean_mean" in rows[0]
    headers = ["method", "mean acc", "worst 10%", "last 5 rnds", "ARI (min)", "k", "MB", "s/run"]
    if noisy:
        headers[4:4] = ["clean clients", "noisy clients"]
    body = []
    for r in rows:
        ari = "-" if r["ari"] is None else f"{r['ari']:.3f} ({r['ari_min']:.3f})"
        line = [
            r["method"],
            f"{r['mean']:.3f} ± {r['mean_std']:.3f}",
            f"{r['worst10']:.3f} ± {r['worst10_std']:.3f}",
            f"{r['last5']:.3f}",
            ari + ("" if r["purity"] is None else f" pur. {r['purity']:.2f}"),
            fmt(r["clusters"], ".1f"),
            f"{r['MB']:.1f}",
            f"{r['seconds']:.1f}",
        ]
        if noisy:
            line[4:4] = [f"{r['clean_mean']:.3f} ± {r['clean_mean_std']:.3f}", fmt(r["noisy_mean"])]
        body.append(line)
    print(
        f"\n[accuracy] {name}: {rounds} rounds, mean ± std over {seeds} seed(s); 'last 5 rnds': "
        "client mean over the last 5 rounds; pur.: decentral neighbourhood purity"
    )
    print(table(headers, body))


# ---- 2. communication -------------------------------------------------------------------------


def lazy_record(seed: int, **algorithm: Any) -> dict[str, Any]:
    """The first lazy phase's record of a pFedLIA run that stops right after it."""
    cfg = config(seed, WARMUP + 1, {"name": "pfedlia", "warmup_rounds": WARMUP, **algorithm})
    results, _ = timed_run(cfg)
    return lia_records(results.server)[0]


def lazy_bytes(record: dict[str, Any]) -> int:
    return int(record["cost"]["bytes_up"] + record["cost"]["bytes_down"])


def communication_experiment(
    seeds: Sequence[int], peers: Sequence[float], compressions: Sequence[str]
) -> dict[str, Any]:
    grid: list[dict[str, Any]] = [
        {"peers_scored": p, "compression": c, **({"topk_fraction": 0.1} if c == "topk" else {})}
        for p in peers
        for c in compressions
    ]
    # peers_scored < 1 turns symmetrize on by default; these rows show what that does.
    grid += [{"peers_scored": p, "symmetrize": False} for p in peers if p < 1]
    runs = []
    full: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        for setting in grid:
            record = lazy_record(seed, **setting)
            if setting.get("peers_scored") == 1.0 and setting.get("compression") == "none":
                full[seed] = record
            runs.append({"seed": seed, "setting": setting, "record": record})
    rows = []
    for setting in grid:
        mine = [r for r in runs if r["setting"] == setting]
        ratio = [lazy_bytes(r["record"]) / lazy_bytes(full[r["seed"]]) for r in mine]
        exchange = [
            r["record"]["cost"]["peer_exchange_bytes"]
            / full[r["seed"]]["cost"]["peer_exchange_bytes"]
            for r in mine
        ]
        aris = [r["record"]["ari"] for r in mine]
        rows.append(
            {
                "setting": setting,
                "label": label_of(setting),
                "lazy_MB": mean([lazy_bytes(r["record"]) for r in mine]) / 1e6,
                "lazy_bytes_ratio": mean(ratio),
                "peer_exchange_MB": mean([r["record"]["cost"]["peer_exchange_bytes"] for r in mine])
                / 1e6,
                "peer_exchange_ratio": mean(exchange),
                "ari": mean(aris),
                "ari_min": min(aris),
                "clusters": mean([r["record"]["clusters"] for r in mine]),
            }
        )
    print(f"\n[communication] lazy phase only (round {WARMUP + 1}), {len(seeds)} seed(s)")
    print(
        table(
            ["setting", "lazy MB", "vs full", "peer exch. MB", "vs full", "ARI", "ARI min", "k"],
            [
                [
                    r["label"],
                    f"{r['lazy_MB']:.2f}",
                    f"{r['lazy_bytes_ratio']:.3f}",
                    f"{r['peer_exchange_MB']:.2f}",
                    f"{r['peer_exchange_ratio']:.3f}",
                    f"{r['ari']:.3f}",
                    f"{r['ari_min']:.3f}",
                    f"{r['clusters']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    return {
        "rounds": WARMUP + 1,
        "summary": rows,
        "runs": [
            {"seed": r["seed"], "setting": r["setting"], **record_numbers(r["record"])}
            for r in runs
        ],
    }


def label_of(setting: dict[str, Any]) -> str:
    if "votes" in setting:
        if setting["votes"] == "private":
            return f"private, eps {setting['epsilon']:g}"
        return str(setting["votes"])
    parts = [f"peers {setting['peers_scored']:g}"]
    if "compression" in setting:
        compression = setting["compression"]
        parts.append(f"topk {setting['topk_fraction']:g}" if compression == "topk" else compression)
    if "symmetrize" in setting:
        parts.append(f"symmetrize {str(setting['symmetrize']).lower()}")
    return ", ".join(parts)


def record_numbers(record: dict[str, Any]) -> dict[str, Any]:
    """A lazy-phase record without its matrices."""
    keep = ("round", "kind", "lazy_clients", "assignment", "clusters", "cost", "ari", "nmi")
    out = {k: record[k] for k in keep if k in record}
    for key in ("privacy", "neighbourhoods"):
        if key in record:
            out[key] = record[key]
    return out


# ---- 3. privacy -------------------------------------------------------------------------------


def privacy_experiment(seeds: Sequence[int], epsilons: Sequence[float]) -> dict[str, Any]:
    grid = [{"votes": "raw"}, {"votes": "sign"}] + [
        {"votes": "private", "epsilon": e} for e in epsilons
    ]
    runs = []
    for seed in seeds:
        for setting in grid:
            record = lazy_record(seed, **setting)
            truth = np.where(record["scores"] > 0, 1.0, -1.0)
            released = record.get("released")
            agree = None if released is None else float((released == truth).mean())
            runs.append(
                {"seed": seed, "setting": setting, "agreement": agree, **record_numbers(record)}
            )
    rows = []
    for setting in grid:
        mine = [r for r in runs if r["setting"] == setting]
        privacy = mine[0].get("privacy", {})
        aris = [r["ari"] for r in mine]
        rows.append(
            {
                "setting": setting,
                "label": label_of(setting),
                "epsilon_per_vote": privacy.get("epsilon_per_vote"),
                "votes_per_row": privacy.get("votes_per_row"),
                "epsilon_per_row": privacy.get("epsilon_per_row"),
                "keep_probability": privacy.get("keep_probability"),
                "agreement": mean([r["agreement"] for r in mine])
                if mine[0]["agreement"] is not None
                else None,
                "ari": mean(aris),
                "ari_min": min(aris),
                "clusters": mean([r["clusters"] for r in mine]),
            }
        )
    print(f"\n[privacy] central pFedLIA, lazy phase only, {len(seeds)} seed(s)")
    print(
        table(
            ["votes", "eps/vote", "eps/row", "keep p", "votes = sign(S)", "ARI", "ARI min", "k"],
            [
                [
                    r["label"],
                    fmt(r["epsilon_per_vote"], "g"),
                    fmt(r["epsilon_per_row"], "g"),
                    fmt(r["keep_probability"]),
                    fmt(r["agreement"]),
                    f"{r['ari']:.3f}",
                    f"{r['ari_min']:.3f}",
                    f"{r['clusters']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    return {"rounds": WARMUP + 1, "summary": rows, "runs": runs}


# ---- 4. drift ---------------------------------------------------------------------------------


def drift_experiment(seeds: Sequence[int], rounds: int, start: int) -> dict[str, Any]:
    curves: dict[str, dict[str, list[list[float]]]] = {
        m: {"drifting": [], "stable": [], "all": []} for m in DRIFT_METHODS
    }
    runs = []
    for seed in seeds:
        federation = federation_of(drift_config(seed, rounds, start, {"name": "fedavg"}))
        drifting = federation.group_ids["drift"].astype(bool)
        before = federation.group_ids["rotation"]
        after = before ^ drifting.astype(before.dtype)
        for method, algorithm in DRIFT_METHODS.items():
            results, seconds = timed_run(drift_config(seed, rounds, start, algorithm))
            test = results.metrics[results.metrics["split"] == "test"]
            acc = test.pivot(index="round", columns="client", values="accuracy").sort_index()
            acc = acc.sort_index(axis=1).to_numpy()
            curves[method]["drifting"].append(acc[:, drifting].mean(axis=1).tolist())
            curves[method]["stable"].append(acc[:, ~drifting].mean(axis=1).tolist())
            curves[method]["all"].append(acc.mean(axis=1).tolist())
            run: dict[str, Any] = {
                "seed": seed,
                "method": method,
                "seconds": seconds,
                "drifting_clients": np.flatnonzero(drifting).tolist(),
                "bytes_total": results.summary["bytes"]["total"],
            }
            if algorithm["name"] == "pfedlia":
                run["lazy_phases"] = []
                for record in lia_records(results.server):
                    truth = before if record["round"] < start else after
                    numbers = record_numbers(record)
                    numbers["ari_vs_current_groups"] = float(
                        adjusted_rand_score(truth, record["assignment"])
                    )
                    numbers["lazy_clients_are_drifting"] = set(record["lazy_clients"]) == set(
                        np.flatnonzero(drifting).tolist()
                    )
                    run["lazy_phases"].append(numbers)
            runs.append(run)
    mean_curves = {
        m: {k: np.mean(np.asarray(v), axis=0).tolist() for k, v in c.items()}
        for m, c in curves.items()
    }
    shown = sorted(
        {1, WARMUP, WARMUP + 1, start - 1, start, start + 1, start + 2, start + 3, start + 5}
        | {start + 8, rounds}
    )
    shown = [r for r in shown if 1 <= r <= rounds]
    print(
        f"\n[drift] mean test accuracy of drifting / stable clients by round (drift at round "
        f"{start}), mean over {len(seeds)} seed(s)"
    )
    print(
        table(
            ["method"] + [f"r{r}" for r in shown],
            [
                [m] + [f"{c['drifting'][r - 1]:.3f}/{c['stable'][r - 1]:.3f}" for r in shown]
                for m, c in mean_curves.items()
            ],
        )
    )
    summary = []
    for m, c in mean_curves.items():
        mine = [r for r in runs if r["method"] == m]
        drift_c = c["drifting"]
        summary.append(
            {
                "method": m,
                "drifting_before": drift_c[start - 2],
                "drifting_at_drift": drift_c[start - 1],
                "drifting_next5": mean(drift_c[start : start + 5]),
                "drifting_final": drift_c[-1],
                "stable_final": c["stable"][-1],
                "all_final": c["all"][-1],
                "MB": mean([r["bytes_total"] for r in mine]) / 1e6,
            }
        )
    print(f"\n[drift] summary (the 5 rounds after the drift: rounds {start + 1}-{start + 5})")
    print(
        table(
            [
                "method",
                f"drifting r{start - 1}",
                f"r{start}",
                "next 5 rnds",
                f"final r{rounds}",
                "stable final",
                "MB",
            ],
            [
                [
                    r["method"],
                    f"{r['drifting_before']:.3f}",
                    f"{r['drifting_at_drift']:.3f}",
                    f"{r['drifting_next5']:.3f}",
                    f"{r['drifting_final']:.3f}",
                    f"{r['stable_final']:.3f}",
                    f"{r['MB']:.1f}",
                ]
                for r in summary
            ],
        )
    )
    phases = []
    for run in runs:
        for p in run.get("lazy_phases", []):
            phases.append(
                [
                    run["seed"],
                    run["method"],
                    p["round"],
                    p["kind"],
                    "all" if p["kind"] == "cluster" else str(p["lazy_clients"]),
                    "-"
                    if p["kind"] == "cluster"
                    else "yes"
                    if p["lazy_clients_are_drifting"]
                    else "no",
                    f"{p['ari_vs_current_groups']:.3f}",
                    p["cost"]["lazy_samples"],
                    p["cost"]["eval_samples"],
                    f"{(p['cost']['bytes_up'] + p['cost']['bytes_down']) / 1e6:.1f}",
                    f"{p['cost']['seconds']:.2f}",
                ]
            )
    print("\n[drift] lazy phases (ARI against the groups at that round; drifting clients: ")
    print(
        "        "
        + "; ".join(
            f"seed {r['seed']}: {r['drifting_clients']}" for r in runs[:: len(DRIFT_METHODS)]
        )
        + ")"
    )
    print(
        table(
            [
                "seed",
                "method",
                "round",
                "kind",
                "lazy clients",
                "= drifting",
                "ARI",
                "lazy samples",
                "eval samples",
                "MB",
                "s",
            ],
            phases,
        )
    )
    return {
        "rounds": rounds,
        "drift_start": start,
        "config": drift_config(seeds[0], rounds, start, {"name": "pfedlia", "recluster": "stale"}),
        "summary": summary,
        "mean_curves": mean_curves,
        "curves": curves,
        "runs": runs,
    }


# ---- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=EXPERIMENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=20, help="accuracy experiment's rounds")
    for flag, names in (("--federations", FEDERATIONS), ("--methods", METHODS)):
        parser.add_argument(
            flag, nargs="+", choices=list(names), default=list(names), help="accuracy: a subset"
        )
    parser.add_argument("--quick", action="store_true", help="smoke run: seed 0, short runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON file (default: benchmarks/results/lia_methods.json; --quick writes only "
        "with --out)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0] if args.quick else args.seeds
    rounds = WARMUP + 2 if args.quick else args.rounds
    peers = (1.0, 0.5) if args.quick else (1.0, 0.5, 0.3)
    compressions = ("none", "int8") if args.quick else ("none", "topk", "int8")
    epsilons = (1.0, 8.0) if args.quick else (0.5, 1.0, 2.0, 4.0, 8.0)
    drift_rounds, drift_start = (14, 9) if args.quick else (DRIFT_ROUNDS, DRIFT_START)

    started = time.perf_counter()
    load = os.getloadavg()[0]
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "plural": getattr(plural, "__version__", None),
            "load_average_start": load,
        },
        "seeds": seeds,
        "quick": args.quick,
        "base_config": BASE,
        "experiments": {},
    }
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "accuracy": lambda: accuracy_experiment(seeds, rounds, args.federations, args.methods),
        "communication": lambda: communication_experiment(seeds, peers, compressions),
        "privacy": lambda: privacy_experiment(seeds, epsilons),
        "drift": lambda: drift_experiment(seeds, drift_rounds, drift_start),
    }
    for name in EXPERIMENTS:
        if name in args.experiments:
            t = time.perf_counter()
            report["experiments"][name] = runners[name]()
            report["experiments"][name]["seconds"] = time.perf_counter() - t
            print(f"[{name}] {time.perf_counter() - t:.0f} s")
    report["seconds"] = time.perf_counter() - started
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    out = args.out or (None if args.quick else HERE / "results" / "lia_methods.json")
    if out is None:
        print(f"\n--quick: nothing written (pass --out) ({report['seconds']:.0f} s)")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(report), indent=1) + "\n")
    print(f"\nwrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
