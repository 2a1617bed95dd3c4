"""Natural text federations: Shakespeare by role, languages as groups, LoRA on MiniLM.

Three parts, each writing ``results/text_<part>.json`` as its runs finish:

* ``shakespeare``: LEAF's recipe (roles as clients, 80-character windows, the 8/2x256 LSTM,
  10 clients a round, lr 0.8, batch 10, one local epoch, 90/10 split in time order), scaled
  to this CPU by a random subset of roles and the first windows of each. FedAvg against
  personalised methods on the same federation.
* ``languages``: fortunes in 9 languages, 4 clients each, next-byte prediction with a small
  GRU; how well clustered methods recover the language (ARI against the true groups).
* ``topics``: the English fortune categories split over clients by Dirichlet label skew;
  the frozen MiniLM encoder with LoRA adapters and a head under FedAvg, FedPer and Local.

    .venv/bin/python benchmarks/text.py shakespeare [--rounds 40] [--clients 40]
    .venv/bin/python benchmarks/text.py languages [--rounds 12]
    .venv/bin/python benchmarks/text.py topics [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import plural
from plural.runner import build_federation

HERE = Path(__file__).parent


def shakespeare_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "shakespeare",
        "seed": args.seed,
        "rounds": args.rounds,
        "dataset": {"name": "shakespeare", "max_samples_per_client": args.samples},
        "partition": {"name": "natural", "min_samples": 64, "max_clients": args.clients},
        "split": {"val": 0.0, "test": 0.1},
        "model": {
            "name": "char_rnn",
            "hidden": args.hidden,
            "layers": args.layers,
            "cell": args.cell,
        },
        "train": {"lr": 0.8, "batch_size": 10, "local_epochs": 1},
        "sampling": {"count": 10},
        "eval": {"every": 10, "splits": ["test"]},
    }


SHAKESPEARE_METHODS: dict[str, dict[str, Any]] = {
    "FedAvg": {"name": "fedavg"},
    "FedAvg + fine-tuning (1 epoch)": {"name": "finetune", "epochs": 1},
    "FedPer (personal output layer)": {"name": "fedper"},
    "Local": {"name": "local"},
}


def languages_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "languages",
        "seed": args.seed,
        "rounds": args.rounds,
        "dataset": {
            "name": "fortunes",
            "clients_per_language": 4,
            "chars_per_client": 1500,
            "seq_len": 40,
        },
        "partition": {"name": "natural"},
        "split": {"val": 0.2, "test": 0.2},
        "model": {"name": "char_rnn", "hidden": 64, "layers": 1, "cell": "gru"},
        "train": {"lr": 0.5, "batch_size": 32, "local_epochs": 1},
        "eval": {"every": args.rounds, "splits": ["test"]},
    }


LIA = {"warmup_rounds": 5, "lazy_epochs": 2}
LANGUAGE_METHODS: dict[str, dict[str, Any]] = {
    "pFedLIA (OPTICS)": {"name": "pfedlia", **LIA},
    "pFedLIA (9 clusters)": {"name": "pfedlia", **LIA, "clusters": 9},
    "IFCA (k = 9)": {"name": "ifca", "k": 9},
    "CFL": {"name": "cfl"},
    "Oracle (FedAvg per language)": {"name": "oracle"},
    "FedAvg": {"name": "fedavg"},
    "Local": {"name": "local"},
}


def topics_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "topics",
        "seed": args.seed,
        "rounds": args.rounds,
        "dataset": {"name": "fortune_topics", "max_per_class": 150, "max_tokens": 48},
        "partition": {"name": "dirichlet", "num_clients": 10, "alpha": 0.5, "min_samples": 40},
        "split": {"val": 0.1, "test": 0.25},
        "model": {"name": "minilm_lora", "rank": 8},
        "train": {"lr": 0.5, "batch_size": 16, "local_epochs": 1},
        "eval": {"every": args.rounds, "splits": ["test"]},
    }


TOPIC_METHODS: dict[str, dict[str, Any]] = {
    "FedAvg (LoRA + head shared)": {"name": "fedavg"},
    "FedPer (LoRA shared, head personal)": {"name": "fedper"},
    "Local (LoRA + head per client)": {"name": "local"},
}

PARTS: dict[str, tuple[Callable[[argparse.Namespace], dict[str, Any]], dict[str, Any]]] = {
    "shakespeare": (shakespeare_config, SHAKESPEARE_METHODS),
    "languages": (languages_config, LANGUAGE_METHODS),
    "topics": (topics_config, TOPIC_METHODS),
}
DEFAULT_ROUNDS = {"shakespeare": 40, "languages": 12, "topics": 10}


def grouping(results: plural.Results) -> dict[str, Any]:
    """The last recorded cluster assignment and its ARI against the languages, if any."""
    diagnostics = results.diagnostics
    if "ari" not in diagnostics or diagnostics["ari"].isna().all():
        return {}
    last = diagnostics.dropna(subset=["ari"]).iloc[-1]
    return {
        "ari": float(last["ari"]),
        "clusters": int(last["clusters"]),
        "assignment": list(last["assignment"]),
    }


def run_method(base: dict[str, Any], label: str, algorithm: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    results = plural.run({**base, "algorithm": algorithm}, progress=False)
    summary = results.summary
    accuracy = summary["test"]["accuracy"]
    row = {
        "method": label,
        "algorithm": algorithm,
        "mean": accuracy["mean"],
        "weighted_mean": accuracy["weighted_mean"],
        "worst10": accuracy["worst10"],
        "std": accuracy["std"],
        "MB": summary["bytes"]["total"] / 1e6,
        "seconds": time.perf_counter() - started,
        "clients": accuracy["clients"],
        **grouping(results),
    }
    extra = f"  ARI {row['ari']:.3f} ({row['clusters']} clusters)" if "ari" in row else ""
    print(
        f"{label:<38} mean {row['mean']:.3f}  weighted {row['weighted_mean']:.3f}  "
        f"worst10 {row['worst10']:.3f}  {row['MB']:8.1f} MB  {row['seconds']:5.0f} s{extra}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clients", type=int, default=40, help="shakespeare: roles kept")
    parser.add_argument("--samples", type=int, default=600, help="shakespeare: windows per role")
    parser.add_argument("--hidden", type=int, default=256, help="shakespeare: RNN width")
    parser.add_argument("--layers", type=int, default=2, help="shakespeare: RNN layers")
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm", help="shakespeare")
    parser.add_argument("--suffix", default="", help="appended to the results file name")
    parser.add_argument("--only", nargs="*", default=None, help="method labels to run")
    args = parser.parse_args()
    args.rounds = args.rounds or DEFAULT_ROUNDS[args.part]
    torch.set_num_threads(2)
    make_config, methods = PARTS[args.part]
    base = make_config(args)
    federation = build_federation(plural.load_config({**base, "algorithm": {"name": "fedavg"}}))
    sizes = federation.sizes("train")
    print(
        f"{args.part}: {federation.num_clients} clients, train samples per client "
        f"min {sizes.min()} median {int(sorted(sizes)[len(sizes) // 2])} max {sizes.max()}",
        flush=True,
    )
    out = HERE / "results" / f"text_{args.part}{args.suffix}.json"
    record: dict[str, Any] = {
        "config": base,
        "clients": federation.num_clients,
        "train_samples": sizes.tolist(),
        "torch_threads": torch.get_num_threads(),
        "rows": [],
    }
    for label, algorithm in methods.items():
        if args.only and label not in args.only:
            continue
        record["rows"].append(run_method(base, label, algorithm))
        out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
