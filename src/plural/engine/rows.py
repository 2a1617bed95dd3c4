"""The rows of ``metrics.parquet``: one per (round, client, split). Training rows come
from the round's ledger; evaluation rows score every client with each model the algorithm
evaluates it with, in chunks so that only a chunk's models are in memory at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from plural.core.algorithm import Algorithm, ServerState
from plural.core.metrics import summarize
from plural.core.trainer import EvalResult
from plural.engine.backends import Backend, EvalWork, evaluate_client
from plural.engine.context import RoundLedger
from plural.engine.kept_state import KeptEvalWork, evaluate_kept
from plural.engine.store import StateStore

METRIC_COLUMNS = [
    "round",
    "client",
    "split",
    "loss",
    "accuracy",
    "samples",
    "bytes_up",
    "bytes_down",
    "drift",
    "flops",
    "seconds",
]
OPTIONAL_COLUMNS = ["model", "unseen"]
"""Written only by runs that need them: ``model`` names a server-side model (server rows of
clustered methods), ``unseen`` flags clients that never trained (``split.unseen_clients``)."""
EVAL_CHUNK = 256  # clients whose evaluated models are in memory at once


def training_rows(round_index: int, ledger: RoundLedger) -> list[dict[str, Any]]:
    """One 'fit' row per client that took part: local training loss, samples, bytes, the
    client drift ||w_k - w|| between the model it received and the one it sent back, and the
    training FLOPs and seconds of its work (all its phases of the round)."""
    rows = []
    for cid in sorted(set(ledger.up) | set(ledger.down)):
        update = ledger.fit.get(cid)
        rows.append(
            {
                "round": round_index,
                "client": cid,
                "split": "fit",
                "loss": update.loss if update else float("nan"),
                "accuracy": float("nan"),
                "samples": update.num_samples if update else 0,
                "bytes_up": ledger.up[cid],
                "bytes_down": ledger.down[cid],
                "drift": ledger.drift.get(cid, float("nan")),
                "flops": ledger.flops.get(cid, 0.0),
                "seconds": ledger.seconds.get(cid, 0.0),
            }
        )
    return rows


def evaluation_rows(
    round_index: int,
    algorithm: Algorithm,
    server: ServerState,
    store: StateStore,
    backend: Backend,
    num_clients: int,
    splits: tuple[str, ...],
) -> list[dict[str, Any]]:
    rows = []
    for start in range(0, num_clients, EVAL_CHUNK):
        clients = range(start, min(start + EVAL_CHUNK, num_clients))
        rows += _evaluate_chunk(round_index, algorithm, server, store, backend, clients, splits)
    return rows


def _evaluate_chunk(
    round_index: int,
    algorithm: Algorithm,
    server: ServerState,
    store: StateStore,
    backend: Backend,
    clients: Sequence[int],
    splits: tuple[str, ...],
) -> list[dict[str, Any]]:
    if getattr(store, "on_workers", False):  # the workers pick the models, by the states
        kept = [KeptEvalWork(cid, round_index, algorithm, server, splits) for cid in clients]
        scored = [
            (cid, name, results)
            for cid, models in zip(clients, backend.map(evaluate_kept, kept), strict=True)
            for name, results in models
        ]
    else:
        work, labels = [], []
        for cid in clients:
            for model_name, params in algorithm.evaluated(server, store.get(cid), cid).items():
                work.append(EvalWork(cid, round_index, params, splits))  # type: ignore[arg-type]
                labels.append((cid, model_name))
        scored = [
            (cid, name, results)
            for (cid, name), results in zip(labels, backend.map(evaluate_client, work), strict=True)
        ]
    rows = []
    for cid, model_name, results in scored:
        suffix = f"@{model_name}" if model_name else ""
        for split, result in results.items():
            rows.append(evaluation_row(round_index, cid, split + suffix, result))
    return rows


def evaluation_row(round_index: int, client: int, split: str, result: EvalResult) -> dict[str, Any]:
    """One row of ``metrics.parquet`` for a model scored on a split (no traffic, no work)."""
    return {
        "round": round_index,
        "client": client,
        "split": split,
        "loss": result.loss,
        "accuracy": result.accuracy,
        "samples": result.count,
        "bytes_up": 0,
        "bytes_down": 0,
        "drift": float("nan"),
        "flops": 0.0,
        "seconds": 0.0,
    }


def summarize_round(metrics: pd.DataFrame, round_index: int) -> dict[str, Any]:
    """Per-split summaries (accuracy and loss over clients) of one evaluated round."""
    at_round = metrics[metrics["round"] == round_index]
    out: dict[str, Any] = {}
    for split, rows in at_round.groupby("split"):
        if split == "fit":
            continue
        weights = rows["samples"].to_numpy()
        out[str(split)] = {
            "accuracy": summarize(rows["accuracy"].to_numpy(), weights),
            "loss": summarize(rows["loss"].to_numpy(), weights, higher_is_better=False),
        }
    return out
