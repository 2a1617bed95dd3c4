"""Class prototypes: the mean representation of each class's samples (Snell et al. 2017),
the quantity prototype-based federated methods exchange (FedProto) or align to (FedAS)."""

from __future__ import annotations

import torch

from plural.core.params import Params
from plural.core.trainer import LocalTrainer
from plural.models.adapters import body_and_head


@torch.no_grad()
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
    model = trainer.model
    model.load_state_dict(params)
    model.eval()
    body, head = body_and_head(model)
    sums = torch.zeros(num_classes, head.in_features, dtype=torch.float64, device=x.device)
    dtype = head.weight.dtype
    for start in range(0, len(y), batch_size):
        h = body(x[start : start + batch_size])
        sums.index_add_(0, y[start : start + batch_size], h.double())
        dtype = h.dtype
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    prototypes = sums / counts.clamp_min(1).unsqueeze(1)
    return prototypes.to(dtype), counts.to(dtype)
