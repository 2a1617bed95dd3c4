"""Robust aggregation rules as pieces of the aggregation chain (:mod:`plural.core.aggregation`).

Each rule works on the clients' updates (``model - reference``) of one aggregation: a round's
cohort for global methods, the shared entries for partially personalized ones, one cluster
for clustered ones. Rules that need every update at once are non-streaming reducers; norm
bounding and centered clipping are per-client stages in front of the weighted mean, so they
stream (centered clipping on bucket means is a reducer: buckets need the whole round).

* coordinate-wise ``median`` and ``trimmed_mean``: Yin et al. 2018, "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates";
* ``krum`` / ``multi_krum``: Blanchard et al. 2017, "Machine Learning with Adversaries:
  Byzantine Tolerant Gradient Descent";
* ``bulyan``: El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in
  Byzantium";
* ``geometric_median`` (smoothed Weiszfeld): Pillutla et al. 2022, "Robust Aggregation for
  Federated Learning";
* ``norm_bound``: Sun et al. 2019, "Can You Really Backdoor Federated Learning?";
* ``centered_clip``: Karimireddy et al. 2021, "Learning from History for Byzantine Robust
  Optimization" (one clipping iteration per round around the previous round's aggregate, the
  setting of the paper's experiments; the center is the chain state, so it checkpoints);
  with ``bucket: s`` it clips the bucket means, the combination Karimireddy, He & Jaggi 2022
  recommend for heterogeneous clients;
* ``dnc`` (divide and conquer): Shejwalkar & Houmansadr 2021, "Manipulating the Byzantine:
  Optimizing Model Poisoning Attacks and Defenses for Federated Learning", Algorithm 2: on a
  random subset of coordinates, score each centered update by its squared projection on the
  top right singular vector and drop the ``c * f`` highest; the updates no subset dropped are
  averaged. Attacks that must move the aggregate far while staying close to honest updates
  (ALIE, IPM, min-max, sign flipping) all push the attackers the same way, which makes that
  direction the top singular one;
* ``bucket: s`` in front of any rule over all updates: Karimireddy, He & Jaggi 2022,
  "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing": the round's updates
  are shuffled and averaged in buckets of ``s``, and the rule runs on the bucket means, which
  are less heterogeneous than single clients' updates while each attacker still spoils at
  most one bucket.

Weights: the median, Krum and Bulyan ignore the clients' weights (their guarantees are for
unweighted updates); the trimmed mean, Multi-Krum's average, the geometric median and the
clipping rules use them, so that with nothing trimmed or rejected they are FedAvg's mean.

A round with fewer updates than a rule's assumed attackers allow (``n <= 2f + 2`` for Krum,
``n < 4f + 3`` for Bulyan, which happens per cluster or after dropouts) runs with the largest
``f`` the round allows; a run whose full cohort is too small is refused before it starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from plural.config import ConfigError
from plural.core.aggregation import (
    AggregationChain,
    AggregationState,
    RoundSummary,
    clip_to_norm,
    register_chain_builder,
)
from plural.core.aggregators import WeightedMean
from plural.core.params import Params, flat
from plural.robust.config import AggregatorConfig

CENTER_KEY = "centered_clip"


# ---------------------------------------------------------------------------------------------
# flattening: rules see one (clients x coordinates) matrix of the floating entries
# ---------------------------------------------------------------------------------------------


def _float_names(delta: Mapping[str, torch.Tensor]) -> list[str]:
    return [name for name, t in delta.items() if t.is_floating_point()]


def stack_updates(deltas: Sequence[Params]) -> torch.Tensor:
    """The floating entries of each update as one float64 row per client."""
    names = _float_names(deltas[0])
    if not names:
        return torch.zeros(len(deltas), 0, dtype=torch.float64)
    return torch.stack([flat(d, names) for d in deltas])


def unstack_update(vector: torch.Tensor, deltas: Sequence[Params], weights: np.ndarray) -> Params:
    """``vector`` put back into the entries of an update; non-floating entries (counters such
    as BatchNorm's ``num_batches_tracked``) are the weighted mean of the clients'."""
    out: Params = {}
    offset = 0
    others = [name for name, t in deltas[0].items() if not t.is_floating_point()]
    for name, template in deltas[0].items():
        if not template.is_floating_point():
            continue
        size = template.numel()
        out[name] = vector[offset : offset + size].reshape(template.shape)
        offset += size
    if others:
        mean = WeightedMean()
        for delta, weight in zip(deltas, _usable(weights), strict=True):
            mean.add({name: delta[name] for name in others}, float(weight))
        out.update(mean.result())
    return {name: out[name] for name in deltas[0]}


def _usable(weights: np.ndarray) -> np.ndarray:
    """The weights, or equal ones where they sum to zero."""
    weights = np.asarray(weights, dtype=np.float64)
    return weights if weights.sum() > 0 else np.ones_like(weights)


def weighted_rows(matrix: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
    """The weighted mean of the rows of ``matrix``."""
    w = torch.as_tensor(_usable(weights), dtype=torch.float64)
    return (w[:, None] * matrix).sum(0) / w.sum()


def bucket_means(
    matrix: torch.Tensor, weights: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray]:
    """The rows shuffled by ``rng`` and averaged (weighted) in consecutive buckets of
    ``size`` (the last may be smaller); each bucket weighs its members' total weight
    (Karimireddy, He & Jaggi 2022)."""
    order = rng.permutation(matrix.shape[0])
    buckets = [order[start : start + size] for start in range(0, len(order), size)]
    means = torch.stack([weighted_rows(matrix[b], weights[b]) for b in buckets])
    return means, np.asarray([weights[b].sum() for b in buckets], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# coordinate-wise rules (Yin et al. 2018)
# ---------------------------------------------------------------------------------------------


def coordinate_median(matrix: torch.Tensor) -> torch.Tensor:
    """The median of each column (the mean of the two middle values for an even count)."""
    ordered = matrix.sort(dim=0).values
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(matrix: torch.Tensor, weights: np.ndarray, trim: float) -> torch.Tensor:
    """Per column, drop the ``floor(trim * n)`` smallest and largest values and take the
    weighted mean of the rest (with nothing dropped: the weighted mean)."""
    n = matrix.shape[0]
    k = int(np.floor(trim * n))
    if k == 0:
        return weighted_rows(matrix, weights)
    values, order = matrix.sort(dim=0)
    w = torch.as_tensor(_usable(weights), dtype=torch.float64)[order]
    kept_values, kept_w = values[k : n - k], w[k : n - k]
    total = kept_w.sum(0)
    mean = (kept_values * kept_w).sum(0) / total.clamp_min(1e-300)
    return torch.where(total > 0, mean, kept_values.mean(0))


# ---------------------------------------------------------------------------------------------
# distance-based rules
# ---------------------------------------------------------------------------------------------


def _squared_distances(matrix: torch.Tensor) -> torch.Tensor:
    return torch.cdist(matrix, matrix).pow(2)


def krum_f(n: int, f: int) -> int:
    """The largest number of attackers up to ``f`` that Krum tolerates among ``n`` updates
    (``n > 2f + 2``); 0 when n < 3."""
    return max(0, min(f, (n - 3) // 2))


def krum_scores(matrix: torch.Tensor, f: int) -> torch.Tensor:
    """Each update's Krum score: the sum of squared distances to its ``n - f - 2`` nearest
    other updates (at least one)."""
    n = matrix.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    distances = _squared_distances(matrix)
    distances.fill_diagonal_(float("inf"))
    nearest = max(1, min(n - 1, n - krum_f(n, f) - 2))
    return distances.sort(dim=1).values[:, :nearest].sum(1)


def krum_select(matrix: torch.Tensor, f: int, m: int) -> list[int]:
    """The ``m`` updates with the lowest Krum scores (ties: the lower index)."""
    scores = krum_scores(matrix, f)
    order = sorted(range(matrix.shape[0]), key=lambda i: (float(scores[i]), i))
    return order[: max(1, min(m, matrix.shape[0]))]


def bulyan_f(n: int, f: int) -> int:
    """The largest number of attackers up to ``f`` that Bulyan tolerates (``n >= 4f + 3``)."""
    return max(0, min(f, (n - 3) // 4))


def bulyan(matrix: torch.Tensor, f: int) -> torch.Tensor:
    """Bulyan: choose ``theta = n - 2f`` updates by repeated Krum, then per coordinate average
    the ``beta = theta - 2f`` chosen values closest to their median."""
    n = matrix.shape[0]
    f = bulyan_f(n, f)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * f):
        best = krum_select(matrix[remaining], f, 1)[0]
        chosen.append(remaining.pop(best))
    selected = matrix[chosen]
    beta = len(chosen) - 2 * f
    median = coordinate_median(selected)
    closest = (selected - median).abs().argsort(dim=0)[:beta]
    return selected.gather(0, closest).mean(0)


def geometric_median(
    matrix: torch.Tensor, weights: np.ndarray, iterations: int, smoothing: float
) -> torch.Tensor:
    """The weighted geometric median by smoothed Weiszfeld iterations (Pillutla et al. 2022,
    Algorithm 2): ``z <- sum_i b_i x_i / sum_i b_i`` with ``b_i = a_i / max(nu, |z - x_i|)``,
    from the weighted mean, until ``z`` stops moving."""
    alpha = torch.as_tensor(_usable(weights), dtype=torch.float64)
    alpha = alpha / alpha.sum()
    z = (alpha[:, None] * matrix).sum(0)
    for _ in range(iterations):
        distances = (matrix - z).norm(dim=1).clamp_min(smoothing)
        beta = alpha / distances
        new = (beta[:, None] * matrix).sum(0) / beta.sum()
        moved = float((new - z).norm())
        z = new
        if moved <= 1e-10 * max(1.0, float(z.norm())):
            break
    return z


def stack_center(state: AggregationState, deltas: Sequence[Params]) -> torch.Tensor:
    """Centered clipping's center (the last released aggregate) as one row in the order of
    :func:`stack_updates`; zero before the first round and for entries it lacks."""
    center = state.get(CENTER_KEY, {})
    names = _float_names(deltas[0])
    parts = [
        center[name].double().reshape(-1)
        if name in center
        else torch.zeros(deltas[0][name].numel(), dtype=torch.float64)
        for name in names
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def centered_clip(
    matrix: torch.Tensor, weights: np.ndarray, center: torch.Tensor, tau: float
) -> torch.Tensor:
    """One iteration of centered clipping (Karimireddy et al. 2021) over the rows:
    ``v + sum_i w_i clip(x_i - v, tau) / sum_i w_i``."""
    offsets = matrix - center
    norms = offsets.norm(dim=1, keepdim=True)
    scale = torch.where(norms > tau, tau / norms.clamp_min(1e-300), torch.ones_like(norms))
    return center + weighted_rows(offsets * scale, weights)


def dnc_dropped(config: AggregatorConfig) -> int:
    """How many updates divide and conquer drops per coordinate subset: ``floor(c * f)``."""
    return int(np.floor(config.filter_share * config.f))


def dnc_kept(
    matrix: torch.Tensor,
    dropped: int,
    subsamples: int,
    subsample_size: int,
    rng: np.random.Generator,
) -> list[int]:
    """The rows divide and conquer keeps (Shejwalkar & Houmansadr 2021, Algorithm 2): for each
    of ``subsamples`` random coordinate subsets, the ``dropped`` rows whose centered values
    project farthest on the subset's top right singular vector are dropped; a row is kept
    if no subset drops it (at least one row is always kept)."""
    n, d = matrix.shape
    dropped = max(0, min(dropped, n - 1))
    kept = np.ones(n, dtype=bool)
    if dropped == 0 or d == 0:
        return list(range(n))
    for _ in range(subsamples):
        columns = np.sort(rng.choice(d, size=min(subsample_size, d), replace=False))
        sub = matrix[:, torch.as_tensor(columns)]
        centered = sub - sub.mean(0)
        top = torch.linalg.svd(centered, full_matrices=False).Vh[0]
        scores = (centered @ top).pow(2).numpy()
        # stable order: among equal scores the lower index is kept
        order = np.argsort(scores, kind="stable")
        kept[order[n - dropped :]] = False
    if not kept.any():  # every row dropped by some subset: keep the least suspicious one
        kept[int(np.argmin(scores))] = True
    return [int(i) for i in np.flatnonzero(kept)]


# ---------------------------------------------------------------------------------------------
# chain pieces
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MatrixReducer:
    """A robust rule over the (clients x coordinates) matrix of the round's updates."""

    config: AggregatorConfig
    streaming = False

    @property
    def name(self) -> str:
        return self.config.name

    def reduce(
        self,
        deltas: Sequence[Params],
        weights: np.ndarray,
        rng: np.random.Generator | None,
        state: AggregationState,
    ) -> Params:
        matrix, rows = stack_updates(deltas), np.asarray(weights)
        if self.config.bucket > 1:
            assert rng is not None  # the chain passes one to every rule but the mean
            matrix, rows = bucket_means(matrix, rows, self.config.bucket, rng)
        center = stack_center(state, deltas)
        return unstack_update(self.combine(matrix, rows, rng, center), deltas, weights)

    def combine(
        self,
        matrix: torch.Tensor,
        weights: np.ndarray,
        rng: np.random.Generator | None,
        center: torch.Tensor,
    ) -> torch.Tensor:
        cfg = self.config
        n = matrix.shape[0]
        if cfg.name == "centered_clip":
            return centered_clip(matrix, weights, center, cfg.tau)
        if cfg.name == "median":
            return coordinate_median(matrix)
        if cfg.name == "trimmed_mean":
            return trimmed_mean(matrix, weights, cfg.trim)
        if cfg.name == "krum":
            return matrix[krum_select(matrix, cfg.f, 1)[0]]
        if cfg.name == "multi_krum":
            m = cfg.m if cfg.m is not None else n - krum_f(n, cfg.f)
            chosen = krum_select(matrix, cfg.f, m)
            return weighted_rows(matrix[chosen], weights[chosen])
        if cfg.name == "bulyan":
            return bulyan(matrix, cfg.f)
        if cfg.name == "geometric_median":
            return geometric_median(matrix, weights, cfg.iterations, cfg.smoothing)
        if cfg.name == "dnc":
            assert rng is not None  # the chain passes one to every rule but the mean
            kept = dnc_kept(matrix, dnc_dropped(cfg), cfg.subsamples, cfg.subsample_size, rng)
            return weighted_rows(matrix[kept], weights[kept])
        raise ValueError(f"{cfg.name!r} is not a matrix rule")


@dataclasses.dataclass(frozen=True)
class NormBound:
    """Client stage: each update clipped to L2 norm ``bound`` (Sun et al. 2019)."""

    bound: float
    name = "norm_bound"

    def apply(
        self, delta: Params, weight: float, state: AggregationState
    ) -> tuple[Params, float, Mapping[str, Any]]:
        clipped, was = clip_to_norm(delta, self.bound)
        return clipped, weight, {"norm_bound_clipped": was}


@dataclasses.dataclass(frozen=True)
class CenteredClip:
    """Client stage of centered clipping: ``x -> v + clip(x - v, tau)`` around the previous
    round's aggregate ``v`` (zero at first), so the weighted mean that follows is one
    iteration of Karimireddy et al. 2021's rule."""

    tau: float
    name = "centered_clip"

    def apply(
        self, delta: Params, weight: float, state: AggregationState
    ) -> tuple[Params, float, Mapping[str, Any]]:
        center = state.get(CENTER_KEY, {})
        offsets = {
            k: v - center[k] if v.is_floating_point() and k in center else v
            for k, v in delta.items()
        }
        clipped, was = clip_to_norm(offsets, self.tau)
        recentred = {
            k: v + center[k] if v.is_floating_point() and k in center else v
            for k, v in clipped.items()
        }
        return recentred, weight, {"centered_clip_clipped": was}


class RememberCenter:
    """Post stage of centered clipping: the round's aggregate becomes the next center."""

    name = "center"
    keeps_released = True
    """It runs after every other post stage (:func:`plural.core.aggregation.chain_for`): the
    center is the aggregate as released, after privacy's noise, never the raw one."""

    def apply(
        self,
        delta: Params,
        summary: RoundSummary,
        state: AggregationState,
        rng: np.random.Generator | None,
    ) -> tuple[Params, AggregationState]:
        center = {k: v.detach().clone() for k, v in delta.items() if v.is_floating_point()}
        return delta, {**state, CENTER_KEY: center}


def chain_of(config: AggregatorConfig) -> AggregationChain | None:
    """The chain pieces of an ``aggregator`` section (None for the mean)."""
    if config.name == "mean":
        return None
    if config.name == "norm_bound":
        return AggregationChain(client_stages=(NormBound(config.bound),))
    if config.name == "centered_clip" and config.bucket == 1:
        # streaming: each update is clipped as it arrives, and the mean folds it
        return AggregationChain(
            client_stages=(CenteredClip(config.tau),), post_stages=(RememberCenter(),)
        )
    if config.name == "centered_clip":  # on bucket means: the rule needs every update first
        return AggregationChain(reducer=MatrixReducer(config), post_stages=(RememberCenter(),))
    return AggregationChain(reducer=MatrixReducer(config))


@register_chain_builder
def robust_chain(experiment: Any) -> AggregationChain | None:
    """The chain builder of the ``aggregator`` section."""
    config = getattr(experiment, "aggregator", None)
    return None if config is None else chain_of(config)


def check_cohort(config: AggregatorConfig, cohort: int) -> None:
    """ConfigError when a full round's ``cohort`` is too small for the rule's assumed
    attackers (smaller rounds at run time, e.g. per cluster, use the largest f they allow).
    With bucketing the rule sees one update per bucket."""
    f, units = config.f, -(-cohort // config.bucket)
    has = f"{cohort} clients"
    if config.bucket > 1:
        has = f"{units} buckets ({cohort} clients in buckets of {config.bucket})"
    if config.name in ("krum", "multi_krum") and units <= 2 * f + 2:
        raise ConfigError(
            f"aggregator.f: {config.name} with f={f} needs more than 2f + 2 = {2 * f + 2} "
            f"updates per round, but a round has {has}; use f <= "
            f"{max(0, (units - 3) // 2)} or sample more clients"
        )
    if config.name == "bulyan" and units < 4 * f + 3:
        raise ConfigError(
            f"aggregator.f: bulyan with f={f} needs at least 4f + 3 = {4 * f + 3} updates per "
            f"round, but a round has {has}; use f <= {max(0, (units - 3) // 4)} "
            "or sample more clients"
        )
    if config.name == "dnc" and dnc_dropped(config) >= units:
        raise ConfigError(
            f"aggregator.f: dnc drops filter_share x f = {dnc_dropped(config)} "
            f"updates per round, but a round has {has}; use a smaller f or filter_share"
        )
    if config.name == "multi_krum" and config.m is not None and config.m > units:
        raise ConfigError(
            f"aggregator.m: multi_krum averages m={config.m} updates but a round has "
            f"{has}; use m <= {units}"
        )
