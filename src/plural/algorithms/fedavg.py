"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): clients run local SGD from the global model; the server averages.

:class:`AveragingConfig` holds what every averaging algorithm shares: how clients are
weighted, the server optimizer applied to the averaged update (Reddi et al. 2021), and
simulated stragglers (Li et al. 2020). FedProx, SCAFFOLD and q-FedAvg subclass
:class:`FedAvg` and change only their hooks: extra local loss terms, what a client adds to its
update, and how the server turns updates into its next model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from plural.config import setting
from plural.core.aggregation import AggregationState, ChainAccumulator
from plural.core.aggregators import WEIGHTINGS_HELP, Weighting, aggregation_weights, report_count
from plural.core.algorithm import Algorithm, ModelMessage, RoundContext, ServerState, Update
from plural.core.params import Params
from plural.core.server_opt import (
    AveragingState,
    ServerOptimizer,
    ServerOptimizerSettings,
    averaging,
    server_step,
)
from plural.core.trainer import FitResult, LocalTrainer, LossTerm, WorkBudget
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class AveragingConfig:
    """Settings shared by every algorithm that averages client models."""

    weighting: Weighting = setting("samples", help=WEIGHTINGS_HELP)
    weight_cap: float = setting(
        0.2, help="'capped': the largest share of the total weight one client may get", gt=0, le=1
    )
    count_bucket: int = setting(
        1, help="'private_samples': clients round their count up to a multiple of this", ge=1
    )
    count_noise: float = setting(
        0.0, help="'private_samples': scale of the Laplace noise clients add to their count", ge=0
    )
    fairness_q: float = setting(1.0, help="'fair': exponent of the client's loss", ge=0)
    server_optimizer: ServerOptimizer = setting(
        "sgd",
        help="update of the global model from the averaged client model (Reddi et al. 2021): "
        "'sgd' (server_lr 1 = plain averaging), 'momentum' (FedAvgM), 'adam', 'yogi', 'adagrad'",
    )
    server_lr: float = setting(1.0, help="server learning rate", gt=0)
    server_momentum: float = setting(0.9, help="'momentum': server momentum", ge=0, lt=1)
    beta1: float = setting(0.9, help="adam/yogi/adagrad: first-moment decay", ge=0, lt=1)
    beta2: float = setting(0.99, help="adam/yogi: second-moment decay", ge=0, le=1)
    tau: float = setting(1e-3, help="adam/yogi/adagrad: adaptivity (added to sqrt(v))", gt=0)
    initial_accumulator: float = setting(
        0.0, help="adam/yogi/adagrad: initial second moment v", ge=0
    )
    stragglers: float = setting(
        0.0,
        help="fraction of sampled clients that are slow this round and do only a random "
        "1..E of their local epochs (or steps): systems heterogeneity, as in FedProx",
        ge=0,
        le=1,
    )
    drop_stragglers: bool = setting(
        False,
        help="discard stragglers' partial work (FedAvg in the FedProx paper) instead of using it",
    )

    def server_settings(self) -> ServerOptimizerSettings:
        return ServerOptimizerSettings(
            self.server_optimizer,
            self.server_lr,
            self.server_momentum,
            self.beta1,
            self.beta2,
            self.tau,
            self.initial_accumulator,
        )


FedAvgConfig = AveragingConfig


@ALGORITHMS.register("fedavg", FedAvgConfig, "FedAvg: local SGD, weighted model averaging")
class FedAvg(Algorithm):
    """Federated averaging, and the base of every averaging algorithm."""

    name = "fedavg"
    config: AveragingConfig

    # ---- client side -------------------------------------------------------------------------

    def loss_terms(self, message: Any, state: Any) -> list[LossTerm]:
        """Extra local loss terms (none for FedAvg)."""
        return []

    def work_budget(self, trainer: LocalTrainer, rng: torch.Generator) -> WorkBudget:
        """Full work, or, for a straggler, a random 1..E epochs (or 1..S steps)."""
        if self.config.stragglers <= 0:
            return WorkBudget()
        if float(torch.rand((), generator=rng)) >= self.config.stragglers:
            return WorkBudget()
        train = trainer.config
        full = train.local_steps if train.local_steps is not None else train.local_epochs
        fraction = float(torch.rand((), generator=rng, dtype=torch.float64))
        partial = 1 + min(int(fraction * full), full - 1) if full > 0 else 0
        if train.local_steps is not None:
            return WorkBudget(steps=partial, complete=partial >= full)
        return WorkBudget(epochs=partial, complete=partial >= full)

    def client_update(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Any]:
        train = client.train
        budget = self.work_budget(trainer, rng)
        start_loss = self._start_loss(message.params, client, trainer)
        fit = self.local_fit(message, state, client, trainer, budget, rng)
        update = Update(
            len(train),
            fit.params,
            loss=fit.mean_loss,
            reported_samples=self._report(len(train), trainer, rng),
            start_loss=start_loss,
            complete=budget.complete,
        )
        return self.finish_update(update, fit, message, state, trainer)

    def local_fit(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        """The client's local training from the received model (FedAvg: the trainer's SGD
        with the algorithm's extra loss terms)."""
        train = client.train
        return trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            loss_terms=self.loss_terms(message, state),
            epochs=budget.epochs,
            steps=budget.steps,
        )

    def finish_update(
        self, update: Update, fit: FitResult, message: Any, state: Any, trainer: LocalTrainer
    ) -> tuple[Update, Any]:
        """Add algorithm-specific payload and the client's new state (FedAvg: nothing)."""
        return update, state

    def _start_loss(self, params: Params, client: ClientData, trainer: LocalTrainer) -> float:
        if self.config.weighting != "fair":
            return float("nan")
        return trainer.evaluate(params, client.train.x, client.train.y).loss

    def _report(self, n: int, trainer: LocalTrainer, rng: torch.Generator) -> float | None:
        """``private_samples``' noised count; its epsilon goes on the privacy meter."""
        cfg = self.config
        if cfg.weighting != "private_samples":
            return None
        if cfg.count_noise > 0:  # sensitivity: the bucket; Laplace scale: count_noise
            trainer.meter.released_epsilon += cfg.count_bucket / cfg.count_noise
        return report_count(n, cfg.count_bucket, cfg.count_noise, rng)

    # ---- server side -------------------------------------------------------------------------

    def used_updates(self, updates: list[Update]) -> list[Update]:
        """The updates the server uses (stragglers' partial work dropped if so configured)."""
        if not self.config.drop_stragglers:
            return updates
        return [u for u in updates if u.complete]

    def weights(self, updates: list[Update]) -> np.ndarray:
        counts = [
            u.num_samples if u.reported_samples is None else u.reported_samples for u in updates
        ]
        cfg = self.config
        return aggregation_weights(
            counts,
            cfg.weighting,
            cap=cfg.weight_cap,
            losses=[u.start_loss for u in updates],
            q=cfg.fairness_q,
        )

    def combine(
        self,
        server: ServerState,
        updates: list[Update],
        rng: np.random.Generator | None = None,
        state: AggregationState | None = None,
    ) -> tuple[Params, AggregationState]:
        """The model the server moves towards, through the run's aggregation chain (plain:
        the weighted mean of the client models), and the chain's new state."""
        models = [u.params for u in updates]
        weights = self.weights(updates)
        reference = server.params
        if not self.aggregation.plain:
            reference = {name: server.params[name] for name in models[0]}
        return self.aggregation.combine(reference, models, weights, rng, state)

    def target(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator | None = None
    ) -> Params:
        """The model the server moves towards (see :meth:`combine`)."""
        return self.combine(server, updates, rng, averaging(server).aggregation)[0]

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        used = self.used_updates(updates)
        if not used:
            return server  # every participant was a dropped straggler
        target, chain_state = self.combine(server, used, rng, averaging(server).aggregation)
        return self.finish_aggregate(self._step(server, target, chain_state), used)

    # ---- streaming ---------------------------------------------------------------------------

    def streams_updates(self) -> bool:
        """Whether :meth:`round` folds each update into the aggregate as it arrives: when the
        server-side hooks are FedAvg's own and each client's weight depends on that client
        alone. 'capped' weighting (its shares need every count) and subclasses that override
        ``aggregate``, ``combine``, ``target``, ``weights``, ``used_updates`` or
        ``finish_aggregate`` (q-FedAvg, SCAFFOLD, FedEM, clustered methods) receive the list
        of updates as before. A reducer that needs every update (a median, Krum) streams
        the replies but its accumulator holds the updates until the end."""
        own = all(getattr(type(self), hook) is getattr(FedAvg, hook) for hook in _SERVER_HOOKS)
        return own and self.config.weighting != "capped"

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        """One round; with :meth:`streams_updates`, replies are folded as they arrive."""
        stream = getattr(ctx, "stream", None)
        if stream is None or not self.streams_updates():
            return super().round(server, cohort, ctx)
        updates = stream("client_update", cohort, self.broadcast(server))
        return self.aggregate_stream(server, updates, ctx.rng("aggregate"))

    def aggregate_stream(
        self, server: ServerState, updates: Iterable[Update], rng: np.random.Generator
    ) -> ServerState:
        """:meth:`aggregate`, folding ``updates`` one at a time through the aggregation
        chain's accumulator (in the same order, so the result is the same bit for bit); no
        update is kept (see :meth:`streams_updates` for when this applies)."""
        accumulator: ChainAccumulator | None = None
        for update in updates:
            if self.config.drop_stragglers and not update.complete:
                continue
            assert update.params is not None
            if accumulator is None:
                reference = server.params
                if not self.aggregation.plain:
                    reference = {name: server.params[name] for name in update.params}
                accumulator = self.aggregation.accumulator(reference, averaging(server).aggregation)
            accumulator.add(update.params, float(self.weights([update])[0]))
        if accumulator is None:
            return server  # every participant was a dropped straggler
        return self._step(server, *accumulator.result(rng))

    def _step(
        self, server: ServerState, target: Params, chain_state: AggregationState
    ) -> ServerState:
        """The server optimizer's step towards ``target``, with the chain's new state."""
        kept = averaging(server)
        new_params, opt_state = server_step(
            server.params, target, kept.server_opt, self.config.server_settings()
        )
        part = AveragingState(opt_state or kept.server_opt, chain_state or kept.aggregation)
        return server.with_parts(part, params=new_params)

    def finish_aggregate(self, server: ServerState, updates: list[Update]) -> ServerState:
        """Update algorithm-specific server state after the model step (FedAvg: nothing)."""
        return server


_SERVER_HOOKS = ("aggregate", "combine", "target", "weights", "used_updates", "finish_aggregate")
"""FedAvg's server-side hooks: a subclass that overrides one gets the list of updates."""
