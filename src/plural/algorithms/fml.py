"""FML (Shen et al. 2020, "Federated Mutual Learning", arXiv 2006.16765).

Every client has its own local model, of any architecture, which never leaves it, and a copy
of a small shared "meme" model whose architecture is the same for everyone. Each round a
sampled client receives the global meme and trains both models together on its data by deep
mutual learning (Zhang et al. 2018):

    local: alpha * CE(local) + (1 - alpha) * KL(p_meme || p_local)
    meme:  beta  * CE(meme)  + (1 - beta)  * KL(p_local || p_meme)

where, in each KL term, the other model's probabilities are a fixed target (detached). It
sends the meme back and keeps the local model; the server averages the memes as FedAvg does
(every :class:`~plural.algorithms.fedavg.AveragingConfig` setting applies). Each client is
evaluated with its local model (the meme received before its first round is not used for
prediction).

The two models are :class:`~plural.models.adapters.AdaptedModel`'s ``local`` and ``adapter``
(entries ``local.*`` and ``adapter.*``) with ``mu = 0``, so the model's output is the local
model's; the meme is the ``parallel`` network of :func:`~plural.models.adapters.
parallel_network`, drawn from the same seed for every architecture.

Choices, and the reasons for the defaults:

* ``alpha = beta = 0.5``: the official code's defaults (``--alpha``, ``--beta``).
* The KL terms are ``KLDivLoss(reduction='batchmean')`` on softmax probabilities without a
  temperature, as in the official code.
* Both losses are summed and minimised by one SGD step on both models, which is what the
  official code's two optimizers with one learning rate do (the gradients of the two losses
  touch disjoint parameters). With ``train.max_grad_norm`` set the norm is clipped over both
  models together.
* ``meme_width`` (default 64) and ``meme_channels`` (default [4, 8]): the paper fixes no meme
  architecture (it pairs various CNNs, MLPs and ResNets); a narrow two-convolution network
  keeps the meme, and so every round's traffic, small against the local models (about 27k
  parameters on 28x28 MNIST, 10 classes), in the role the model-heterogeneous comparisons of
  Yi et al. (pFedLoRA) give it. Non-image data gets one hidden layer of ``meme_width``.
* Stragglers (``stragglers``) do fewer epochs of the joint training (both models).

Only the meme crosses the network, both ways, so ``bytes_up`` / ``bytes_down`` are its size.
With ``alpha = beta = 1`` (no distillation) the local models are Local's and the meme is
FedAvg's run of the meme network, exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import PartialFedAvg
from plural.config import ConfigError, setting
from plural.core.algorithm import FederationInfo, ModelMessage, ServerState, require_classification
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer, WorkBudget
from plural.data.federated import ClientData
from plural.models.adapters import (
    LOCAL_PREFIX,
    AdaptedModel,
    is_adapter_entry,
    parallel_network,
)
from plural.registry import ALGORITHMS


@dataclasses.dataclass(frozen=True)
class FMLConfig(AveragingConfig):
    """FML settings (see the module docstring for the sources of the defaults)."""

    alpha: float = setting(
        0.5,
        help="local model's loss: alpha * CE + (1 - alpha) * KL(meme || local)",
        ge=0,
        le=1,
    )
    beta: float = setting(
        0.5,
        help="meme model's loss: beta * CE + (1 - beta) * KL(local || meme)",
        ge=0,
        le=1,
    )
    meme_width: int = setting(64, help="hidden width of the shared meme network", ge=1)
    meme_channels: tuple[int, ...] = setting(
        (4, 8), help="conv channels of the meme network for image input ([]: dense only)", ge=1
    )


def distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))``, batch mean, the teacher fixed."""
    return F.kl_div(
        F.log_softmax(student, dim=1),
        F.log_softmax(teacher.detach(), dim=1),
        reduction="batchmean",
        log_target=True,
    )


@dataclasses.dataclass(frozen=True)
class MutualObjective:
    """The sum of the local and meme losses of deep mutual learning (module docstring); a
    term whose weight is 0 is not computed."""

    alpha: float
    beta: float

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(model, AdaptedModel):
            raise TypeError(
                f"fml trains the AdaptedModel of FML.prepare_model, got {type(model).__name__}"
            )
        local, meme = model.local(x), model.adapter(x)
        loss = torch.zeros((), dtype=local.dtype)
        for weight, output, other in ((self.alpha, local, meme), (self.beta, meme, local)):
            if weight > 0:
                loss = loss + weight * F.cross_entropy(output, y)
            if weight < 1:
                loss = loss + (1 - weight) * distillation(output, other)
        return loss


@ALGORITHMS.register(
    "fml",
    FMLConfig,
    "FML: own local models (any architecture) and a shared meme model, mutual distillation",
)
class FML(PartialFedAvg):
    """Federated Mutual Learning (Shen et al. 2020): see the module docstring."""

    name = "fml"
    config: FMLConfig
    model_heterogeneous = True

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """The local model beside the meme network; the output is the local model's."""
        cfg = self.config
        meme = parallel_network(input_shape, num_classes, cfg.meme_width, cfg.meme_channels)
        return AdaptedModel(model, meme, mu=0.0, construction="parallel")

    def check(self, experiment: Any) -> None:
        require_classification(experiment, "fml distils class probabilities")

    def personal_patterns(self) -> tuple[str, ...]:
        return (LOCAL_PREFIX + "*",)

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        """The global meme: the ``adapter.*`` entries of the prepared model."""
        if not any(is_adapter_entry(n) for n in params):
            raise ConfigError(
                "algorithm: fml's model has no meme entries ('adapter.*'); the model must be "
                "the one FML.prepare_model builds (the engine does this)"
            )
        return super().init(params, info, rng)

    def local_fit(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        """One joint fit of the local model and the meme on the mutual-learning losses."""
        train = client.train
        return trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            loss_terms=self.loss_terms(message, state),
            epochs=budget.epochs,
            steps=budget.steps,
            objective=MutualObjective(self.config.alpha, self.config.beta),
        )

    @torch.no_grad()
    def _start_loss(self, params: Params, client: ClientData, trainer: LocalTrainer) -> float:
        """The received meme's training loss ('fair' weighting of the memes)."""
        if self.config.weighting != "fair":
            return float("nan")
        model = trainer.model
        model.load_state_dict(params)
        model.eval()
        if not isinstance(model, AdaptedModel):
            raise TypeError(f"fml evaluates an AdaptedModel, got {type(model).__name__}")
        x, y = client.train.x, client.train.y
        return float(F.cross_entropy(model.adapter(x), y)) if len(y) else float("nan")
