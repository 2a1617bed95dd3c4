"""Quadratic federations, where FedAvg's behaviour is known in closed form.

Client ``k`` holds least-squares data whose loss is exactly
``F_k(w) = (w - c_k)^T A_k (w - c_k)`` (mean squared error of a linear model with inputs of
second moment ``A_k`` and noise-free targets ``X c_k``). With full-batch gradient steps of size
``eta``, ``E`` local steps take ``w`` to ``c_k + M_k (w - c_k)`` with
``M_k = (I - 2 eta A_k)^E``, so FedAvg's fixed point solves
``(I - sum_k p_k M_k) w = sum_k p_k (I - M_k) c_k``. It equals the global optimum
``(sum_k p_k A_k)^-1 sum_k p_k A_k c_k`` for ``E = 1`` or when all ``c_k`` coincide, and moves
away from it as ``E`` grows when the clients differ: the client-drift bias of order
``eta^2 E^2 G^2`` (Li et al. 2020, "On the Convergence of FedAvg on Non-IID Data"; Charles &
Konecny 2021, "Convergence and Accuracy Trade-Offs in Federated Learning").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from plural.data.federated import ClientData, FederatedDataset, TensorSplit


@dataclasses.dataclass(frozen=True)
class QuadraticClients:
    """Curvatures ``A_k`` (K, d, d), optima ``c_k`` (K, d) and weights ``p_k`` (K,)."""

    curvatures: np.ndarray
    optima: np.ndarray
    weights: np.ndarray

    def global_optimum(self) -> np.ndarray:
        a = np.einsum("k,kij->ij", self.weights, self.curvatures)
        b = np.einsum("k,kij,kj->i", self.weights, self.curvatures, self.optima)
        return np.linalg.solve(a, b)

    def fedavg_fixed_point(self, lr: float, local_steps: int) -> np.ndarray:
        """Where FedAvg with full-batch local GD (``local_steps`` steps of ``lr``) converges."""
        d = self.optima.shape[1]
        eye = np.eye(d)
        steps = [np.linalg.matrix_power(eye - 2 * lr * a, local_steps) for a in self.curvatures]
        m_bar = sum(p * m for p, m in zip(self.weights, steps, strict=True))
        rhs = sum(
            p * (eye - m) @ c for p, m, c in zip(self.weights, steps, self.optima, strict=True)
        )
        return np.linalg.solve(eye - m_bar, rhs)


def quadratic_federation(
    clients: QuadraticClients, samples: int = 32, seed: int = 0
) -> FederatedDataset:
    """A regression federation whose clients' mean-squared-error losses are exactly
    ``(w - c_k)^T A_k (w - c_k)``: inputs ``X_k = sqrt(n) Q_k A_k^(1/2)`` with ``Q_k``
    orthonormal columns (so ``X_k^T X_k / n = A_k``) and targets ``y = X_k c_k``."""
    rng = np.random.default_rng(seed)
    d = clients.optima.shape[1]
    if samples < d:
        raise ValueError(f"samples ({samples}) must be at least the dimension ({d})")
    data = []
    for cid, (a, c) in enumerate(zip(clients.curvatures, clients.optima, strict=True)):
        q, _ = np.linalg.qr(rng.normal(size=(samples, d)))
        values, vectors = np.linalg.eigh(a)
        root = vectors @ np.diag(np.sqrt(values)) @ vectors.T
        x = np.sqrt(samples) * q @ root
        train = TensorSplit(
            torch.tensor(x, dtype=torch.float32), torch.tensor(x @ c, dtype=torch.float32)
        )
        empty = TensorSplit(torch.zeros(0, d), torch.zeros(0))
        data.append(ClientData(cid, train, empty, empty))
    return FederatedDataset("quadratic", data, num_classes=1, input_shape=(d,))


def four_clients(spread: float = 1.0) -> QuadraticClients:
    """Four 2-d clients with different curvatures and optima ``spread`` apart (0: coincide)."""
    curvatures = np.array(
        [np.diag([1.0, 0.2]), np.diag([0.2, 1.0]), np.diag([2.0, 0.5]), np.diag([0.5, 2.0])]
    )
    optima = spread * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]) + np.array(
        [0.5, 0.5]
    )
    return QuadraticClients(curvatures, optima, np.full(4, 0.25))
