"""Streaming weighted moments of client gradients: ``G^2`` and ``B^2``.

* ``G^2 = sum_k p_k ||g_k - g||^2`` with ``p_k = n_k / n`` and ``g = sum_k p_k g_k``: the
  gradient heterogeneity of Li et al. 2020 ("On the Convergence of FedAvg on Non-IID Data");
* ``B^2 = sum_k p_k ||g_k||^2 / ||g||^2``: the B-local dissimilarity of FedProx (Li et al.
  2020, "Federated Optimization in Heterogeneous Networks", Definition 3); 1 for identical
  clients, infinite where the mean gradient vanishes but some client's does not.

The engine's per-round diagnostics and ``plural diagnose`` both reduce through
:class:`GradientMoments`. It keeps one running mean vector and a running sum of squared
deviations, updated with West's (1979) weighted form of Welford's algorithm, so ``G^2`` does
not suffer the cancellation of ``E||g_k||^2 - ||g||^2`` when clients nearly agree.
"""

from __future__ import annotations

import math

import torch


class GradientMoments:
    """Streaming weighted first and second moments of client gradients (float64)."""

    def __init__(self) -> None:
        self.weight = 0.0
        self.mean: torch.Tensor | None = None
        self.squared_deviations = 0.0
        self.weighted_sq_norm = 0.0

    def add(self, gradient: torch.Tensor, weight: float) -> None:
        """Add one client's flattened gradient with weight ``n_k`` (nothing for weight 0)."""
        if weight <= 0:
            return
        x = gradient.detach().double()
        self.weight += weight
        self.weighted_sq_norm += weight * float(x.pow(2).sum())
        if self.mean is None:
            self.mean = x.clone()
            return
        delta = x - self.mean
        self.mean += delta * (weight / self.weight)
        self.squared_deviations += weight * float(delta.dot(x - self.mean))

    def result(self) -> dict[str, float]:
        """``g2``, ``b2`` and ``global_grad_norm`` (NaN without clients; ``b2`` is 1 when
        every gradient vanishes)."""
        if self.mean is None or self.weight <= 0:
            return {"g2": math.nan, "b2": math.nan, "global_grad_norm": math.nan}
        global_sq = float(self.mean.pow(2).sum())
        second_moment = self.weighted_sq_norm / self.weight
        vanished = math.inf if second_moment > 0 else 1.0
        b2 = second_moment / global_sq if global_sq > 0 else vanished
        return {
            "g2": max(self.squared_deviations / self.weight, 0.0),
            "b2": b2,
            "global_grad_norm": global_sq**0.5,
        }
