"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") inside the one local
epoch loop: each step samples every example independently with probability
``batch_size / n`` (Poisson sampling, which the accountant assumes), clips each example's
gradient to L2 norm ``clip``, adds N(0, (noise_multiplier * clip)^2) to their sum and divides
by the expected batch size. Per-example gradients come from ``torch.func`` (``vmap`` of
``grad_and_value``, whose per-example losses give the batch's loss without a second forward
pass). Loss terms that do not read the data (FedProx's proximal term, Ditto's pull to
the global model) are added to the noised gradient as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from plural.core.trainer import TrainConfig


@dataclasses.dataclass(frozen=True)
class PrivateTrainConfig(TrainConfig):
    """The trainer's settings under ``privacy: {level: sample}`` (not a config section: the
    run derives it from ``train`` and ``privacy``)."""

    dp_noise_multiplier: float = 0.0
    dp_clip: float = 1.0

    @classmethod
    def of(cls, train: TrainConfig, noise_multiplier: float, clip: float) -> PrivateTrainConfig:
        values = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainConfig)}
        return cls(**values, dp_noise_multiplier=noise_multiplier, dp_clip=clip)

    def epoch_loop(self, trainer: Any, *args: Any) -> tuple[float, int, int]:
        """The trainer's epoch loop under these settings: :func:`private_batches` (the
        trainer looks it up here, so the core does not import privacy)."""
        return private_batches(trainer, *args)


def is_private(config: Any) -> bool:
    """Whether a trainer with these settings runs DP-SGD."""
    return isinstance(config, PrivateTrainConfig)


def check_private_model(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                "privacy: level 'sample' (DP-SGD) cannot train a model with batch "
                "normalization (it mixes examples, so per-example gradients are not defined); "
                "use a model without it (or group normalization)"
            )


def per_example_gradients(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    live: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The gradient of each example's loss with respect to ``live``, stacked on a first
    dimension of ``len(x)``, and each example's loss (from the same forward pass)."""
    fixed = {n: t.detach() for n, t in model.named_parameters() if n not in live}
    fixed.update({n: b for n, b in model.named_buffers()})
    detached = {n: p.detach() for n, p in live.items()}
    loss = _example_loss(model, loss_fn)
    each = vmap(grad_and_value(loss), in_dims=(None, None, 0, 0), randomness="different")
    return each(detached, fixed, x, y)


def batched_per_example_gradients(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    live: Mapping[str, torch.Tensor],
    others: Mapping[str, torch.Tensor],
    shared: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`per_example_gradients` of many clients at once (the vectorized backend): ``live``
    and ``others`` (entries that differ between clients but do not train) are stacked on a
    first dimension of clients, ``x`` and ``y`` on (clients, examples); ``shared`` entries are
    the same for every client. Gradients have shape (clients, examples, *parameter), losses
    (clients, examples)."""
    loss = _example_loss(model, loss_fn, shared)
    each = vmap(grad_and_value(loss), in_dims=(None, None, 0, 0), randomness="different")
    return vmap(each, in_dims=(0, 0, 0, 0), randomness="different")(
        {n: t.detach() for n, t in live.items()}, dict(others), x, y
    )


def _example_loss(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    shared: Mapping[str, torch.Tensor] | None = None,
) -> Callable[..., torch.Tensor]:
    """The loss of one example as a function of (live parameters, other entries, x, y)."""
    base = dict(shared or {})

    def loss_one(
        params: dict[str, torch.Tensor],
        others: dict[str, torch.Tensor],
        xi: torch.Tensor,
        yi: torch.Tensor,
    ) -> torch.Tensor:
        out = functional_call(model, {**base, **others, **params}, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    return loss_one


def clip_factors(grads: Mapping[str, torch.Tensor], clip: float) -> torch.Tensor:
    """The factor (float64, one per example on the first dimension) that scales each
    example's gradient to L2 norm at most ``clip``. Each parameter's norm is taken in the
    gradients' precision (``vector_norm``, 10x faster than summing squares on a CPU), their
    squares summed in float64."""
    first = next(iter(grads.values()))
    squares = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)
    for g in grads.values():
        squares += torch.linalg.vector_norm(g.reshape(len(g), -1), dim=1).double().pow(2)
    return (clip / squares.sqrt().clamp_min(1e-12)).clamp(max=1.0)


def clipped_sum(grads: Mapping[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    """The sum over examples of each example's gradient scaled to L2 norm at most ``clip``
    (one matrix product per parameter)."""
    factor = clip_factors(grads, clip)
    return {
        n: (factor.to(g.dtype) @ g.reshape(len(g), -1)).reshape(g.shape[1:])
        for n, g in grads.items()
    }


def batched_clipped_sums(
    grads: Mapping[str, torch.Tensor], clip: float, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """:func:`clipped_sum` per client of (clients, examples, *parameter) gradients, counting
    only the examples ``mask`` (clients, examples) marks (one batched matrix product per
    parameter)."""
    clients, examples = mask.shape
    factor = clip_factors({n: g.flatten(0, 1) for n, g in grads.items()}, clip)
    factor = factor.reshape(clients, 1, examples) * mask.to(factor.dtype).unsqueeze(1)
    return {
        n: torch.bmm(factor.to(g.dtype), g.reshape(clients, examples, -1)).reshape(
            clients, *g.shape[2:]
        )
        for n, g in grads.items()
    }


def private_steps(n: int, batch_size: int, epochs: int, step_cap: int | None) -> int:
    """DP-SGD steps of a fit: ``ceil(n / batch_size)`` per epoch (each samples ``batch_size``
    examples in expectation), at most ``step_cap``; none without data."""
    if n == 0:
        return 0
    steps = epochs * max(1, math.ceil(n / batch_size))
    return steps if step_cap is None else min(steps, step_cap)


def step_draws(
    rng: torch.Generator, n: int, rate: float, live: Mapping[str, torch.Tensor], std: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step's random draws from the client's generator, in this order: the Poisson
    sample (each example with probability ``rate``), then N(0, std^2) noise for each live
    parameter. One-by-one and batched DP-SGD draw through here, so they agree."""
    chosen = (torch.rand(n, generator=rng) < rate).nonzero().flatten()
    noise = {
        name: torch.randn(p.shape, generator=rng, dtype=p.dtype).to(p.device) * std
        for name, p in live.items()
    }
    return chosen, noise


def private_batches(
    trainer: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    rng: torch.Generator,
    optimizer: torch.optim.Optimizer,
    live: Mapping[str, nn.Parameter],
    loss_terms: Sequence[Callable[..., torch.Tensor]],
    epochs: int,
    step_cap: int | None,
) -> tuple[float, int, int]:
    """The DP-SGD version of the trainer's epoch loop: (sum of batch losses, steps, examples
    seen). Every step counts in ``trainer.meter.privacy_steps``."""
    model, cfg = trainer.model, trainer.config
    check_private_model(model)
    n = len(y)
    rate = min(1.0, cfg.batch_size / n)
    std = cfg.dp_noise_multiplier * cfg.dp_clip
    total_loss, seen = 0.0, 0
    steps = private_steps(n, cfg.batch_size, epochs, step_cap)
    model.train()
    for _ in range(steps):
        chosen, noise = step_draws(rng, n, rate, live, std)
        total_loss += _private_step(
            trainer, x[chosen], y[chosen], optimizer, live, loss_terms, noise, n * rate
        )
        trainer.meter.privacy_steps += 1
        seen += len(chosen)
    return total_loss, steps, seen


def _private_step(
    trainer: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    live: Mapping[str, nn.Parameter],
    loss_terms: Sequence[Callable[..., torch.Tensor]],
    noise: Mapping[str, torch.Tensor],
    expected_batch: float,
) -> float:
    """One noised step; the mean loss of the sampled batch (0 for an empty one)."""
    cfg = trainer.config
    if len(y):
        grads, losses = per_example_gradients(trainer.model, trainer.loss_fn, live, x, y)
        summed = clipped_sum(grads, cfg.dp_clip)
        loss = float(losses.mean())
    else:
        summed = {n: torch.zeros_like(p) for n, p in live.items()}
        loss = 0.0
    optimizer.zero_grad(set_to_none=True)
    if loss_terms:
        extra = sum((term(live) for term in loss_terms), torch.zeros(()))
        extra.backward()
    for name, param in live.items():
        private = (summed[name].to(param.dtype) + noise[name]) / expected_batch
        param.grad = private if param.grad is None else param.grad + private
    optimizer.step()
    return loss
