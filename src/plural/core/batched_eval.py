"""Evaluate many parameter sets of one architecture on the same data in one batched call.

pFedLIA's lazy phase has every client evaluate up to N-1 lazy models on its validation split.
One model at a time, each evaluation loads a state dict into the template module and runs a
small forward pass, and the Python overhead dominates for small models. Here the models'
parameters are stacked along a new leading dimension and the forward pass is vectorised over
it with :func:`torch.func.vmap` and :func:`torch.func.functional_call`, ``chunk`` models at a
time. Results match :meth:`plural.core.trainer.LocalTrainer.evaluate` up to floating-point
summation order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.func import functional_call, vmap

from plural.core.trainer import EvalResult, LocalTrainer

__all__ = ["evaluate_stacked", "stack_params"]

DEFAULT_CHUNK = 64


def stack_params(params: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{name: tensor of shape (len(params), *shape)}`` from parameter sets of one model."""
    if not params:
        raise ValueError("stack_params needs at least one parameter set")
    return {name: torch.stack([p[name] for p in params]) for name in params[0]}


@torch.no_grad()
def evaluate_stacked(
    trainer: LocalTrainer,
    stacked: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> list[EvalResult]:
    """Loss sum and correct count (as :meth:`LocalTrainer.evaluate`) of each of the stacked
    parameter sets on ``(x, y)``; the model is in evaluation mode."""
    model, loss_fn = trainer.model, trainer.loss_fn
    classify = trainer.config.loss == "cross_entropy"
    model.eval()
    count = next(iter(stacked.values())).shape[0]

    def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, (x,))

    results: list[EvalResult] = []
    for start in range(0, count, chunk):
        part = {n: t[start : start + chunk] for n, t in stacked.items()}
        outputs = vmap(forward)(part)  # (models, samples, ...)
        models = outputs.shape[0]
        # Every model's per-sample losses in one call, summed per model (a loss call per
        # model cost as much as the forward passes at 200 clients).
        losses = loss_fn(
            outputs.flatten(0, 1), y.repeat(models, *([1] * (y.dim() - 1))), reduction="none"
        )
        loss_sums = losses.reshape(models, -1).sum(dim=1).tolist()
        hits = (outputs.argmax(dim=2) == y).flatten(1).sum(dim=1) if classify else None
        corrects = hits.tolist() if hits is not None else [-1] * models
        results += [
            EvalResult(float(loss), int(correct), len(y))
            for loss, correct in zip(loss_sums, corrects, strict=True)
        ]
    return results
