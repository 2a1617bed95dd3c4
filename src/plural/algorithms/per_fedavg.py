"""Per-FedAvg (Fallah, Mokhtari & Ozdaglar 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach", NeurIPS 2020; arXiv
2002.07948).

FedAvg of a meta-model: a model that is good after one step of local gradient descent. Each
local step of a client, on its minibatch split into independent parts ``D``, ``D'`` (and
``D''``), moves the model ``w`` by ``-beta`` times

* first-order (``variant: fo``): ``grad f(w - alpha grad f(w, D), D')``;
* Hessian-free (``variant: hf``): the same minus ``alpha H(w, D'') grad f(w - alpha grad
  f(w, D), D')``, with the Hessian-vector product computed exactly by a second backward pass
  (the paper approximates it by finite differences; neither forms the Hessian).

The steps are the trainer's (its minibatch schedule, momentum, clipping), driven by an
objective whose gradient is the update above; the server averages as FedAvg does. When the
engine evaluates, every client adapts the current global model with ``inner_steps`` steps of
size ``alpha`` on its own training minibatches (the paper's evaluation: one step) and is
scored with the result; ``test@global`` rows score the meta-model itself.

Defaults: one inner step and ``alpha = 0.01`` (the paper's). ``beta`` is the local
learning rate, so it defaults to ``train.lr`` as every method's local steps do; the paper's
0.001 goes with its 1,000 rounds (with it, 10 rounds on label-skewed digits leave the model
at chance). With ``inner_steps: 0`` it is exactly FedAvg at learning rate ``beta``
(FedAvg itself with ``beta: null``), and clients are evaluated with the global model. Each
minibatch is split into 2 (fo) or 3 (hf) near-equal parts in its drawn order; a minibatch
smaller than that is used whole for every part. ``hf`` supports one inner step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call

from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import setting
from plural.core.algorithm import ModelMessage, RoundContext, ServerState
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer, WorkBudget
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

Variant = Literal["fo", "hf"]


@dataclasses.dataclass(frozen=True)
class PerFedAvgConfig(AveragingConfig):
    variant: Variant = setting(
        "fo", help="'fo': first-order meta-gradient; 'hf': with the Hessian-vector correction"
    )
    alpha: float = setting(0.01, help="step size of the inner (personalization) step", gt=0)
    beta: float | None = setting(
        None, help="step size of the meta-update (null: train.lr, as FedAvg's local steps)", gt=0
    )
    inner_steps: int = setting(
        1,
        help="inner gradient steps, in training and to personalize at evaluation "
        "(0 = FedAvg; the paper uses 1)",
        ge=0,
    )

    def __post_init__(self) -> None:
        if self.variant == "hf" and self.inner_steps > 1:
            raise ValueError("variant 'hf' takes one inner step; set inner_steps to 0 or 1")


Loss = Callable[..., torch.Tensor]


def _parts(x: torch.Tensor, y: torch.Tensor, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` near-equal consecutive parts of a minibatch (the whole batch for each when it
    is too small to split)."""
    if len(y) < count:
        return [(x, y)] * count
    return list(zip(torch.tensor_split(x, count), torch.tensor_split(y, count), strict=True))


@dataclasses.dataclass(frozen=True)
class MetaObjective:
    """A minibatch loss whose gradient is Per-FedAvg's meta-gradient (module docstring)."""

    alpha: float
    inner_steps: int
    hessian_free: bool
    loss_fn: Loss

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = _parts(x, y, 3 if self.hessian_free else 2)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        adapted = params
        for _ in range(self.inner_steps):
            inner = self._loss(model, adapted, *parts[0])
            grads = torch.autograd.grad(inner, list(adapted.values()), allow_unused=True)
            adapted = {
                n: p if g is None else p - self.alpha * g.detach()
                for (n, p), g in zip(adapted.items(), grads, strict=True)
            }
        outer = self._loss(model, adapted, *parts[1])
        if not self.hessian_free or self.inner_steps == 0:
            return outer
        return outer - self.alpha * self._curvature(model, params, adapted, outer, parts[2])

    def _loss(
        self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return self.loss_fn(functional_call(model, params, (x,)), y)

    def _curvature(
        self,
        model: nn.Module,
        params: dict[str, torch.Tensor],
        adapted: dict[str, torch.Tensor],
        outer: torch.Tensor,
        batch: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``<v, grad f(w, D'')>`` with ``v = grad f(adapted, D')`` held constant: its gradient
        in ``w`` is the Hessian-vector product ``H(w, D'') v``."""
        names = list(params)
        v = torch.autograd.grad(
            outer, [adapted[n] for n in names], retain_graph=True, allow_unused=True
        )
        grads = torch.autograd.grad(
            self._loss(model, params, *batch), [params[n] for n in names], create_graph=True
        )
        terms = [(g * d.detach()).sum() for g, d in zip(grads, v, strict=True) if d is not None]
        return torch.stack(terms).sum() if terms else outer.new_zeros(())


@ALGORITHMS.register(
    "per_fedavg",
    PerFedAvgConfig,
    "Per-FedAvg: FedAvg of a MAML meta-model, one local step personalizes (fo / hf)",
)
class PerFedAvg(FedAvg):
    """Per-FedAvg (Fallah et al. 2020): see the module docstring."""

    name = "per_fedavg"
    config: PerFedAvgConfig

    def local_fit(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        """The trainer's steps on the meta-objective, of size ``beta`` (with no inner step,
        FedAvg's plain fit)."""
        cfg = self.config
        objective = None
        if cfg.inner_steps > 0:
            objective = MetaObjective(
                cfg.alpha, cfg.inner_steps, cfg.variant == "hf", trainer.loss_fn
            )
        train = client.train
        return trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            objective=objective,
            epochs=budget.epochs,
            steps=budget.steps,
            lr=cfg.beta,
        )

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        server = super().round(server, cohort, ctx)
        if ctx.evaluating and self.config.inner_steps > 0:
            ctx.map("personalize", range(ctx.num_clients), ModelMessage(server.params))
        return server

    def personalize(
        self,
        message: ModelMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[None, Params]:
        """``inner_steps`` steps of size ``alpha`` from the global model on the client's own
        training minibatches: the model that evaluates the client."""
        train = client.train
        fit = trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            steps=self.config.inner_steps,
            lr=self.config.alpha,
        )
        return None, fit.params

    def personalized(self, server: ServerState, state: Params | None, client_id: int) -> Params:
        if state is None or self.config.inner_steps == 0:
            return server.params
        return state

    def evaluated(
        self, server: ServerState, state: Params | None, client_id: int
    ) -> dict[str, Params]:
        if self.config.inner_steps == 0:
            return {"": server.params}
        return {"": self.personalized(server, state, client_id), "global": server.params}
