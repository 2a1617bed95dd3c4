"""APFL (Deng et al. 2020, "Adaptive Personalized Federated Learning").

Each client keeps a personal model ``v_k`` and a mixing weight ``alpha_k`` (its state in the
engine's store); its personalized model is the convex combination of parameters
``v̄_k = alpha_k v_k + (1 - alpha_k) w`` (the paper's definition). Per round a sampled client

1. trains its copy of the global model ``w`` exactly as FedAvg (same update, same draws from
   the client's generator first, so the global model is FedAvg's), and
2. trains ``v_k`` and ``alpha_k`` on the loss of the mixed model with the received global
   model ``w`` fixed: a :class:`Mixture` module holds ``v_k`` and ``alpha_k`` as parameters
   and ``w`` as constants, and the one :class:`~plural.core.trainer.LocalTrainer` loop trains
   it. By the chain rule its gradients are the paper's: ``alpha grad f(v̄)`` for ``v`` and
   ``<v - w, grad f(v̄)>`` for ``alpha``.

Only ``w`` is sent back (FedAvg's bytes). Departures and choices the paper leaves open:

* The paper alternates one step of ``w``, ``v`` and ``alpha`` on each minibatch, mixing with
  the client's drifting copy of ``w``; here the client does all its ``w`` steps, then all its
  ``v``/``alpha`` steps (as many passes), mixing with the global model it received, the one
  the paper's local copy starts the round from. (Mixing with the copy after its local
  training instead made ``alpha`` collapse to 0 in the first round on label-skewed digits:
  that copy already fits the client, so ``v`` got no gradient and the personalized model was
  the global one.)
* The personalized model that is evaluated mixes ``v_k`` with the current global model
  (``server.params``), the model every client holds after synchronisation in the paper.
* ``alpha`` is kept in [0, 1] as in the paper: the mixture clamps it in ``forward`` with
  the gradient of the identity (:func:`~plural.core.params.clamp_passing_gradient`: a step
  that leaves [0, 1] acts as the boundary value, and the next steps can bring it back; a
  plain clamp gave it no gradient, and at 0 none to ``v`` either, so both stopped training
  for the rest of the round), and the stored value is projected after each round.
* ``alpha_lr``: the paper uses one step size for all three variables; a separate one is
  common in implementations. The trainer has one learning rate, so ``alpha``'s gradient is
  scaled by ``alpha_lr / train.lr``, which makes its SGD step ``alpha_lr * grad``
  (weight decay, if any, applies to alpha unscaled). Null uses ``train.lr``.
* ``alpha`` starts at 0.25, the smallest of the fixed values in the paper's experiments
  (0.25, 0.5, 0.75); the authors' code (FedTorch) defaults to 0.5. That code mixes the two
  models' outputs; the paper, and this implementation, mix their parameters.
* Model buffers (e.g. batch-norm statistics) are mixed like parameters; during the
  ``v``/``alpha`` phase the mixed model uses ``v_k``'s buffers.
* Stragglers shorten only the global update; the personal phase always does its full work.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.func import functional_call

from plural.algorithms.ditto import PersonalModels
from plural.algorithms.fedavg import AveragingConfig, FedAvg
from plural.config import setting
from plural.core.algorithm import ModelMessage, ServerState, Update
from plural.core.params import Params, clamp_passing_gradient
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

PERSONAL = "personal."


@dataclasses.dataclass(frozen=True)
class APFLConfig(AveragingConfig):
    alpha: float = setting(
        0.25,
        help="initial mixing weight alpha of the personal model (paper: 0.25, 0.5, 0.75)",
        ge=0,
        le=1,
    )
    alpha_lr: float | None = setting(
        None, help="step size of alpha (null: train.lr); 0 keeps alpha fixed", ge=0
    )


@dataclasses.dataclass(frozen=True)
class APFLState:
    """A client's personal model ``v`` and mixing weight ``alpha``."""

    personal: Params
    alpha: float


def mix(personal: Params, shared: Params, alpha: float) -> Params:
    """``alpha * personal + (1 - alpha) * shared`` on floating-point entries (others: shared)."""
    return {
        n: alpha * personal[n] + (1 - alpha) * w if w.is_floating_point() else w
        for n, w in shared.items()
    }


def with_grad_scale(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """``tensor`` unchanged in value, its gradient multiplied by ``scale``."""
    return tensor * scale + (tensor * (1 - scale)).detach()


class Mixture(nn.Module):
    """The model ``alpha v + (1 - alpha) w`` of a template module, trainable in ``v`` and
    ``alpha``; ``w`` is a constant. Its state dict is ``personal.<name>`` and ``alpha``."""

    def __init__(self, template: nn.Module, shared: Params, alpha_grad_scale: float) -> None:
        super().__init__()
        self.personal = copy.deepcopy(template)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.shared = shared
        self.alpha_grad_scale = alpha_grad_scale

    def mixing_weight(self) -> torch.Tensor:
        return clamp_passing_gradient(with_grad_scale(self.alpha, self.alpha_grad_scale), 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.mixing_weight()
        mixed = {
            n: alpha * v + (1 - alpha) * self.shared[n] for n, v in self.personal.named_parameters()
        }
        return functional_call(self.personal, mixed, (x,))

    @staticmethod
    def state(state: APFLState) -> Params:
        """The mixture's state dict for a client's state."""
        personal = {PERSONAL + n: t for n, t in state.personal.items()}
        return {**personal, "alpha": torch.tensor(state.alpha)}

    @staticmethod
    def client_state(params: Params) -> APFLState:
        """A client's state from the mixture's state dict (alpha projected on [0, 1])."""
        personal = {n[len(PERSONAL) :]: t for n, t in params.items() if n.startswith(PERSONAL)}
        return APFLState(personal, min(max(float(params["alpha"]), 0.0), 1.0))


@ALGORITHMS.register(
    "apfl", APFLConfig, "APFL: personal models mixed with the global one by a learnt alpha"
)
class APFL(PersonalModels, FedAvg):
    name = "apfl"
    config: APFLConfig

    def client_update(
        self,
        message: ModelMessage,
        state: APFLState | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, APFLState]:
        update, _ = super().client_update(message, state, client, trainer, rng)
        if state is None:
            state = APFLState(message.params, self.config.alpha)
        return update, self._train_personal(state, message.params, client, trainer, rng)

    def _train_personal(
        self,
        state: APFLState,
        shared: Params,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> APFLState:
        """Train ``v`` and ``alpha`` of the mixture with the local global model ``shared``."""
        lr = trainer.config.lr
        alpha_lr = lr if self.config.alpha_lr is None else self.config.alpha_lr
        mixture = Mixture(trainer.model, shared, alpha_lr / lr)
        mixture_trainer = LocalTrainer(mixture, trainer.config, {}, trainer.meter)
        train = client.train
        fit = mixture_trainer.fit(Mixture.state(state), train.x, train.y, rng=rng)
        return Mixture.client_state(fit.params)

    def personalized(self, server: ServerState, state: APFLState | None, client_id: int) -> Params:
        if state is None:
            return server.params
        return mix(state.personal, server.params, state.alpha)
