"""Personalization methods side by side on one pathological MNIST federation.

20 clients with 2 label shards each (FedAvg's pathological split), an MLP with batch norm
(so FedBN applies), the same rounds and local work for every method. Each method is scored
with the model it personalises for each client, on that client's own test split.

    .venv/bin/python benchmarks/personalization.py [--rounds 20] [--max-samples 20000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import plural

HERE = Path(__file__).parent
METHODS: dict[str, dict[str, Any]] = {
    "FedAvg": {"name": "fedavg"},
    "Local": {"name": "local"},
    "Fine-tuning (FedAvg + 5 epochs)": {"name": "finetune", "epochs": 5},
    "FedPer": {"name": "fedper"},
    "FedRep": {"name": "fedrep"},
    "FedBN": {"name": "fedbn"},
    "Shared body (MTL)": {"name": "shared_body"},
    "Ditto": {"name": "ditto"},
    "APFL": {"name": "apfl"},
    "pFedMe": {"name": "pfedme"},
}


def config(rounds: int, max_samples: int | None) -> dict[str, Any]:
    return {
        "name": "personalization",
        "seed": 0,
        "rounds": rounds,
        "dataset": {"name": "mnist", "max_samples": max_samples},
        "partition": {"name": "pathological", "num_clients": 20, "shards_per_client": 2},
        "split": {"val": 0.1, "test": 0.2},
        "model": {"name": "mlp", "hidden": [200], "batch_norm": True},
        "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "local_epochs": 1},
        "eval": {"every": rounds, "splits": ["test"]},
        "backend": {"threads_per_worker": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-samples", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = config(args.rounds, args.max_samples)
    rows = []
    for label, algorithm in METHODS.items():
        if algorithm["name"] not in plural.ALGORITHMS:
            print(f"skipping {label}: not registered")
            continue
        started = time.perf_counter()
        summary = plural.run({**base, "algorithm": algorithm}).summary
        accuracy = summary["test"]["accuracy"]
        rows.append(
            {
                "method": label,
                "algorithm": algorithm,
                "mean": accuracy["mean"],
                "worst10": accuracy["worst10"],
                "std": accuracy["std"],
                "MB": summary["bytes"]["total"] / 1e6,
                "seconds": time.perf_counter() - started,
            }
        )
        print(
            f"{label:<34} mean {accuracy['mean']:.3f}  worst10 {accuracy['worst10']:.3f}  "
            f"std {accuracy['std']:.3f}  {rows[-1]['MB']:8.1f} MB  {rows[-1]['seconds']:5.0f} s"
        )
    out = HERE / "results" / "personalization.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"config": base, "runs": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
