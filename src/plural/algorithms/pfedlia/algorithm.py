"""pFedLIA's algorithm: state, rounds, client phases and results."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plural.algorithms.clustered import Clustered
from plural.algorithms.pfedlia.config import (
    PFedLIAConfig,
)
from plural.algorithms.pfedlia.lazy import LazyPhase
from plural.algorithms.pfedlia.messages import (
    LIAServerState,
    json_record,
    lia_records,
    lia_state,
    saved_matrix,
)
from plural.algorithms.pfedlia.regroup import Regrouping
from plural.config import ConfigError
from plural.core.algorithm import FederationInfo, ModelMessage, RoundContext, ServerState, Update
from plural.core.params import Params
from plural.core.sparse_scores import SparseMatrix
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS


@ALGORITHMS.register(
    "pfedlia",
    PFedLIAConfig,
    "pFedLIA: clients cluster by lazy influence, then FedAvg per cluster or neighbourhood",
)
class PFedLIA(LazyPhase, Regrouping, Clustered):
    """pFedLIA (Rokvic et al. 2025); see the module docstring."""

    name = "pfedlia"
    config: PFedLIAConfig
    needs_validation = True  # clients score the lazy models on their validation split

    # ---- state -------------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        server = self.start([params], np.zeros(info.num_clients, dtype=np.int64))
        n = info.num_clients
        lia = LIAServerState(
            scores=SparseMatrix.empty(n),
            released=SparseMatrix.empty(n),
            reference=np.full(n, np.inf),
            groups=None if info.groups is None else np.asarray(info.groups),
        )
        return server.with_parts(lia)

    def check(self, experiment: Any) -> None:
        cfg = self.config
        if cfg.warmup_rounds >= experiment.rounds:
            raise ConfigError(
                f"algorithm.warmup_rounds: {cfg.warmup_rounds} warm-up rounds leave no round "
                f"for pFedLIA's clustering (rounds = {experiment.rounds}); use warmup_rounds < "
                "rounds"
            )
        if experiment.split.val <= 0:
            raise ConfigError(
                "split.val: pfedlia scores lazy models on each client's validation split; "
                f"use split.val > 0 (e.g. 0.1), got {experiment.split.val}"
            )

    def model_index(self, server: ServerState, client_id: int) -> int:
        """Which of the cluster models client ``client_id`` trains and is scored with."""
        if not lia_state(server).clustered:
            return 0
        if self.config.variant == "decentral":
            return client_id
        return int(self.assignment(server)[client_id])

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params:
        return self.models(server)[self.model_index(server, client_id)]

    def cluster_assignment(self, server: ServerState) -> np.ndarray:
        """Clusters (central), or the groups of mutual peers (decentral); -1 before the lazy
        phase."""
        if not lia_state(server).clustered:
            return np.full(len(self.assignment(server)), -1, dtype=np.int64)
        return self.assignment(server).copy()

    # ---- round -------------------------------------------------------------------------------

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        lia = lia_state(server)
        if not lia.clustered and ctx.round > self.config.warmup_rounds:
            server = self.lazy_phase(server, list(ctx.clients), ctx)
        elif lia.stale:
            server = self.lazy_phase(server, sorted(lia.stale), ctx)
        return self.train(server, cohort, ctx)

    def train(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        """One FedAvg round inside every cluster (or neighbourhood)."""
        models = self.models(server)
        index = {c: self.model_index(server, c) for c in cohort}
        messages = {c: ModelMessage(models[index[c]]) for c in cohort}
        updates = ctx.map("client_update", cohort, per_client=messages)
        feeds = self.feeds(server, cohort, updates, len(models))
        server = self.step_models(server, feeds, ctx.rng("aggregate"))
        if self.config.recluster == "stale" and lia_state(server).clustered:
            server = self.watch_staleness(server, cohort, updates)
        return server

    def feeds(
        self, server: ServerState, cohort: Sequence[int], updates: Sequence[Update], count: int
    ) -> list[list[Update]]:
        """The updates each model averages: its cluster's (central, warm-up) or, decentral,
        those of the client's peers."""
        lia = lia_state(server)
        if lia.clustered and self.config.variant == "decentral" and lia.peers is not None:
            position = {c: k for k, c in enumerate(cohort)}  # in cohort order, as averaged
            return [
                [
                    updates[k]
                    for k in sorted(position[c] for c in lia.peers.chosen(i) if c in position)
                ]
                for i in range(count)
            ]
        index = [self.model_index(server, c) for c in cohort]
        return [[u for u, k in zip(updates, index, strict=True) if k == j] for j in range(count)]

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Any]:
        """FedAvg's local update; with ``recluster: stale`` the client also reports the
        validation loss of the model it received (metadata, for the staleness check)."""
        update, state = super().client_update(message, state, client, trainer, rng)
        if self.config.recluster != "stale" or len(client.val) == 0:
            return update, state
        loss = trainer.evaluate(message.params, client.val.x, client.val.y).loss
        return dataclasses.replace(update, val_loss=loss), state

    # ---- results -------------------------------------------------------------------------------

    def artifacts(self, server: ServerState) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for record in lia_records(server):  # dense up to DENSE_RECORDS clients (.npy, heatmap)
            tag = f"round{record['round']:04d}"
            out[f"influence_{tag}"] = saved_matrix(record["scores"])
            if "released" in record:
                out[f"released_{tag}"] = saved_matrix(record["released"])
            out[f"lia_{tag}"] = json_record(record)
        return out

    def summary(self, server: ServerState) -> dict[str, Any]:
        records = lia_records(server, dense=False)
        if not records:
            return {}
        costs = [r["cost"] for r in records]
        totals = {
            key: sum(c[key] for c in costs)
            for key in (
                "lazy_samples",
                "eval_samples",
                "seconds",
                "bytes_up",
                "bytes_down",
                "peer_exchange_bytes",
            )
        }
        out = {
            "lazy_phases": len(records),
            "lazy_cost": totals,
            "last_lazy_phase": json_record(records[-1]),
        }
        if "neighbourhoods" in records[-1]:  # decentral: purity and recall, not clusters
            out["neighbourhoods"] = records[-1]["neighbourhoods"]
        return out
