"""FedCP (Zhang et al. 2023, "FedCP: Separating Feature Information for Personalized Federated
Learning via Conditional Policy", KDD; arXiv 2307.01217).

The model is split into a feature extractor and a classifier, the split the zoo's models expose
(:func:`~plural.models.adapters.body_and_head`), and becomes

    h = body(x);   (p, g) = CPN(h * c_i)   (per feature, p + g = 1)
    output = head_i(h * p) + global_head(h * g)

A conditional policy network (CPN: a linear layer to twice the width, LayerNorm, ReLU, then a
two-way softmax per feature) splits every feature of every sample between the client's own
head ``head_i`` and a frozen copy of the global head. The CPN reads the representation scaled
by the client's context ``c_i``: the L2-normalised sum of the rows of its head's weight. Local
training fits body, CPN and own head on the cross-entropy plus ``lam`` times the maximum mean
discrepancy (RBF kernels of bandwidths 10, 15, 20 and 50) between the body's representations
and those of the received (global) body. The client then sends its body, its CPN and
``0.5 * (head_i + global_head)``; the server averages each (sample weights, as FedAvg).

Entries: ``body.*``, ``head.*`` (personal), ``global_head.*``, ``policy.*`` and ``context``
(personal, recomputed from the trained head after each round).

Defaults and choices: ``lam = 5`` is the official command for MNIST with Dirichlet(0.1) and the
4-layer CNN. Training samples the split with Gumbel noise (temperature 1, soft), as the paper;
the noise comes from the client's generator. Evaluation uses the noiseless softmax (the
official code samples Gumbel noise at test time too, which makes scores random). The first
context is that of the initial head (the official code starts from a random vector). There is
no setting under which FedCP reduces exactly to an existing method.

Bytes: down and up, body, CPN and global head; the own head and context stay on the client.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plural.algorithms.fedavg import AveragingConfig
from plural.algorithms.partial import PartialFedAvg
from plural.config import ConfigError, setting
from plural.core.algorithm import FederationInfo, ModelMessage, Update, require_classification
from plural.core.params import Params
from plural.core.trainer import FitResult, LocalTrainer, WorkBudget
from plural.data.federated import ClientData
from plural.models.adapters import body_and_head
from plural.registry import ALGORITHMS

HEAD, GLOBAL_HEAD, BODY, CONTEXT = "head.", "global_head.", "body.", "context"
BANDWIDTHS = (10.0, 15.0, 20.0, 50.0)


@dataclasses.dataclass(frozen=True)
class FedCPConfig(AveragingConfig):
    lam: float = setting(
        5.0, help="weight of the MMD between local and global representations", ge=0
    )


class ConditionalPolicyModel(nn.Module):
    """Body, own head, frozen global head and CPN (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        body, head = body_and_head(model)
        if not isinstance(body, nn.Module):
            raise ConfigError(
                "model: fedcp needs the model's body as a module (a 'body' attribute that is an "
                "nn.Module, or an nn.Sequential ending in a Linear layer)"
            )
        width = head.in_features
        self.register_buffer(CONTEXT, head.weight.detach().sum(dim=0).clone())
        self.body = body
        self.head = head
        self.global_head = copy.deepcopy(head)
        self.policy = nn.Sequential(nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.ReLU())

    def split(
        self, h: torch.Tensor, noise: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The personal and global shares ``(p, g)`` of each feature; Gumbel-softmax when a
        noise generator is given, the plain softmax otherwise."""
        context = F.normalize(self.context.unsqueeze(0).to(h.dtype), p=2, dim=1)
        logits = self.policy(h * context).view(h.shape[0], 2, -1)
        if noise is not None:
            uniform = torch.rand(logits.shape, generator=noise).to(logits).clamp(1e-20, 1.0)
            logits = logits - torch.log(-torch.log(uniform))
        shares = logits.softmax(dim=1)
        return shares[:, 0], shares[:, 1]

    def combine(self, h: torch.Tensor, noise: torch.Generator | None = None) -> torch.Tensor:
        personal, shared = self.split(h, noise)
        return self.head(h * personal) + self.global_head(h * shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.body(x))


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (biased) maximum mean discrepancy between two samples with a sum of RBF kernels
    ``exp(-d^2 / (2 a))`` over :data:`BANDWIDTHS` (written out: a few lines of torch)."""

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        squared = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)
        return sum(torch.exp(-0.5 * squared / width) for width in BANDWIDTHS)  # type: ignore[return-value]

    return (kernel(x, x) + kernel(y, y) - 2 * kernel(x, y)).mean()


@dataclasses.dataclass
class PolicyObjective:
    """Cross-entropy of the policy-split model plus ``lam * MMD(h, h_global)``."""

    global_body: nn.Module
    lam: float
    noise: torch.Generator

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, ConditionalPolicyModel)
        h = model.body(x)
        loss = F.cross_entropy(model.combine(h, self.noise), y)
        if self.lam > 0:
            with torch.no_grad():
                reference = self.global_body(x)
            loss = loss + self.lam * mmd(h, reference)
        return loss


@ALGORITHMS.register(
    "fedcp",
    FedCPConfig,
    "FedCP: a conditional policy splits each feature between a personal and a global head",
)
class FedCP(PartialFedAvg):
    name = "fedcp"
    config: FedCPConfig
    model_heterogeneous = False

    def check(self, experiment: Any) -> None:
        require_classification(
            experiment, "fedcp's policy splits features between classifier heads"
        )

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """The model with a global head and a CPN (a ConfigError without a body/head split)."""
        return ConditionalPolicyModel(model)

    def resolve_personal(self, names: Sequence[str], info: FederationInfo) -> tuple[str, ...]:
        return tuple(n for n in names if n.startswith(HEAD) or n == CONTEXT)

    def local_fit(
        self,
        message: ModelMessage,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        budget: WorkBudget,
        rng: torch.Generator,
    ) -> FitResult:
        """Body, CPN and own head on CE + lam * MMD; the global head stays frozen."""
        model = trainer.model
        assert isinstance(model, ConditionalPolicyModel)
        global_body = copy.deepcopy(model.body)
        global_body.load_state_dict(
            {n[len(BODY) :]: t for n, t in message.params.items() if n.startswith(BODY)}
        )
        global_body.eval()
        noise = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=rng)))
        train = client.train
        return trainer.fit(
            message.params,
            train.x,
            train.y,
            rng=rng,
            objective=PolicyObjective(global_body, self.config.lam, noise),
            trainable=lambda n: not n.startswith(GLOBAL_HEAD),
            epochs=budget.epochs,
            steps=budget.steps,
        )

    def finish_update(
        self,
        update: Update,
        fit: FitResult,
        message: ModelMessage,
        state: Params,
        trainer: LocalTrainer,
    ) -> tuple[Update, Params]:
        """Send body, CPN and ``0.5 (head + global head)``; keep the head and its context."""
        update, personal = super().finish_update(update, fit, message, state, trainer)
        assert update.params is not None
        sent = dict(update.params)
        for name in sent:
            if name.startswith(GLOBAL_HEAD):
                own = fit.params[HEAD + name[len(GLOBAL_HEAD) :]]
                sent[name] = 0.5 * own + 0.5 * fit.params[name]
        personal = {**personal, CONTEXT: fit.params[HEAD + "weight"].sum(dim=0)}
        return dataclasses.replace(update, params=sent), personal
