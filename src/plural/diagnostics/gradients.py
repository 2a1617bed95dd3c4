"""Gradient dissimilarity and client drift: how differently clients pull the model.

* ``G^2 = sum_k p_k ||grad F_k(w) - grad F(w)||^2`` with ``p_k = n_k / n`` and
  ``grad F = sum_k p_k grad F_k``: the gradient heterogeneity of Li et al. 2020 ("On the
  Convergence of FedAvg on Non-IID Data"), the quantity FedAvg's convergence bounds degrade
  with (the same bounded-variance assumption as in SCAFFOLD, Karimireddy et al. 2020).
* ``B^2 = sum_k p_k ||grad F_k(w)||^2 / ||grad F(w)||^2``: the B-local dissimilarity of FedProx
  (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", Definition 3). It is 1
  for identical clients and, by Jensen's inequality, never below 1; in fact
  ``B^2 = 1 + G^2 / ||grad F||^2``.
* Client drift ``||w_k - w||`` after local training from ``w`` (Karimireddy et al. 2020,
  "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning") and the pairwise cosine
  similarity of the client updates ``w_k - w``, which clustered FL uses to find groups of
  clients (Sattler et al. 2020, "Clustered Federated Learning").

Vectors are formed from the floating-point entries only and accumulated in float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from plural.core.moments import GradientMoments
from plural.core.params import Params
from plural.core.params import distance as distance  # re-exported: the engine's drift metric
from plural.core.params import flat as flat  # re-exported: the one flattening
from plural.core.rng import torch_generator
from plural.core.similarity import cosine_similarities
from plural.core.trainer import LocalTrainer
from plural.data.federated import FederatedDataset
from plural.diagnostics.labels import as_json

__all__ = [
    "ClientDrift",
    "GradientDissimilarity",
    "client_drift",
    "dissimilarity_from_gradients",
    "distance",
    "drift_from_updates",
    "flat",
    "gradient_dissimilarity",
]


def _normalised_weights(weights: Sequence[float] | np.ndarray, count: int) -> np.ndarray:
    p = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(p) != count:
        raise ValueError(f"{len(p)} weights for {count} clients")
    if (p < 0).any() or not p.sum() > 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    return p / p.sum()


def _client_ids(clients: Sequence[int] | None, count: int) -> np.ndarray:
    ids = np.arange(count) if clients is None else np.asarray(clients, dtype=np.int64)
    if len(ids) != count:
        raise ValueError(f"{len(ids)} client ids for {count} clients")
    return ids


@dataclasses.dataclass(frozen=True)
class GradientDissimilarity:
    """``G^2`` and ``B^2`` at one model, with each client's gradient deviation and norm.

    ``clients[i]`` is the id of the client in row ``i`` of the per-client arrays; ``weights``
    are the ``p_k`` (summing to 1); ``global_grad_norm`` is ``||grad F(w)||``.
    """

    clients: np.ndarray
    weights: np.ndarray
    g2: float
    b2: float
    deviation: np.ndarray
    grad_norm: np.ndarray
    global_grad_norm: float

    @property
    def mean_deviation(self) -> float:
        return float(self.deviation.mean())

    @property
    def max_deviation(self) -> float:
        return float(self.deviation.max())

    def to_dict(self) -> dict[str, Any]:
        summaries = {"mean_deviation": self.mean_deviation, "max_deviation": self.max_deviation}
        return as_json({**dataclasses.asdict(self), **summaries})


def dissimilarity_from_gradients(
    grads: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | np.ndarray,
    clients: Sequence[int] | None = None,
) -> GradientDissimilarity:
    """:class:`GradientDissimilarity` of the clients' full-batch mean-loss gradients.

    ``weights`` are the clients' sample counts ``n_k`` (or any non-negative weights; they are
    normalised to ``p_k``). ``clients`` names the clients (default ``0 .. K-1``). Entries are
    matched by the names of the first gradient. ``B^2`` is infinite where the global gradient
    vanishes but some client's does not, and 1 where every client's gradient vanishes.

    Two passes over ``grads`` (mean, then deviations) keep one flattened copy at a time.
    """
    if not grads:
        raise ValueError("gradient dissimilarity needs at least one client gradient")
    p = _normalised_weights(weights, len(grads))
    ids = _client_ids(clients, len(grads))
    names = list(grads[0])
    moments = GradientMoments()
    for pk, grad in zip(p, grads, strict=True):
        moments.add(flat(grad, names), float(pk))
    mean = moments.mean if moments.mean is not None else torch.zeros(0, dtype=torch.float64)
    deviation, grad_norm = np.zeros(len(grads)), np.zeros(len(grads))
    for i, grad in enumerate(grads):
        vector = flat(grad, names)
        deviation[i], grad_norm[i] = float((vector - mean).norm()), float(vector.norm())
    summary = moments.result()
    return GradientDissimilarity(
        clients=ids,
        weights=p,
        g2=summary["g2"],
        b2=summary["b2"],
        deviation=deviation,
        grad_norm=grad_norm,
        global_grad_norm=summary["global_grad_norm"],
    )


def _clients_with_training_data(
    federation: FederatedDataset, round_index: int, clients: Iterable[int] | None
) -> list[int]:
    chosen = range(federation.num_clients) if clients is None else clients
    return [cid for cid in chosen if len(federation.client(cid, round_index).train) > 0]


def gradient_dissimilarity(
    trainer: LocalTrainer,
    params: Mapping[str, torch.Tensor],
    federation: FederatedDataset,
    round_index: int = 0,
    clients: Iterable[int] | None = None,
) -> GradientDissimilarity:
    """``G^2`` / ``B^2`` at ``params`` from each client's training split in ``round_index``.

    Each client contributes ``trainer.gradient`` (full batch, mean loss) weighted by its
    training set size; clients without training data are skipped.
    """
    ids = _clients_with_training_data(federation, round_index, clients)
    grads, sizes = [], []
    for cid in ids:
        train = federation.client(cid, round_index).train
        grads.append(trainer.gradient(params, train.x, train.y))
        sizes.append(len(train))
    return dissimilarity_from_gradients(grads, sizes, ids)


@dataclasses.dataclass(frozen=True)
class ClientDrift:
    """How far local training moves each client from a common start, and in which direction.

    ``drift[i]`` is ``||w_k - w||`` of client ``clients[i]``; ``update_cosine[i, j]`` is the
    cosine similarity of the updates ``w_k - w`` of clients ``i`` and ``j`` (1 on the
    diagonal; 0 where one of the two updates is zero, as the direction is then undefined).
    """

    clients: np.ndarray
    drift: np.ndarray
    update_cosine: np.ndarray

    @property
    def mean_drift(self) -> float:
        return float(self.drift.mean())

    @property
    def max_drift(self) -> float:
        return float(self.drift.max())

    @property
    def drift_cv(self) -> float:
        """Dispersion of the drift over clients: std / mean (0 when nobody moves)."""
        mean = self.drift.mean()
        return float(self.drift.std() / mean) if mean > 0 else 0.0

    def _pairs(self) -> np.ndarray:
        """The cosine similarities of distinct pairs of clients."""
        return self.update_cosine[~np.eye(len(self.clients), dtype=bool)]

    @property
    def mean_cosine(self) -> float:
        """Mean cosine similarity over distinct pairs of clients (NaN for a single client)."""
        pairs = self._pairs()
        return float(pairs.mean()) if len(pairs) else float("nan")

    @property
    def min_cosine(self) -> float:
        """Smallest cosine similarity over distinct pairs of clients (NaN for a single client)."""
        pairs = self._pairs()
        return float(pairs.min()) if len(pairs) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        summaries = {
            name: getattr(self, name)
            for name in ("mean_drift", "max_drift", "drift_cv", "mean_cosine", "min_cosine")
        }
        return as_json({**dataclasses.asdict(self), **summaries})


def cosine_matrix(vectors: torch.Tensor) -> np.ndarray:
    """Pairwise cosine similarities of the rows of ``vectors`` (1 on the diagonal, 0 for a
    zero row against any other): :func:`~plural.core.similarity.cosine_similarities`,
    symmetrized, with the diagonal set."""
    cosine = cosine_similarities(vectors)
    np.fill_diagonal(cosine, 1.0)
    return (cosine + cosine.T) / 2


def drift_from_updates(
    start_params: Mapping[str, torch.Tensor],
    client_params: Sequence[Mapping[str, torch.Tensor]],
    clients: Sequence[int] | None = None,
) -> ClientDrift:
    """:class:`ClientDrift` of clients that each trained from ``start_params``.

    ``clients`` names the clients (default ``0 .. K-1``). Drift is measured over all
    floating-point entries (buffers too), as the engine's per-round ``drift`` metric is.
    """
    if not client_params:
        raise ValueError("client drift needs at least one client's parameters")
    ids = _client_ids(clients, len(client_params))
    names = [n for n, t in start_params.items() if t.is_floating_point()]
    start = flat(start_params, names)
    updates = torch.stack([flat(p, names) - start for p in client_params])
    return ClientDrift(
        clients=ids, drift=updates.norm(dim=1).numpy(), update_cosine=cosine_matrix(updates)
    )


def client_drift(
    trainer: LocalTrainer,
    params: Mapping[str, torch.Tensor],
    federation: FederatedDataset,
    rng_seed: int,
    round_index: int = 0,
    clients: Iterable[int] | None = None,
) -> ClientDrift:
    """Train every client (with training data) locally from ``params``; measure the drift.

    Client ``k`` runs ``trainer.fit`` on its training split in ``round_index`` with the
    generator derived from ``(rng_seed, round_index, k, "drift")``, so the result does not
    depend on the order in which clients run.
    """
    ids = _clients_with_training_data(federation, round_index, clients)
    trained: list[Params] = []
    for cid in ids:
        train = federation.client(cid, round_index).train
        rng = torch_generator(rng_seed, round_index, cid, "drift")
        trained.append(trainer.fit(params, train.x, train.y, rng=rng).params)
    return drift_from_updates(params, trained, ids)
