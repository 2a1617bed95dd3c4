"""What the clients never trained on: the server's test set and unseen clients.

The server set (``split.server``): the server's model(s) scored on it.

FedAvg-style papers score the global model on the dataset's official test set each round
(McMahan et al. 2017). Each evaluated round then writes one row per server-side model, with
``split == "server"`` and ``client == -1``: the global model, or for clustered methods one
row per cluster model, named in the ``model`` column. Methods without a server-side model
(each client's own model only: Local, FedProto, MOCHA) write none; an algorithm says so with
``has_server_model = False``, and names its models with ``server_models(server)``. Methods
whose server holds only part of the network (the shared body of FedPer, FedRep, FedRoD, ...;
pFedLoRA's adapters; pFedHN's hypernetwork) have no server model to score either: they
write no server rows, and the run warns once that the server set goes unused.

Unseen clients (``split.unseen_clients``) are never sampled; at each evaluation they are
served as the method serves a client it has no state for (a newcomer), and their rows carry
``unseen == True``. ``summary.json`` summarises them apart, as ``test_unseen`` (and
``val_unseen``, ...), leaving the usual sections to the clients that trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from plural.core.algorithm import Algorithm, OnClient, ServerState, full_params
from plural.core.rng import torch_generator
from plural.core.trainer import Mixture
from plural.data.federated import ClientData
from plural.data.splits import ServerSet
from plural.engine.backends import WorkerEnv
from plural.engine.rows import OPTIONAL_COLUMNS, evaluation_row

SERVER_SPLIT = "server"
SERVER_CLIENT = -1


def server_models(algorithm: Algorithm, server: ServerState) -> dict[str, Any]:
    """The models the server holds, by name (``""``: the one global model)."""
    if not getattr(algorithm, "has_server_model", True):
        return {}
    named = getattr(algorithm, "server_models", None)
    if callable(named):
        return dict(named(server))
    return {"": server.params}


def server_rows(
    round_index: int,
    algorithm: Algorithm,
    server: ServerState,
    env: WorkerEnv,
    server_set: ServerSet,
) -> list[dict[str, Any]]:
    """One metrics row per server-side model on the server set (none for heterogeneous
    model families, whose clients share no architecture)."""
    if env.models.heterogeneous:
        return []
    trainer = env.trainer
    x, y = server_set.x, server_set.y
    rows = []
    models = server_models(algorithm, server)
    complete = {name: p for name, p in models.items() if _is_whole_model(p, trainer.model)}
    if len(complete) < len(models):
        warnings.warn(
            f"split.server: {algorithm.name}'s server holds no complete model (only the "
            "parts its clients share), so there is nothing to score on the server set; "
            "its clients' own splits are scored as usual",
            stacklevel=2,
        )
    for name, params in complete.items():
        if isinstance(params, Mixture):
            result = trainer.evaluate_mixture(params, x, y, env.eval_batch_size)
        else:
            model = full_params(params, trainer) if isinstance(params, OnClient) else params
            result = trainer.evaluate(model, x, y, env.eval_batch_size)
        row = evaluation_row(round_index, SERVER_CLIENT, SERVER_SPLIT, result)
        if name:
            row["model"] = name
        rows.append(row)
    return rows


def _is_whole_model(params: Any, model: Any) -> bool:
    """Whether ``params`` are every entry of ``model``'s state, shape for shape (or a mixture
    or a model the clients assemble, which are whole by construction)."""
    if isinstance(params, Mixture | OnClient):
        return True
    expected = model.state_dict()
    return set(params) == set(expected) and all(
        tuple(params[k].shape) == tuple(v.shape) for k, v in expected.items()
    )


def metric_columns(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """``columns``, plus ``model`` (and ``unseen``) when some row names one."""
    extra = [c for c in OPTIONAL_COLUMNS if any(c in row for row in rows)]
    return [*columns, *extra]


def seen_clients(
    num_clients: int, unseen: Sequence[int], available: list[int] | None
) -> list[int] | None:
    """The clients a round may sample: ``available`` (all when None) without the unseen."""
    if not unseen:
        return available
    left_out = set(unseen)
    pool = range(num_clients) if available is None else available
    return [c for c in pool if c not in left_out]


def mark_unseen(rows: list[dict[str, Any]], unseen: Sequence[int]) -> list[dict[str, Any]]:
    """Set each row's ``unseen`` flag (only when the run has unseen clients)."""
    if unseen:
        left_out = set(unseen)
        for row in rows:
            row["unseen"] = row["client"] in left_out
    return rows


def split_summaries(
    metrics: pd.DataFrame,
    round_index: int,
    summarize_round: Callable[[pd.DataFrame, int], dict[str, Any]],
) -> dict[str, Any]:
    """Per-split summaries of the clients that trained, plus ``<split>_unseen`` sections for
    the unseen clients when the run has some."""
    if "unseen" not in metrics.columns:
        return summarize_round(metrics, round_index)
    flags = metrics["unseen"].fillna(False).astype(bool)
    sections = summarize_round(metrics[~flags], round_index)
    unseen = summarize_round(metrics[flags], round_index)
    return {**sections, **{f"{split}_unseen": value for split, value in unseen.items()}}


def newcomer_rows(
    rows: list[dict[str, Any]],
    algorithm: Algorithm,
    server: ServerState,
    env: WorkerEnv,
    unseen: Sequence[int],
    round_index: int,
    splits: Sequence[str],
) -> list[dict[str, Any]]:
    """``rows`` with the unseen clients scored as the method serves a newcomer, where that
    differs from serving a client without state: methods with several server models
    (clustered methods) give it the model with the lowest loss on its training split (the
    cluster choice of IFCA, Ghosh et al. 2020); methods with a ``newcomer`` step (a new
    personal head for FedPer-style methods, mixture weights for FedEM, an embedding for
    pFedHN, FedFomo's first combination) run it on its training split. Other methods
    already serve a client without state as a newcomer, and their rows are kept."""
    models = server_models(algorithm, server)
    step = getattr(algorithm, "newcomer", None)
    clustered = len(models) >= 2
    if not unseen or env.models.heterogeneous or not (clustered or callable(step)):
        return rows
    served: dict[int, list[dict[str, Any]]] = {}
    for cid in unseen:
        data = env.federation.client(cid, round_index)
        if clustered:
            chosen = _lowest_loss(models, data, env)
        else:
            rng = torch_generator(env.seed, round_index, "newcomer", cid)
            chosen = step(server, data, env.trainer, rng)  # type: ignore[misc]
        if chosen is not None:  # None: the method serves it as a client without state
            served[cid] = [_score(chosen, data, split, cid, round_index, env) for split in splits]
    kept = [r for r in rows if not (r["client"] in served and r["split"] in splits)]
    return kept + [row for cid in served for row in served[cid]]


def _lowest_loss(models: dict[str, Any], data: ClientData, env: WorkerEnv) -> Any:
    losses = {
        name: env.trainer.evaluate(params, data.train.x, data.train.y, env.eval_batch_size).loss
        for name, params in models.items()
    }
    return models[min(losses, key=lambda name: losses[name])]


def _score(
    params: Any, data: ClientData, split: str, cid: int, round_index: int, env: WorkerEnv
) -> dict[str, Any]:
    part = data.split(split)  # type: ignore[arg-type]
    trainer = env.trainer
    if isinstance(params, Mixture):
        result = trainer.evaluate_mixture(params, part.x, part.y, env.eval_batch_size)
    else:
        result = trainer.evaluate(params, part.x, part.y, env.eval_batch_size)
    return evaluation_row(round_index, cid, split, result)
