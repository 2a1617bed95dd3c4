"""pFedMe (T. Dinh et al. 2020, "Personalized Federated Learning with Moreau Envelopes").

Each client's personalized model ``theta`` minimises ``f_i(theta) + lam/2 ||theta - w||^2``
(the Moreau envelope of its loss at the local model ``w``). Algorithm 1 of the paper, per
round and sampled client: starting from ``w_local = w`` (the global model), for each of the
local steps, on one minibatch,

1. solve the inner problem approximately: ``inner_steps`` (K) steps of size ``personal_lr``
   of the trainer on that minibatch with the proximal term ``lam/2 ||theta - w_local||^2``
   (FedProx's :func:`~plural.core.trainer.proximal_term`);
2. move ``w_local <- w_local - eta * lam * (w_local - theta)`` with ``eta = train.lr``.

The client sends ``w_local``; its last ``theta`` is its state (its personalized model). The
server's step ``w <- (1 - beta) w + beta * mean(w_local)`` is FedAvg's server step with
``server_lr = beta``.

Choices the paper leaves open (or settles only in its code):

* The local steps are the trainer's minibatch schedule: ``train.local_epochs`` passes over
  the client's data in batches of ``train.batch_size`` (or ``train.local_steps`` batches),
  in an order drawn from the client's generator. The paper draws R = 20 batches per round.
  Stragglers (``stragglers``) do fewer of these steps, as in FedAvg.
* ``theta`` is warm-started: each inner problem starts from the previous ``theta`` (from
  ``w`` at the start of the round), as in the authors' code.
* The inner solver is the trainer's SGD, so ``train.momentum``, weight decay and gradient
  clipping apply to it (the paper uses plain gradient steps).
* Defaults: the paper's MNIST settings ``lam = 15``, ``K = 5`` and ``beta = 1``. Its personal
  learning rate there, 0.1 (0.09 for its 2-layer network, with ``eta = 0.005`` and plain
  gradient steps), makes the inner steps oscillate with this library's default ``train.lr``
  (0.05) and the trainer's momentum: on label-skewed digits its personalized models scored
  0.66 against 0.96 with ``personal_lr = 0.02``, the best of 0.01-0.1 there and the default.
  Keep ``train.lr * lam`` (the outer step's fraction of the way to ``theta``) below 1 and
  ``personal_lr * lam`` well below 2 (stability of the inner steps).
* Floating-point buffers (e.g. batch-norm statistics) follow the same outer step.
"""

from __future__ import annotations

import dataclasses

import torch

from plural.algorithms.ditto import PersonalModels
from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import setting
from plural.core.algorithm import ModelMessage, Update
from plural.core.params import Params
from plural.core.server_opt import ServerOptimizerSettings
from plural.core.trainer import FitResult, LocalTrainer, WorkBudget, minibatches, proximal_term
from plural.data.federated import ClientData
from plural.data.types import ArrayDataset
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class PFedMeConfig(AveragingConfig):
    lam: float = setting(15.0, help="weight lambda of the Moreau envelope's proximal term", gt=0)
    inner_steps: int = setting(5, help="steps K that approximate each personalized model", ge=1)
    personal_lr: float = setting(0.02, help="step size of the K inner steps", gt=0)
    beta: float = setting(
        1.0,
        help="server step w <- (1 - beta) w + beta mean(w_i): the server optimizer's "
        "learning rate (set beta or server_lr, not both)",
        gt=0,
    )

    def __post_init__(self) -> None:
        if self.beta != 1.0 and self.server_lr != 1.0:
            raise ValueError("beta is pFedMe's name for server_lr; set only one of them")

    def server_settings(self) -> ServerOptimizerSettings:
        return dataclasses.replace(super().server_settings(), lr=self.server_lr * self.beta)


@dataclasses.dataclass(frozen=True)
class PersonalFit(FitResult):
    """pFedMe's local result: the new local model ``params`` and the personalized ``theta``."""

    theta: Params = dataclasses.field(default_factory=dict)


@ALGORITHMS.register(
    "pfedme", PFedMeConfig, "pFedMe: personalized models from Moreau envelopes (bi-level)"
)
class PFedMe(PersonalModels, FedAvg):
    name = "pfedme"
    config: PFedMeConfig

    def local_fit(
        self,
        message: ModelMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        return self._local_steps(message.params, client.train, trainer, budget, rng)

    def finish_update(
        self,
        update: Update,
        fit: FitResult,
        message: ModelMessage,
        state: Params | None,
        trainer: LocalTrainer,
    ) -> tuple[Update, Params]:
        assert isinstance(fit, PersonalFit)
        return update, fit.theta

    def _local_steps(
        self,
        w: Params,
        train: ArrayDataset,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> PersonalFit:
        """The client's bi-level loop: the new local model (as a fit) with the last theta."""
        cfg = self.config
        relax = trainer.config.lr * cfg.lam
        local, theta, losses, seen = w, w, [], 0
        n = len(train)
        epochs, step_cap = trainer.budget(n, budget.epochs, budget.steps)
        for idx in minibatches(n, trainer.config.batch_size, epochs, step_cap, rng):
            inner = trainer.fit(
                theta,
                train.x[idx],
                train.y[idx],
                rng=rng,
                loss_terms=[proximal_term(local, cfg.lam)],
                steps=cfg.inner_steps,
                lr=cfg.personal_lr,
            )
            theta = inner.params
            local = {
                n: t - relax * (t - theta[n]) if t.is_floating_point() else theta[n]
                for n, t in local.items()
            }
            losses.append(inner.mean_loss)
            seen += len(idx)
        mean_loss = sum(losses) / max(len(losses), 1)
        return PersonalFit(local, mean_loss, len(losses), seen, theta=theta)
