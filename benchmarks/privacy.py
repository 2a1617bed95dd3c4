"""Accuracy under client-level differential privacy, per personalization method, and a
membership-inference audit.

A federation of 500 MNIST clients (Dirichlet(0.3) label skew, 30k images pooled, so ~36
training images per client), a small MLP (784-16-10), Poisson sampling of 20% of the clients
a round, 30 rounds, uniform weights. Each method runs without DP and at epsilon in
{8, 4, 2, 1} (delta = n^-1.1, the noise calibrated before the run with the RDP accountant),
3 seeds. Personalization methods keep their personal part (FedPer's head, Ditto's personal
model, the fine-tuned model) on the client, so only the shared part is privatized.

Two loss-threshold membership-inference audits (Yeom et al. 2018): the attack's advantage
max_t (TPR - FPR) at telling a client's training examples (members) from its test examples
(non-members) by their loss, on the smallest clients:
- against FedAvg's global model on the 500-client federation (client-level DP), smallest 10%;
- against each client's own model where models memorize: 40 MNIST clients training alone
  (``local``, 2 epochs a round) under DP-SGD (``level: sample``, example-level epsilon
  calibrated for the smallest client) or without DP, smallest 25%, 2 seeds.

    flock /tmp/plural-bench.lock .venv/bin/python benchmarks/privacy.py [--quick | --audit-only]

Writes benchmarks/results/privacy.json and prints the tables recorded in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve
from torch.func import functional_call

from plural.experiment import load_config
from plural.runner import build_federation, build_model, run

HERE = Path(__file__).parent
EPSILONS = (math.inf, 8.0, 4.0, 2.0, 1.0)
METHODS: dict[str, dict[str, Any]] = {
    "FedAvg": {"name": "fedavg", "weighting": "uniform"},
    "FedPer": {"name": "fedper", "weighting": "uniform"},
    "Ditto": {"name": "ditto", "weighting": "uniform"},
    "Fine-tuning": {
        "name": "finetune",
        "base": {"name": "fedavg", "weighting": "uniform"},
        "epochs": 3,
        "patience": None,
    },
    "pFedLIA": {
        "name": "pfedlia",
        "weighting": "uniform",
        "warmup_rounds": 10,
        "peers_scored": 0.05,
        "clusters": 4,
    },
}


def config(seed: int, rounds: int, clients: int, samples: int, method: str, eps: float) -> dict:
    out: dict[str, Any] = {
        "name": f"privacy-{method}-{eps}",
        "seed": seed,
        "rounds": rounds,
        "dataset": {"name": "mnist", "max_samples": samples, "standardize": True},
        "partition": {"name": "dirichlet", "num_clients": clients, "alpha": 0.3, "min_samples": 20},
        "split": {"val": 0.15, "test": 0.25},
        "model": {"name": "mlp", "hidden": [16]},
        "algorithm": METHODS[method],
        "train": {"lr": 0.1, "batch_size": 16, "local_epochs": 1},
        "sampling": {"fraction": 0.2, "poisson": True},
        "eval": {"every": rounds, "splits": ["test"]},
        "backend": {"name": "vectorized", "threads_per_worker": 1},
    }
    if math.isfinite(eps):
        out["privacy"] = {"level": "client", "clip": 1.0, "epsilon": eps, "accountant": "rdp"}
    return out


def membership_advantage(cfg: dict, federation: Any, params: dict, share: float = 0.1) -> float:
    """Loss-threshold attack on the smallest ``share`` of clients: max_t (TPR - FPR) of
    "member if loss < t" over their training (members) and test (non-members) examples."""
    model = build_model(load_config(cfg), federation)
    sizes = federation.sizes("train")
    small = np.argsort(sizes, kind="stable")[: max(1, int(share * len(sizes)))]
    losses, members = [], []
    with torch.no_grad():
        for cid in small:
            client = federation.client(int(cid))
            for split, member in ((client.train, 1), (client.test, 0)):
                if len(split) == 0:
                    continue
                out = functional_call(model, params, (split.x,))
                loss = torch.nn.functional.cross_entropy(out, split.y, reduction="none")
                losses.append(loss.numpy())
                members.append(np.full(len(loss), member))
    fpr, tpr, _ = roc_curve(np.concatenate(members), -np.concatenate(losses))
    return float(np.max(tpr - fpr))


def audit_config(seed: int, eps: float, rounds: int) -> dict:
    """The audit's federation: 40 MNIST clients, each training its own MLP alone (``local``)
    for ``rounds`` x 2 epochs, under DP-SGD at example-level ``eps`` (or without DP)."""
    out: dict[str, Any] = {
        "name": f"audit-{eps}",
        "seed": seed,
        "rounds": rounds,
        "dataset": {"name": "mnist", "max_samples": 6000, "standardize": True},
        "partition": {"name": "dirichlet", "num_clients": 40, "alpha": 0.3, "min_samples": 20},
        "split": {"val": 0.15, "test": 0.25},
        "model": {"name": "mlp", "hidden": [64]},
        "algorithm": {"name": "local"},
        "train": {"lr": 0.1, "batch_size": 16, "local_epochs": 2},
        "eval": {"every": rounds, "splits": ["test"]},
        "backend": {"threads_per_worker": 1},
    }
    if math.isfinite(eps):
        out["privacy"] = {"level": "sample", "clip": 1.0, "epsilon": eps}
    return out


def audit_personal_models(seed: int, eps: float, rounds: int, folder: Path) -> dict[str, Any]:
    """Loss-threshold attack on the smallest 25% of clients' own models (members: their
    training examples; non-members: their test examples), with DP-SGD at ``eps``."""
    cfg = audit_config(seed, eps, rounds)
    results = run(cfg, out=folder)
    federation = build_federation(load_config(cfg))
    states = torch.load(folder / "checkpoint.pt", weights_only=False)["store"]
    model = build_model(load_config(cfg), federation)
    sizes = federation.sizes("train")
    small = np.argsort(sizes, kind="stable")[: len(sizes) // 4]
    losses, members = [], []
    with torch.no_grad():
        for cid in small:
            client, params = federation.client(int(cid)), states[int(cid)]
            for split, member in ((client.train, 1), (client.test, 0)):
                out = functional_call(model, params, (split.x,))
                loss = torch.nn.functional.cross_entropy(out, split.y, reduction="none")
                losses.append(loss.numpy())
                members.append(np.full(len(loss), member))
    fpr, tpr, _ = roc_curve(np.concatenate(members), -np.concatenate(losses))
    privacy = results.summary.get("privacy", {})
    return {
        "target_epsilon": eps,
        "seed": seed,
        "advantage": float(np.max(tpr - fpr)),
        "epsilon_max_client": float(privacy.get("epsilon", math.inf)),
        "accuracy": results.summary["test"]["accuracy"]["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 15 rounds, 3 methods")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--samples", type=int, default=30000)
    parser.add_argument("--audit-only", action="store_true", help="only the DP-SGD audit")
    parser.add_argument("--audit-rounds", type=int, default=5)
    parser.add_argument("--audit-seeds", type=int, default=2)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        help="only these methods, without the audits (writes privacy_<methods>.json)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds, rounds, methods = args.seeds, args.rounds, list(METHODS)
    if args.quick:
        seeds, rounds, methods = 1, 15, ["FedAvg", "FedPer", "Fine-tuning"]
        args.audit_rounds = 2
    if args.methods:
        methods, args.audit_seeds = args.methods, 0
    rows, audits, personal = [], [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(min(1, args.audit_seeds) if args.quick else args.audit_seeds):
            for eps in EPSILONS:
                folder = Path(tmp) / f"audit-{seed}-{eps}"
                personal.append(audit_personal_models(seed, eps, args.audit_rounds, folder))
                print(json.dumps(personal[-1]), flush=True)
    if personal:
        print(pd.DataFrame(personal).groupby("target_epsilon", sort=False).mean().round(3))
    for seed in range(0 if args.audit_only else seeds):
        base = config(seed, rounds, args.clients, args.samples, "FedAvg", math.inf)
        federation = build_federation(load_config(base))
        for method in methods:
            for eps in EPSILONS:
                cfg = config(seed, rounds, args.clients, args.samples, method, eps)
                if method == "pFedLIA":
                    cfg["rounds"] = max(rounds, METHODS[method]["warmup_rounds"] + 5)
                t0 = time.perf_counter()
                results = run(cfg, dataset=federation)
                acc = results.summary["test"]["accuracy"]
                privacy = results.summary.get("privacy", {})
                rows.append(
                    {
                        "method": method,
                        "target_epsilon": eps,
                        "seed": seed,
                        "epsilon": float(privacy.get("epsilon", math.inf)),
                        "noise_multiplier": privacy.get("noise_multiplier", 0.0),
                        "mean": acc["mean"],
                        "worst10": acc["worst10"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                _write(args, rows, audits, personal, started)
                if method == "FedAvg":
                    advantage = membership_advantage(cfg, federation, results.server.params)
                    audits.append({"target_epsilon": eps, "seed": seed, "advantage": advantage})
                    print(json.dumps(audits[-1]), flush=True)
    _write(args, rows, audits, personal, started)
    if args.audit_only:
        return
    table = pd.DataFrame(rows)
    summary = table.groupby(["method", "target_epsilon"], sort=False).agg(
        mean=("mean", "mean"),
        mean_sd=("mean", "std"),
        worst10=("worst10", "mean"),
        epsilon=("epsilon", "max"),
        noise=("noise_multiplier", "mean"),
        seconds=("seconds", "mean"),
    )
    print(summary.round(3).to_string())
    if audits:
        audit = pd.DataFrame(audits).groupby("target_epsilon", sort=False)["advantage"]
        print(audit.agg(["mean", "std"]).round(3).to_string())
    print(f"total {time.perf_counter() - started:.0f} s")
    _write(args, rows, audits, personal, started)


def _write(
    args: argparse.Namespace, rows: list, audits: list, personal: list, started: float
) -> None:
    """The results so far (rewritten after every run, so an interrupted run keeps them)."""
    (HERE / "results").mkdir(exist_ok=True)
    name = "privacy_quick.json" if args.quick else "privacy.json"
    name = "privacy_audit.json" if args.audit_only else name
    if args.methods:
        name = "privacy_" + "_".join(m.lower() for m in args.methods) + ".json"
    record = {
        "args": vars(args),
        "runs": rows,
        "audit": audits,
        "audit_personal": personal,
        "seconds": time.perf_counter() - started,
    }
    (HERE / "results" / name).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
