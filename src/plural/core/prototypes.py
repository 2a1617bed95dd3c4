"""Class prototypes: per-class mean representations of a model's body, their aggregation over
clients, and the training objective that pulls representations towards them.

Shared by the prototype methods: FedProto (Tan et al. 2022) exchanges only prototypes;
FedPAC (Xu et al. 2023) aligns the shared feature extractor to global prototypes and uses the
per-class feature moments to weigh classifier collaboration. The representation is the
model's output before its linear classifier (:func:`~plural.models.adapters.body_and_head`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from plural.core.params import Params
from plural.core.trainer import LocalTrainer
from plural.models.adapters import body_and_head

ProtoWeighting = Literal["counts", "clients"]


@dataclasses.dataclass(frozen=True)
class PrototypeObjective:
    """``CE(head(h), y) + lam * MSE(h, P[y])`` with ``h = body(x)``; samples whose class has
    no prototype contribute 0 to the sum of squares (the mean still counts them)."""

    prototypes: torch.Tensor
    present: torch.Tensor
    lam: float

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        body, head = body_and_head(model)
        h = body(x)
        loss = F.cross_entropy(head(h), y)
        keep = self.present[y].unsqueeze(1).to(h.dtype)
        squared = ((h - self.prototypes[y].to(h.dtype)) * keep).pow(2)
        return loss + self.lam * squared.sum() / max(h.numel(), 1)


@dataclasses.dataclass(frozen=True)
class FeatureMoments:
    """Per-class moments of a model's representations over some data, in float64."""

    means: torch.Tensor
    """(classes, width) mean representation of each class (0 for an absent class)."""
    counts: torch.Tensor
    """(classes,) number of samples of each class."""
    squared_norms: torch.Tensor
    """(classes,) mean squared L2 norm of each class's representations."""


@torch.no_grad()
def feature_moments(
    trainer: LocalTrainer,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    batch_size: int = 1024,
) -> tuple[FeatureMoments, torch.dtype]:
    """Per-class moments of ``body(x)`` at ``params`` (evaluation mode), and the
    representation's dtype."""
    model = trainer.model
    model.load_state_dict(params)
    model.eval()
    body, head = body_and_head(model)
    sums = torch.zeros(num_classes, head.in_features, dtype=torch.float64, device=x.device)
    squares = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    dtype = head.weight.dtype
    for start in range(0, len(y), batch_size):
        h = body(x[start : start + batch_size])
        labels = y[start : start + batch_size]
        sums.index_add_(0, labels, h.double())
        squares.index_add_(0, labels, h.double().pow(2).sum(dim=1))
        dtype = h.dtype
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    per_class = counts.clamp_min(1)
    moments = FeatureMoments(sums / per_class.unsqueeze(1), counts, squares / per_class)
    return moments, dtype


def class_prototypes(
    trainer: LocalTrainer,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    batch_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean representation of ``(x, y)`` at ``params`` (evaluation mode) and the
    class counts, shapes (classes, width) and (classes,), in the representation's dtype; rows
    of absent classes are 0."""
    moments, dtype = feature_moments(trainer, params, x, y, num_classes, batch_size)
    return moments.means.to(dtype), moments.counts.to(dtype)


def aggregate_prototypes(
    previous: torch.Tensor,
    present: torch.Tensor,
    reports: Sequence[tuple[torch.Tensor, torch.Tensor]],
    weighting: ProtoWeighting = "counts",
) -> tuple[torch.Tensor, torch.Tensor]:
    """New global prototypes and presence mask from the clients' ``(prototypes, counts)``.

    Class ``c``'s prototype is the mean of the clients' class-``c`` prototypes over the
    clients with a positive count, weighted by that count (``counts``) or equally
    (``clients``); a class no client reported keeps its previous prototype and presence.
    """
    sums = torch.zeros(previous.shape, dtype=torch.float64)
    total = torch.zeros(previous.shape[0], dtype=torch.float64)
    for prototypes, counts in reports:
        weight = counts.to(torch.float64).clamp_min(0)
        if weighting == "clients":
            weight = (weight > 0).to(torch.float64)
        sums += weight.unsqueeze(1) * prototypes.to(torch.float64)
        total += weight
    reported = total > 0
    mean = (sums / total.clamp_min(1e-300).unsqueeze(1)).to(previous.dtype)
    return torch.where(reported.unsqueeze(1), mean, previous), present | reported
