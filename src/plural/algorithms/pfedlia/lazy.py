"""pFedLIA's lazy phase: clients train lazily from theta0 and score each other."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from plural.algorithms.pfedlia.config import PFedLIAConfig
from plural.algorithms.pfedlia.messages import (
    NO_VALIDATION,
    LazyReply,
    LIAClientState,
    ScoreMessage,
    ScoreReply,
    decentral_release,
    decoded,
    lia_state,
    own_row,
    with_lia,
)
from plural.core.aggregators import weighted_mean
from plural.core.algorithm import ModelMessage, RoundContext, ServerState
from plural.core.batched_eval import evaluate_offsets, with_offset
from plural.core.compression import CompressedDelta, compress, decompress
from plural.core.influence import randomized_response, row_epsilon, sign_votes
from plural.core.params import Params, nbytes
from plural.core.sparse_scores import SparseRow
from plural.core.trainer import EvalResult, LocalTrainer
from plural.data.federated import ClientData


class LazyPhase:
    """The lazy phase: lazy training, relaying, scoring and releasing scores (part of
    :class:`~plural.algorithms.pfedlia.algorithm.PFedLIA`)."""

    config: PFedLIAConfig

    def lazy_train(
        self,
        message: ModelMessage,
        state: LIAClientState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[LazyReply, LIAClientState]:
        """Train ``lazy_epochs`` from ``theta0`` and send the (compressed) change."""
        cfg, theta0 = self.config, message.params
        train = client.train
        fit = trainer.fit(theta0, train.x, train.y, rng=rng, epochs=cfg.lazy_epochs, lr=cfg.lazy_lr)
        delta = compress(
            {n: fit.params[n] - theta0[n] for n in theta0}, cfg.compression, cfg.topk_fraction
        )
        row = own_row(state.row) if state is not None else None
        return LazyReply(delta, fit.samples_seen), LIAClientState(theta0, delta, row)

    def score(
        self,
        message: ScoreMessage,
        state: LIAClientState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[ScoreReply, LIAClientState]:
        """Score the relayed lazy models (and its own) on the client's validation split."""
        val = client.val
        if len(val) == 0:
            raise ValueError(NO_VALIDATION.format(client=client.client_id))
        state = state or LIAClientState()
        theta0 = message.theta0 if message.theta0 is not None else state.theta0
        if theta0 is None:
            raise ValueError("pfedlia: a client was asked to score without theta0")
        peers, deltas = list(message.peers), list(message.deltas)
        if state.delta is not None:
            peers.append(client.client_id)
            deltas.append(state.delta)
        base = trainer.evaluate(theta0, val.x, val.y)
        results = evaluate_offsets(trainer, theta0, deltas, val.x, val.y)
        row = (own_row(state.row) or SparseRow.empty()).merged(
            peers, [self.influence(base, result) for result in results]
        )
        evaluated = (len(peers) + 1) * len(val)
        reply = self.reply(row, client.client_id, message.num_clients, rng, evaluated)
        if self.config.votes == "private":  # each released vote is epsilon-DP
            votes = int(torch.count_nonzero(reply.released))
            trainer.meter.released_epsilon += row_epsilon(self.config.epsilon, votes)
        return reply, LIAClientState(row=row)

    def influence(self, base: EvalResult, lazy: EvalResult) -> float:
        """How much the lazy model helps: drop in loss, or gain in accuracy."""
        if self.config.score == "accuracy":
            return lazy.accuracy - base.accuracy
        return base.loss - lazy.loss

    def reply(
        self,
        row: SparseRow,
        client_id: int,
        num_clients: int,
        rng: torch.Generator,
        evaluated: int,
    ) -> ScoreReply:
        """What the client sends about its row (see :class:`ScoreReply`)."""
        cfg = self.config
        if cfg.variant == "decentral":
            return decentral_release(row, client_id, evaluated, cfg.peer_agreement)
        # Central: one entry per client, as the paper's clients send (the bytes counted).
        if cfg.votes == "raw":
            dense = torch.as_tensor(row.dense(num_clients), dtype=torch.float32)
            return ScoreReply(dense, row, evaluated)
        votes = sign_votes(row.dense(num_clients))
        if cfg.votes == "private":
            seed = int(torch.randint(0, 2**62, (1,), generator=rng))
            votes = randomized_response(votes, cfg.epsilon, np.random.default_rng(seed))
        released = torch.as_tensor(np.nan_to_num(votes, nan=0.0), dtype=torch.int8)
        return ScoreReply(released, row, evaluated)

    # ---- server side: the lazy phase -----------------------------------------------------------

    def lazy_phase(
        self, server: ServerState, lazy_clients: list[int], ctx: RoundContext
    ) -> ServerState:
        """Lazy training of ``lazy_clients``, scoring, and (re-)clustering."""
        started = time.perf_counter()
        lia = lia_state(server)
        first = not lia.clustered
        theta0 = server.params if first or lia.theta0 is None else lia.theta0
        broadcast = ModelMessage(theta0)
        lazy = ctx.map("lazy_train", lazy_clients, broadcast)
        deltas = {
            **lia.deltas,
            **{c: r.delta for c, r in zip(lazy_clients, lazy, strict=True)},
        }
        plan = self.scoring_plan(lazy_clients, first, ctx.clients, ctx.rng("lia_peers"))
        fresh = set(lazy_clients)
        messages = {
            i: ScoreMessage(
                None if i in fresh else theta0,
                tuple(peers),
                tuple(deltas[j] for j in peers),
                ctx.num_clients,
            )
            for i, peers in plan.items()
        }
        scorers = sorted(plan)
        replies = ctx.map("score", scorers, per_client=messages)
        scores = lia.scores.with_rows(
            {i: reply.scores for i, reply in zip(scorers, replies, strict=True)}
        )
        released = lia.released
        if self.config.variant == "central":
            released = released.with_rows(
                {
                    i: decoded(reply.released, self.config.votes)
                    for i, reply in zip(scorers, replies, strict=True)
                }
            )
        server = with_lia(server, scores=scores, released=released)
        samples = {c: r.samples for c, r in zip(lazy_clients, lazy, strict=True)}
        start = self.start_from(theta0, deltas, samples)
        server = self.regroup(server, start, first, lazy_clients, scorers, replies, ctx.clients)
        reference = lia.reference.copy()
        reference[lazy_clients] = np.inf
        server = with_lia(
            server,
            clustered=True,
            theta0=theta0,
            deltas=deltas if self.config.recluster == "stale" else {},
            stale=(),
            reference=reference,
        )
        cost = {
            "lazy_clients": len(lazy_clients),
            "scorers": len(scorers),
            "lazy_samples": int(sum(r.samples for r in lazy)),
            "eval_samples": int(sum(r.evaluated for r in replies)),
            "seconds": time.perf_counter() - started,
            "bytes_up": sum(nbytes(r) for r in lazy) + sum(nbytes(r) for r in replies),
            **self.relay_bytes(deltas, plan, messages, nbytes(broadcast) * len(lazy_clients)),
            "model_bytes": nbytes(theta0),
        }
        record = self.record(server, ctx.round, first, lazy_clients, cost, plan, ctx.clients)
        return with_lia(server, records=(*lia_state(server).records, record))

    def start_from(
        self, theta0: Params, deltas: Mapping[int, CompressedDelta], samples: Mapping[int, int]
    ) -> Callable[[Sequence[int]], Params]:
        """The model a cluster (or neighbourhood) of the given members starts from after the
        first lazy phase (``cluster_start``): ``theta0``, or ``theta0`` plus the mean of the
        members' lazy updates, weighted by the samples they trained on under ``weighting:
        samples`` and equally under any other weighting (no exact count is used where the
        counts are private, capped or loss-weighted); that is a FedAvg round of the cluster
        from ``theta0`` with the server's plain average when ``lazy_epochs`` and
        ``lazy_lr`` are the local training's. Members with the same updates share one
        computed model."""
        if self.config.cluster_start == "theta0":
            return lambda members: theta0
        if self.config.weighting != "samples":
            samples = {m: 1 if n > 0 else 0 for m, n in samples.items()}
        made: dict[tuple[int, ...], Params] = {}

        def start(members: Sequence[int]) -> Params:
            held = tuple(sorted(m for m in members if m in deltas and samples.get(m, 0) > 0))
            if not held:
                return theta0
            if held not in made:
                mean = weighted_mean(
                    [(decompress(deltas[m], copy=False), samples[m]) for m in held]
                )
                made[held] = with_offset(theta0, mean)
            return made[held]

        return start

    @staticmethod
    def relay_bytes(
        deltas: Mapping[int, CompressedDelta],
        plan: Mapping[int, list[int]],
        messages: Mapping[int, ScoreMessage],
        broadcast: int,
    ) -> dict[str, int]:
        """Bytes sent down in the lazy phase (``broadcast``: ``theta0`` to the lazy clients,
        then each :class:`ScoreMessage`: its ``theta0`` if any and its lazy updates) and
        those of the relayed updates; each update's size is measured once."""
        size = {j: nbytes(d) for j, d in deltas.items()}
        relayed = {i: sum(size[j] for j in peers) for i, peers in plan.items()}
        down = sum(nbytes(m.theta0) + relayed[i] for i, m in messages.items())
        return {"bytes_down": broadcast + down, "peer_exchange_bytes": sum(relayed.values())}

    def scoring_plan(
        self,
        lazy_clients: list[int],
        first: bool,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> dict[int, list[int]]:
        """Which lazy models each of ``clients`` (those that take part) scores (its own is
        scored from its state).

        First clustering: every client scores all others, or a random ``peers_scored`` share.
        Re-clustering: the re-trained clients score all others (their rows are new) and every
        other client scores the re-trained ones (their columns are new)."""
        plan: dict[int, list[int]] = {}
        members, lazy = np.asarray(clients, dtype=np.int64), set(lazy_clients)
        for k, i in enumerate(clients):
            if first or i in lazy:
                others = np.delete(members, k)  # every other client, in order
                count = self.peer_count(len(others))
                if first and count < len(others):
                    others = np.sort(rng.choice(others, size=count, replace=False))
                plan[i] = others.tolist()
            else:
                plan[i] = list(lazy_clients)
        return plan

    def peer_count(self, others: int) -> int:
        """How many of ``others`` peers a client scores: ``peers_scored`` as a share (<= 1) or
        a count (> 1), at least 1, at most all."""
        share = self.config.peers_scored
        if share == 1 or others == 0:
            return others
        if share < 1:
            return max(1, round(share * others))
        return min(others, round(share))

    def partial_scoring(self) -> bool:
        """Whether clients score only some of their peers (then scores are symmetrized)."""
        return self.config.peers_scored < 1 or self.config.peers_scored > 1
