"""Robust aggregation against attacks, and accuracy under dropout, with personalization.

An aggregator x attack table at 20% malicious clients on a label-skewed MNIST federation of
100 clients (Dirichlet alpha 0.5), for FedAvg, FedPer, Ditto and IFCA, over seeds: the clean
clients' mean test accuracy (each client scored with the model its method gives it; the
malicious clients are left out, also in the no-attack reference) and, for the backdoor, the
attack success rate. Then accuracy with 20% and 50% dropout against none, and rounds lost.

    .venv/bin/python benchmarks/robustness.py            # the recorded tables (~1 hour)
    .venv/bin/python benchmarks/robustness.py --quick    # FedAvg, one seed, a few cells
    .venv/bin/python benchmarks/robustness.py --bucketed --algorithms FedAvg --no-dropout \
        --out benchmarks/results/robustness_bucketing.json   # rules on buckets of 2 updates

Results go to benchmarks/results/robustness.json (and the tables to stdout).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import plural
from plural.experiment import load_config
from plural.robust.attacks import choose_malicious
from plural.runner import build_federation

HERE = Path(__file__).parent
FRACTION = 0.2
COHORT = 20
F = 4  # attackers assumed per round: 20% of the cohort

AGGREGATORS: dict[str, dict[str, Any]] = {
    "mean": {"name": "mean"},
    "median": {"name": "median"},
    "trimmed_mean": {"name": "trimmed_mean", "trim": 0.2},
    "krum": {"name": "krum", "f": F},
    "multi_krum": {"name": "multi_krum", "f": F},
    "bulyan": {"name": "bulyan", "f": F},
    "geometric_median": {"name": "geometric_median"},
    "norm_bound": {"name": "norm_bound", "bound": 0.5},
    "centered_clip": {"name": "centered_clip", "tau": 0.3},
    "dnc": {"name": "dnc", "f": F},
}
BUCKETED: dict[str, dict[str, Any]] = {
    f"{name}+b2": {
        **AGGREGATORS[name],
        "bucket": 2,
        **({"f": 3} if "f" in AGGREGATORS[name] else {}),
    }
    for name in (
        "median",
        "trimmed_mean",
        "krum",
        "multi_krum",
        "geometric_median",
        "dnc",
        "centered_clip",
    )
}
"""The rules over all updates on bucket means of 2 (Karimireddy, He & Jaggi 2022's s = 2):
20 clients make 10 buckets, so Krum assumes f = 3 (it needs more than 2f + 2 updates)."""
# personalized and clustered methods (to fit the time budget): the mean and the four defences
# that cost least without attack on FedAvg's grid (a distance rule, two clipping rules, and
# divide and conquer), against every attack
FEW_AGGREGATORS = ("mean", "geometric_median", "norm_bound", "centered_clip", "dnc")
ATTACKS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "sign_flip": {"name": "sign_flip"},
    "scale": {"name": "scale", "scale": 10.0},
    "gaussian": {"name": "gaussian", "std": 1.0},
    "alie": {"name": "alie"},
    "ipm": {"name": "ipm", "epsilon": 0.5},
    "min_max": {"name": "min_max"},
    "label_flip": {"name": "label_flip"},
    "backdoor": {"name": "backdoor", "target": 0},
}
ALGORITHMS: dict[str, dict[str, Any]] = {
    "FedAvg": {"name": "fedavg"},
    "FedPer": {"name": "fedper"},
    "Ditto": {"name": "ditto"},
    "IFCA": {"name": "ifca", "k": 2},
}
DROPOUTS = (0.0, 0.2, 0.5)


def base_config(seed: int, rounds: int, max_samples: int) -> dict[str, Any]:
    return {
        "name": "robustness",
        "seed": seed,
        "rounds": rounds,
        "dataset": {"name": "mnist", "max_samples": max_samples},
        "partition": {"name": "dirichlet", "num_clients": 100, "alpha": 0.5},
        "split": {"val": 0.0, "test": 0.2},
        "model": {"name": "mlp", "hidden": [32]},
        "algorithm": {"name": "fedavg"},
        "train": {"lr": 0.1, "momentum": 0.5, "batch_size": 32, "local_epochs": 1},
        "sampling": {"count": COHORT},
        "eval": {"every": rounds, "splits": ["test"]},
        "backend": {"name": "vectorized", "threads_per_worker": 1},
    }


def clean_accuracy(results: Any, malicious: list[int]) -> tuple[float, float]:
    """Mean and worst-10% test accuracy over the clients that are not malicious."""
    final = results.final("test")
    values = np.sort(final[~final["client"].isin(malicious)]["accuracy"].to_numpy())
    worst = values[: max(1, int(np.ceil(0.1 * len(values))))]
    return float(values.mean()), float(worst.mean())


def run_cell(
    base: dict[str, Any], federation: Any, algorithm: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    cfg["algorithm"] = algorithm
    cfg.update({k: v for k, v in sections.items() if v is not None})
    started = time.perf_counter()
    results = plural.run(cfg, dataset=federation, progress=False)
    malicious = choose_malicious(
        load_config({**cfg, "attack": {"name": "sign_flip", "fraction": FRACTION}}).attack,
        federation.num_clients,
        cfg["seed"],
    )
    mean, worst = clean_accuracy(results, malicious)
    robustness = results.summary.get("robustness", {})
    return {
        "clean_mean": mean,
        "clean_worst10": worst,
        "attack_success": robustness.get("attack_success"),
        "rounds_lost": robustness.get("rounds_lost", 0),
        "dropouts": robustness.get("dropouts", 0),
        "seconds": time.perf_counter() - started,
    }


def grid(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    cells = []
    for method in args.algorithms:
        full = method == "FedAvg"
        aggregators = list(AGGREGATORS) if full else list(FEW_AGGREGATORS)
        attacks = list(ATTACKS)
        if args.quick:
            aggregators = ["mean", "trimmed_mean", "geometric_median", "centered_clip"]
            attacks = ["none", "sign_flip", "alie", "backdoor"]
        if args.bucketed:  # the mean (the reference) and the bucketed rules
            aggregators = ["mean", *BUCKETED]
        if args.full_grid:
            aggregators, attacks = list(AGGREGATORS), list(ATTACKS)
        if args.rules:
            aggregators = [a for a in aggregators if a in args.rules]
        if args.attacks:
            attacks = [a for a in attacks if a in args.attacks]
        cells += [(method, agg, att) for att in attacks for agg in aggregators]
    return cells


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (method, aggregator, attack): mean and std over seeds of each figure."""
    table: dict[str, Any] = {}
    for record in records:
        key = "|".join((record["method"], record["aggregator"], record["attack"]))
        table.setdefault(key, []).append(record)
    out = {}
    for key, rows in table.items():
        entry: dict[str, Any] = {"seeds": len(rows)}
        for field in ("clean_mean", "clean_worst10", "attack_success", "rounds_lost"):
            values = [r[field] for r in rows if r.get(field) is not None]
            if values:
                entry[field] = float(np.mean(values))
                entry[field + "_sd"] = float(np.std(values))
        out[key] = entry
    return out


def print_tables(summary: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
    verdicts = []
    for method in methods:
        keys = [k.split("|") for k in summary if k.startswith(method + "|")]
        aggregators = list(dict.fromkeys(a for _, a, _ in keys))
        attacks = list(dict.fromkeys(t for _, _, t in keys))
        print(f"\n### {method}: clean clients' mean test accuracy (%), 20% malicious")
        print("| attack | " + " | ".join(aggregators) + " | best defence | gap to no attack |")
        print("|---" * (len(aggregators) + 3) + "|")
        reference = summary.get(f"{method}|mean|none", {}).get("clean_mean")
        for attack in attacks:
            cells, best = [], (None, -1.0)
            for agg in aggregators:
                entry = summary.get(f"{method}|{agg}|{attack}")
                if entry is None:
                    cells.append("")
                    continue
                text = f"{100 * entry['clean_mean']:.1f}"
                if attack == "backdoor" and "attack_success" in entry:
                    text += f" (ASR {100 * entry['attack_success']:.0f})"
                cells.append(text)
                if attack != "none" and agg != "mean" and entry["clean_mean"] > best[1]:
                    best = (agg, entry["clean_mean"])
            gap = ""
            if attack != "none" and reference is not None and best[0] is not None:
                gap_points = 100 * (reference - best[1])
                gap = f"{gap_points:+.1f}"
                verdicts.append(
                    {"method": method, "attack": attack, "best": best[0], "gap": gap_points}
                )
            label = best[0] if attack != "none" else ""
            print(f"| {attack} | " + " | ".join(cells) + f" | {label} | {gap} |")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="FedAvg, one seed, a few cells")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--max-samples", type=int, default=6000)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "robustness.json")
    parser.add_argument("--bucketed", action="store_true", help="the rules on buckets of 2")
    parser.add_argument("--no-dropout", action="store_true", help="skip the dropout runs")
    parser.add_argument(
        "--full-grid", action="store_true", help="every rule x attack for every method"
    )
    parser.add_argument("--rules", nargs="+", choices=[*AGGREGATORS, *BUCKETED])
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.algorithms = 1, ["FedAvg"]
    torch.set_num_threads(1)
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    dropout_records: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        base = base_config(seed, args.rounds, args.max_samples)
        federation = build_federation(load_config(base))
        for method, agg, attack in grid(args):
            attack_section = ATTACKS[attack]
            if attack_section is not None:
                attack_section = {**attack_section, "fraction": FRACTION}
            figures = run_cell(
                base,
                federation,
                ALGORITHMS[method],
                aggregator={**AGGREGATORS, **BUCKETED}[agg],
                attack=attack_section,
            )
            records.append(
                {"method": method, "aggregator": agg, "attack": attack, "seed": seed, **figures}
            )
            save(args, records, dropout_records, started)
        for method in [] if args.no_dropout else args.algorithms:
            for dropout in DROPOUTS if not args.quick else (0.0, 0.5):
                faults = {"dropout": dropout} if dropout else None
                figures = run_cell(base, federation, ALGORITHMS[method], faults=faults)
                dropout_records.append(
                    {"method": method, "dropout": dropout, "seed": seed, **figures}
                )
                save(args, records, dropout_records, started)
        print(f"seed {seed} done after {time.perf_counter() - started:.0f} s", flush=True)
    summary = summarize(records)
    verdicts = print_tables(summary, args.algorithms)
    print("\n### Dropout: mean test accuracy (%) and rounds lost (no attack, mean aggregator)")
    print("| method | " + " | ".join(f"dropout {d:.0%}" for d in DROPOUTS) + " | rounds lost |")
    print("|---" * (len(DROPOUTS) + 2) + "|")
    for method in args.algorithms:
        cells, lost = [], 0
        for dropout in DROPOUTS:
            rows = [r for r in dropout_records if r["method"] == method and r["dropout"] == dropout]
            if rows:
                cells.append(f"{100 * np.mean([r['clean_mean'] for r in rows]):.1f}")
                lost += sum(r["rounds_lost"] for r in rows)
            else:
                cells.append("")
        print(f"| {method} | " + " | ".join(cells) + f" | {lost} |")
    within = [v for v in verdicts if v["gap"] <= 2.0]
    print(f"\nbest defence within 2 points of no attack: {len(within)} of {len(verdicts)}")
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s for {len(records) + len(dropout_records)} runs")
    save(args, records, dropout_records, started, verdicts)


def save(
    args: argparse.Namespace,
    records: list[dict[str, Any]],
    dropout_records: list[dict[str, Any]],
    started: float,
    verdicts: list[dict[str, Any]] | None = None,
) -> None:
    """Write every run so far (after each run, so an interrupted benchmark keeps them)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")
    partial.write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "summary": summarize(records),
                "verdicts": verdicts,
                "records": records,
                "dropout": dropout_records,
                "seconds": time.perf_counter() - started,
                "complete": verdicts is not None,
            },
            indent=1,
        )
    )
    partial.replace(args.out)


if __name__ == "__main__":
    main()
