"""Partitioners: how a pool of samples is split among federated clients.

Every partitioner is registered in :data:`plural.registry.PARTITIONERS` with a frozen config
dataclass. ``split(data, rng=...)`` is pure: all randomness comes from ``rng``. Every returned
:class:`~plural.data.types.Partition` holds each sample index at most once, no empty client,
and sorted int64 index arrays. Requests that the data cannot satisfy raise
:class:`~plural.config.ConfigError` before any heavy work.

All label partitioners reduce to one step, :func:`_partition_from_owner`, fed by a per-sample
owner array; the label-skew ones build that array from a per-client, per-class count matrix
(:func:`_owner_from_counts`). Label skew and quantity skew combine in ``dirichlet`` with
``sizes="lognormal"`` or ``"power_law"`` (the quantity partitioner's size laws).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from plural.config import ConfigError, setting
from plural.data.types import ArrayDataset, Partition
from plural.registry import PARTITIONERS

__all__ = [
    "ClassGroupsConfig",
    "ClassGroupsPartitioner",
    "ClassesPerClientConfig",
    "ClassesPerClientPartitioner",
    "DirichletConfig",
    "DirichletPartitioner",
    "IIDConfig",
    "IIDPartitioner",
    "NaturalConfig",
    "NaturalPartitioner",
    "PathologicalConfig",
    "PathologicalPartitioner",
    "QuantityConfig",
    "QuantityPartitioner",
    "sequential_split",
    "train_val_test_split",
]

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _partition_from_owner(
    owner: np.ndarray, num_clients: int, groups: np.ndarray | None = None
) -> Partition:
    """Turn ``owner[i]`` (client of sample ``i``, or -1 for unused) into a Partition."""
    order = np.argsort(owner, kind="stable").astype(np.int64)  # stable: ascending within a client
    used = owner >= 0
    sizes = np.bincount(owner[used], minlength=num_clients)
    bounds = np.cumsum(sizes)
    start = len(owner) - int(used.sum())  # the -1 entries sort first
    parts = np.split(order[start:], bounds[:-1])
    if any(len(p) == 0 for p in parts):  # a partitioner bug, not a user error
        raise RuntimeError("partitioner produced an empty client")
    return Partition(client_indices=parts, groups=groups)


def _owner_from_sizes(order: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """Owner array giving the first ``sizes[0]`` samples of ``order`` to client 0, and so on."""
    owner = np.full(n, -1, dtype=np.int64)
    owner[order[: int(sizes.sum())]] = np.repeat(np.arange(len(sizes)), sizes)
    return owner


def _shuffled_class_indices(
    labels: np.ndarray, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """The sample indices of each class, each in random order."""
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def _owner_from_counts(
    labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Owner array from ``counts[k, c]`` = samples of class ``c`` for client ``k``.

    Each class's samples are shuffled and dealt out in client order; a class's counts must not
    exceed its size (left-over samples stay unused).
    """
    owner = np.full(len(labels), -1, dtype=np.int64)
    for c, idx in enumerate(_shuffled_class_indices(labels, counts.shape[1], rng)):
        column = counts[:, c]
        owner[idx[: int(column.sum())]] = np.repeat(np.arange(counts.shape[0]), column)
    return owner


def _equal_sizes(total: int, parts: int) -> np.ndarray:
    """``parts`` sizes summing to ``total`` that differ by at most 1."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return sizes


def _apportion(
    weights: np.ndarray,
    total: int,
    rng: np.random.Generator,
    cap: np.ndarray | None = None,
) -> np.ndarray:
    """Integer counts proportional to ``weights`` that sum to ``total`` (largest remainder).

    Ties between equal remainders are broken at random. With ``cap`` no count exceeds its
    cap (``total`` must not exceed ``cap.sum()``); the surplus goes to the next-largest
    remainders.
    """
    weights = _finite_weights(np.asarray(weights, dtype=np.float64))
    if cap is not None and total > int(cap.sum()):
        raise ValueError(f"cannot apportion {total} within caps summing to {int(cap.sum())}")
    if total == 0 or weights.sum() <= 0:  # nothing to share, or no one to share it with
        return np.zeros(len(weights), dtype=np.int64)
    quota = weights * (total / weights.sum())
    counts = np.floor(quota).astype(np.int64)
    if cap is not None:
        counts = np.minimum(counts, cap)
    fraction = quota - np.floor(quota)
    tie_break = rng.random(len(weights))
    while (left := total - int(counts.sum())) > 0:
        open_ = np.ones(len(weights), bool) if cap is None else counts < cap
        # highest remainder first; random order among equal remainders
        ranked = np.lexsort((tie_break, -fraction))
        ranked = ranked[open_[ranked]][:left]
        counts[ranked] += 1
        fraction[ranked] = -1.0  # each index gets at most one extra unit per pass
    return counts


def _finite_weights(weights: np.ndarray) -> np.ndarray:
    """``weights`` whose sum is finite, so the quotas are numbers and apportioning ends.

    Weights that overflowed (a lognormal with a huge sigma draws ``inf``) share equally and
    outweigh every finite one; finite weights whose sum overflows are scaled by their maximum.
    Weights with a finite sum are returned as they are.
    """
    with np.errstate(over="ignore"):
        total = weights.sum()
    if np.isfinite(total):
        return weights
    if np.isnan(weights).any():
        raise ValueError("apportioning weights must not be NaN")
    infinite = np.isinf(weights)
    if infinite.any():
        return infinite.astype(np.float64)
    return weights / weights.max()


def _require_clients(name: str, num_clients: int, n: int, min_samples: int | None = None) -> None:
    """ConfigError unless ``num_clients`` clients of ``min_samples`` (or 1) fit into ``n``."""
    if min_samples is None:
        if num_clients > n:
            raise ConfigError(
                f"partition ({name}): num_clients = {num_clients} exceeds the {n} samples; "
                f"use num_clients <= {n}"
            )
        return
    if num_clients * min_samples > n:
        raise ConfigError(
            f"partition ({name}): num_clients * min_samples = {num_clients} * {min_samples} = "
            f"{num_clients * min_samples} exceeds the {n} samples; use num_clients <= "
            f"{n // min_samples} or min_samples <= {n // num_clients}"
        )


def _dirichlet(rng: np.random.Generator, alpha: float, k: int, rows: int) -> np.ndarray:
    """``rows`` draws of Dir(alpha * 1_k), computed in log space so tiny alpha never gives NaN.

    Uses Gamma(alpha) = Gamma(alpha + 1) * U^(1/alpha) (Marsaglia & Tsang 2000).
    """
    uniform = 1.0 - rng.random((rows, k))  # in (0, 1], so the log is finite
    log_gamma = np.log(rng.gamma(alpha + 1.0, size=(rows, k))) + np.log(uniform) / alpha
    log_gamma -= log_gamma.max(axis=1, keepdims=True)
    weights = np.exp(log_gamma)
    return weights / weights.sum(axis=1, keepdims=True)


def _law_sizes(
    law: str,
    num_clients: int,
    n: int,
    min_samples: int,
    rng: np.random.Generator,
    *,
    sigma: float,
    exponent: float,
) -> np.ndarray:
    """Client sizes from a size law (quantity skew), summing to ``n``, each >= ``min_samples``.

    Each client first gets ``min_samples``; the other ``n - num_clients * min_samples`` samples
    are shared in proportion to weights ~ lognormal(0, sigma) (``"lognormal"``), or to
    rank^-exponent over a random ranking of the clients (``"power_law"``), with
    largest-remainder rounding. Shared by the quantity partitioner and dirichlet's ``sizes``,
    so both draw the same sizes from the same rng state.
    """
    if law == "lognormal":
        weights = rng.lognormal(0.0, sigma, num_clients)
    elif law == "power_law":
        weights = (rng.permutation(num_clients) + 1.0) ** (-exponent)
    else:
        raise ValueError(f"unknown size law {law!r}; use 'lognormal' or 'power_law'")
    if not (weights > 0).any():  # every lognormal weight underflowed to 0: none stands out
        weights = np.ones(num_clients)
    return min_samples + _apportion(weights, n - num_clients * min_samples, rng)


# ---------------------------------------------------------------------------------------------
# iid
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IIDConfig:
    num_clients: int = setting(10, help="number of clients", ge=1)


@PARTITIONERS.register("iid", IIDConfig, "uniform random split into near-equal clients")
class IIDPartitioner:
    """A random permutation cut into ``num_clients`` parts whose sizes differ by at most 1."""

    def __init__(self, config: IIDConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        k, n = self.config.num_clients, len(data)
        _require_clients("iid", k, n)
        owner = _owner_from_sizes(rng.permutation(n), _equal_sizes(n, k), n)
        return _partition_from_owner(owner, k)


# ---------------------------------------------------------------------------------------------
# dirichlet
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DirichletConfig:
    num_clients: int = setting(10, help="number of clients", ge=1)
    alpha: float = setting(0.5, help="Dirichlet concentration; small = strong label skew", gt=0.0)
    min_samples: int = setting(
        10, help="every client gets at least this many samples (guaranteed by repair)", ge=1
    )
    sizes: Literal["dirichlet", "lognormal", "power_law"] = setting(
        "dirichlet",
        help="client sizes: as the per-class draw falls (dirichlet), or quantity skew from a "
        "size law (lognormal / power_law, as in the quantity partitioner) combined with label skew",
    )
    sigma: float = setting(1.0, help="sizes=lognormal: lognormal sigma of the size weights", gt=0.0)
    exponent: float = setting(
        1.5, help="sizes=power_law: sizes proportional to rank^-exponent (Zipf-like)", gt=0.0
    )


def _deficit_level(sizes: np.ndarray, deficit: int) -> int:
    """The largest level L with sum(max(0, sizes - L)) >= deficit (binary search)."""
    low, high = 0, int(sizes.max())
    while low < high:
        mid = (low + high + 1) // 2
        if int(np.maximum(sizes - mid, 0).sum()) >= deficit:
            low = mid
        else:
            high = mid - 1
    return low


def _repair_minimum(
    counts: np.ndarray, preferred: np.ndarray, min_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Raise every client of ``counts`` (clients x classes) to ``min_samples``.

    Moves exactly the total deficit D = sum(max(0, min_samples - size)) samples. They are taken
    from the largest clients, levelled down to one level L >= min_samples (the largest L whose
    surplus covers D), as random samples of each donor's own classes. The pooled samples are
    sorted by class and dealt to the under-filled clients ordered by ``preferred`` class, so a
    receiver mostly gets one class, preferably the one its draw favoured.
    """
    counts = counts.copy()
    sizes = counts.sum(axis=1)
    need = np.maximum(min_samples - sizes, 0)
    deficit = int(need.sum())
    if deficit == 0:
        return counts
    level = _deficit_level(sizes, deficit)
    take = np.maximum(sizes - (level + 1), 0)
    at_level = np.flatnonzero(sizes >= level + 1)
    extra = rng.choice(at_level, deficit - int(take.sum()), replace=False)
    take[extra] += 1
    pool = np.zeros(counts.shape[1], dtype=np.int64)
    for donor in np.flatnonzero(take):
        removed = rng.multivariate_hypergeometric(counts[donor], int(take[donor]))
        counts[donor] -= removed
        pool += removed
    receivers = np.flatnonzero(need)
    receivers = receivers[np.lexsort((rng.random(len(receivers)), preferred[receivers]))]
    counts[receivers] += _deal_consecutive(pool, need[receivers])
    return counts


def _deal_consecutive(pool: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """Per-receiver class counts when the class-sorted ``pool`` is cut into ``amounts``."""
    class_edges = np.concatenate([[0], np.cumsum(pool)])
    cut_edges = np.concatenate([[0], np.cumsum(amounts)])
    lo = np.maximum(cut_edges[:-1, None], class_edges[None, :-1])
    hi = np.minimum(cut_edges[1:, None], class_edges[None, 1:])
    return np.maximum(hi - lo, 0)


_FIT_FLOOR = 1e-6  # added to every drawn class share before fitting, so no entry is exactly 0
_FIT_TOL = 1e-3  # samples: fitting stops once every client's fitted size is this close
_FIT_MAX_ITER = 1000  # fitting never runs longer (about 15 ms for 1000 clients x 10 classes)


def _fit_margins(mixes: np.ndarray, row_sums: np.ndarray, col_sums: np.ndarray) -> np.ndarray:
    """Iterative proportional fitting (Sinkhorn) of ``mixes`` (clients x classes) to margins.

    Returns diag(u) (mixes + _FIT_FLOOR) diag(v): rows and columns are rescaled in turn, columns
    last, so column sums equal ``col_sums`` (up to float rounding) and row sums are within
    ``_FIT_TOL`` of ``row_sums`` -- or as close as ``_FIT_MAX_ITER`` iterations get. Its limit
    is the matrix with these margins of least KL divergence from ``row_sums_k * mix_k`` (the
    I-projection, Ireland & Kullback 1968). The floor keeps every entry positive, so a solution
    always exists and tiny alpha (mixes with exact zeros) cannot block convergence; it only
    moves samples to a class a client did not draw where the margins force it.
    """
    p = mixes + _FIT_FLOOR
    v = np.ones(p.shape[1])
    pv = p @ v
    for _ in range(_FIT_MAX_ITER):
        u = row_sums / pv
        v = col_sums / (u @ p)
        pv = p @ v
        if np.abs(u * pv - row_sums).max() <= _FIT_TOL:
            break
    return u[:, None] * p * v[None, :]


def _round_to_total(want: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative integers near ``want`` that sum to ``total``.

    Starts from floor(max(want, 0)); then adds 1 at the largest remainders or takes 1 at the
    smallest (among positive counts) until the total is met; ties at random.
    """
    counts = np.floor(np.maximum(want, 0.0)).astype(np.int64)
    remainder = want - counts
    tie_break = rng.random(len(want))
    while (left := total - int(counts.sum())) != 0:
        if left > 0:
            ranked = np.lexsort((tie_break, -remainder))[:left]
            counts[ranked] += 1
            remainder[ranked] = -np.inf  # each index gets at most one unit per pass
        else:
            open_ = np.flatnonzero(counts > 0)
            ranked = open_[np.lexsort((tie_break[open_], remainder[open_]))][:-left]
            counts[ranked] -= 1
            remainder[ranked] = np.inf
    return counts


def _round_margins(
    fitted: np.ndarray, col_sums: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Integer counts near ``fitted`` with column sums exactly ``col_sums``.

    Each class (column) is apportioned in turn by :func:`_round_to_total`, with each client's
    rounding error so far carried into the next class (error diffusion), so a client's
    rounding errors cancel instead of adding up over classes and its row sum ends within 1 of
    its fitted size (in practice exactly on it; :func:`_repair_rows` guarantees it).
    """
    counts = np.empty(fitted.shape, dtype=np.int64)
    carry = np.zeros(fitted.shape[0])
    for c in range(fitted.shape[1]):
        want = fitted[:, c] + carry
        counts[:, c] = _round_to_total(want, int(col_sums[c]), rng)
        carry = want - counts[:, c]
    return counts


def _repair_rows(counts: np.ndarray, fitted: np.ndarray, row_sums: np.ndarray) -> np.ndarray:
    """Make every row sum of ``counts`` equal ``row_sums`` without changing any column sum.

    Deterministic and minimal: exactly sum(max(0, row sum - target)) single samples move, each
    within one class from a client above its target to one below. Each move picks the class
    and the pair that least increase the squared distance to ``fitted`` (take where rounding
    added the most, give where it cut the most). ``row_sums`` must sum to ``counts.sum()``.
    """
    counts = counts.copy()
    excess = counts.sum(axis=1) - row_sums
    if int(excess.sum()) != 0:
        raise ValueError(f"row sums differ from the total by {int(excess.sum())}")
    error = counts - fitted
    classes = np.arange(counts.shape[1])
    while (over := np.flatnonzero(excess > 0)).size:
        under = np.flatnonzero(excess < 0)
        give = np.where(counts[over] > 0, -error[over], np.inf)
        take = error[under]
        giver, taker = give.argmin(axis=0), take.argmin(axis=0)
        c = int(np.argmin(give[giver, classes] + take[taker, classes]))
        k, j = over[giver[c]], under[taker[c]]
        counts[k, c] -= 1
        counts[j, c] += 1
        error[k, c] -= 1
        error[j, c] += 1
        excess[k] -= 1
        excess[j] += 1
    return counts


@PARTITIONERS.register(
    "dirichlet",
    DirichletConfig,
    "label skew: per-class client shares ~ Dirichlet(alpha); optionally with quantity skew "
    "(sizes: lognormal / power_law)",
)
class DirichletPartitioner:
    """Dirichlet label skew (Hsu et al. 2019, "Measuring the effects of non-identical data").

    For each class, proportions over the clients are drawn once from Dir(alpha) and the class's
    samples are split by them (largest-remainder rounding). There is no redraw loop, so any
    alpha and client count finish in one pass.

    The minimum is then guaranteed by a deterministic repair (:func:`_repair_minimum`): every
    client below ``min_samples`` is filled up to exactly ``min_samples`` with samples taken
    from the largest clients, which are levelled down to a common level that stays
    >= ``min_samples``. Departure from the pure draw: exactly sum(max(0, min_samples - size))
    samples move (the fewest any repair can move; zero when the draw already satisfies the
    minimum); clients at or below that level keep their drawn samples; donors lose random
    samples of their own classes; receivers get samples sorted by class, ordered by the class
    their draw favoured, so they stay label-skewed (mostly one class each). Feasibility
    (``num_clients * min_samples <= n``) is checked first.

    **Label skew combined with quantity skew** (``sizes="lognormal"`` or ``"power_law"``, e.g.
    alpha 0.3 with power-law sizes). The default ``sizes="dirichlet"`` is the construction
    above, unchanged. Otherwise:

    1. Client sizes are drawn from the quantity partitioner's size law (:func:`_law_sizes`, with
       ``sigma`` or ``exponent``): each >= ``min_samples``, summing to ``n``, and the very
       sizes ``quantity`` draws with the same settings and rng state.
    2. Each client draws its class mix from Dir(alpha) over the classes (per client, where the
       default draws per class over the clients).
    3. The clients x classes matrix ``size_k * mix_k`` has the right client sizes but not the
       right class totals. Iterative proportional fitting (:func:`_fit_margins`, Sinkhorn:
       rows and columns rescaled in turn, every share floored at 1e-6 so tiny alpha cannot
       stall it, at most 1000 iterations, stopping once every client is within 1e-3 samples
       of its size) gives the matrix with both margins closest to the drawn mixes (least KL
       divergence). A client whose size exceeds what its favoured classes can supply gets the
       rest from the classes the fit finds spare; smaller clients keep their drawn skew.
    4. Integer counts: each class is apportioned in turn to exactly its size, carrying each
       client's rounding error into the next class (:func:`_round_margins`), then a
       deterministic repair (:func:`_repair_rows`) moves single samples within a class from
       clients above their size to clients below it.

    How the margins are met: class totals are exact (every sample is used; rounding and row
    repair never change a class total). Client sizes are exactly the sizes drawn in step 1:
    the error-carrying rounding almost always lands on them already (no repair move in
    hundreds of random settings), and the row repair makes them exact in every case, e.g. if
    the fit stopped at its iteration cap, moving exactly sum(max(0, size - target)) samples.
    Hence every client has >= ``min_samples`` and the min-samples repair above moves nothing.
    Integer counts stayed within 2 samples of the fitted matrix in those settings. Everything
    runs a bounded number of steps: about 15 ms for 1000 clients x 10 classes, whatever alpha
    (under 1 s even if the fit is cut off after one iteration and the repair does the work).
    """

    def __init__(self, config: DirichletConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg = self.config
        _require_clients("dirichlet", cfg.num_clients, len(data), cfg.min_samples)
        class_sizes = np.bincount(data.y, minlength=data.num_classes)
        if cfg.sizes == "dirichlet":
            counts, preferred = self._counts_by_class(class_sizes, rng)
        else:
            counts, preferred = self._counts_with_sizes(class_sizes, len(data), rng)
        counts = _repair_minimum(counts, preferred, cfg.min_samples, rng)
        return _partition_from_owner(_owner_from_counts(data.y, counts, rng), cfg.num_clients)

    def _counts_by_class(
        self, class_sizes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Client x class counts from per-class Dir(alpha) shares over the clients."""
        cfg, num_classes = self.config, len(class_sizes)
        shares = _dirichlet(rng, cfg.alpha, cfg.num_clients, num_classes)  # classes x clients
        counts = np.stack(
            [_apportion(shares[c], int(class_sizes[c]), rng) for c in range(num_classes)], axis=1
        )
        return counts, np.argmax(shares, axis=0)

    def _counts_with_sizes(
        self, class_sizes: np.ndarray, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Client x class counts with sizes from the size law and mixes from Dir(alpha)."""
        cfg = self.config
        targets = _law_sizes(
            cfg.sizes,
            cfg.num_clients,
            n,
            cfg.min_samples,
            rng,
            sigma=cfg.sigma,
            exponent=cfg.exponent,
        )
        mixes = _dirichlet(rng, cfg.alpha, len(class_sizes), cfg.num_clients)  # clients x classes
        fitted = _fit_margins(mixes, targets.astype(np.float64), class_sizes.astype(np.float64))
        counts = _repair_rows(_round_margins(fitted, class_sizes, rng), fitted, targets)
        return counts, np.argmax(mixes, axis=1)


# ---------------------------------------------------------------------------------------------
# pathological shards
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PathologicalConfig:
    num_clients: int = setting(100, help="number of clients", ge=1)
    shards_per_client: int = setting(2, help="label-sorted shards given to each client", ge=1)


@PARTITIONERS.register(
    "pathological", PathologicalConfig, "FedAvg shards: label-sorted shards, a few per client"
)
class PathologicalPartitioner:
    """The pathological non-IID split of McMahan et al. 2017 (FedAvg).

    Samples are sorted by label (ties in random order), cut into
    ``num_clients * shards_per_client`` near-equal contiguous shards, and each client gets
    ``shards_per_client`` random shards. MNIST with 100 clients and 2 shards gives exactly the
    paper's 200 shards of 300. As in the paper, a client may get two shards of the same class
    (and a shard may straddle two classes).
    """

    def __init__(self, config: PathologicalConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg, n = self.config, len(data)
        num_shards = cfg.num_clients * cfg.shards_per_client
        if num_shards > n:
            raise ConfigError(
                f"partition (pathological): num_clients * shards_per_client = {cfg.num_clients}"
                f" * {cfg.shards_per_client} = {num_shards} shards exceeds the {n} samples; "
                f"use num_clients <= {n // cfg.shards_per_client} or fewer shards_per_client"
            )
        shuffled = rng.permutation(n)
        by_label = shuffled[np.argsort(data.y[shuffled], kind="stable")]
        shard_owner = np.empty(num_shards, dtype=np.int64)
        shard_owner[rng.permutation(num_shards)] = np.repeat(
            np.arange(cfg.num_clients), cfg.shards_per_client
        )
        owner = np.empty(n, dtype=np.int64)
        owner[by_label] = np.repeat(shard_owner, _equal_sizes(n, num_shards))
        return _partition_from_owner(owner, cfg.num_clients)


# ---------------------------------------------------------------------------------------------
# classes per client
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassesPerClientConfig:
    num_clients: int = setting(10, help="number of clients", ge=1)
    classes: int = setting(2, help="distinct classes held by each client", ge=1)
    share_low: float = setting(
        1.0, help="client class weights ~ U(share_low, share_high); 1.0/1.0 = equal", gt=0.0
    )
    share_high: float = setting(1.0, help="upper end of the class weight range", gt=0.0)

    def __post_init__(self) -> None:
        if self.share_low > self.share_high:
            raise ValueError(
                f"share_low ({self.share_low}) must not exceed share_high ({self.share_high})"
            )


def _assign_classes(
    num_clients: int, classes: int, available: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``num_clients x classes`` distinct classes each, every class used as evenly as possible.

    Each client in turn takes the ``classes`` least-used classes (random among equals), which
    keeps the usage of all classes within 1 of each other.
    """
    usage = np.zeros(len(available), dtype=np.float64)
    chosen = np.empty((num_clients, classes), dtype=np.int64)
    for k in range(num_clients):
        pick = np.argpartition(usage + rng.random(len(available)), classes - 1)[:classes]
        usage[pick] += 1
        chosen[k] = available[np.sort(pick)]
    return chosen


@PARTITIONERS.register(
    "classes_per_client",
    ClassesPerClientConfig,
    "label skew: each client holds a fixed number of classes",
)
class ClassesPerClientPartitioner:
    """Each client holds exactly ``classes`` distinct classes (a label-skew variant of the
    FedAvg shards, McMahan et al. 2017; the setting of pFedLoRA's framework).

    Classes are dealt so that every class present in the data is used as evenly as possible.
    Each client draws a weight ~ U(share_low, share_high) for each of its classes, and each
    class's samples go to its holders in proportion to those weights (each holder gets at least
    one). pFedLoRA's setting is ``share_low=0.4, share_high=0.6``; the defaults give equal
    shares. If ``num_clients * classes`` is below the number of classes, some classes go unused.
    """

    def __init__(self, config: ClassesPerClientConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg = self.config
        class_sizes = np.bincount(data.y, minlength=data.num_classes)
        available = np.flatnonzero(class_sizes)
        self._check(class_sizes, available)
        chosen = _assign_classes(cfg.num_clients, cfg.classes, available, rng)
        weights = np.zeros((cfg.num_clients, data.num_classes))
        rows = np.repeat(np.arange(cfg.num_clients), cfg.classes)
        weights[rows, chosen.ravel()] = rng.uniform(cfg.share_low, cfg.share_high, chosen.size)
        counts = np.zeros_like(weights, dtype=np.int64)
        for c in available:
            holders = weights[:, c] > 0
            spare = int(class_sizes[c]) - int(holders.sum())
            counts[:, c] = holders + _apportion(weights[:, c], spare, rng)
        return _partition_from_owner(_owner_from_counts(data.y, counts, rng), cfg.num_clients)

    def _check(self, class_sizes: np.ndarray, available: np.ndarray) -> None:
        cfg = self.config
        if cfg.classes > len(available):
            raise ConfigError(
                f"partition (classes_per_client): classes = {cfg.classes} but the data has "
                f"{len(available)} classes with samples (num_classes = {len(class_sizes)}); "
                f"use classes <= {len(available)}"
            )
        holders = -(-cfg.num_clients * cfg.classes // len(available))  # ceil
        smallest = int(class_sizes[available].min())
        if smallest < holders:
            raise ConfigError(
                f"partition (classes_per_client): up to {holders} clients hold each class "
                f"(num_clients * classes / {len(available)} classes) but the smallest class has "
                f"{smallest} samples; use fewer num_clients or classes so that "
                f"num_clients * classes <= {smallest * len(available)}"
            )


# ---------------------------------------------------------------------------------------------
# class groups (label-skew clusters with known ground truth)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassGroupsConfig:
    num_clients: int = setting(20, help="number of clients", ge=1)
    groups: int = setting(5, help="number of client groups, each with its own classes", ge=1)
    classes_per_group: int = setting(
        2, help="distinct classes of each group (groups share no class)", ge=1
    )
    shuffle_classes: bool = setting(
        False,
        help="give groups a random permutation of the classes (false: group g gets the g-th "
        "block of classes_per_group sorted classes)",
    )


def _group_sizes(num_clients: int, groups: int) -> np.ndarray:
    """Clients per group when ``arange(num_clients) % groups`` is dealt (any permutation)."""
    return np.bincount(np.arange(num_clients) % groups, minlength=groups)


@PARTITIONERS.register(
    "class_groups",
    ClassGroupsConfig,
    "label-skew groups with known ground truth: each group of clients holds its own classes",
)
class ClassGroupsPartitioner:
    """Clustered label skew with a known answer: ``groups`` groups of clients, each owning
    ``classes_per_group`` classes that no other group sees (e.g. MNIST, 20 clients, 5 groups of
    2 classes; the setting of pFedLIA, Rokvic et al. 2025, and of clustered-FL papers).

    It exists to test whether a method recovers the client clusters (``Partition.groups`` is
    every client's group id) and how well it personalizes when clients of a group share one
    label distribution and different groups are disjoint in label space.

    Group ``g`` gets the classes ``g * classes_per_group ... (g + 1) * classes_per_group - 1``
    of the sorted classes with samples (of a random permutation of them with
    ``shuffle_classes``). Clients are dealt to groups by a random permutation of
    ``arange(num_clients) % groups``, so group sizes differ by at most 1. Each class's samples,
    in random order, are cut into near-equal shares for its group's clients; the extra samples
    of uneven cuts go round the group's clients in a random cyclic order across its classes, so
    a client's count per class and its total are within 1 of every other client of its group.
    Samples of classes that belong to no group (when ``groups * classes_per_group`` is below
    the number of classes) are unused.
    """

    def __init__(self, config: ClassGroupsConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg = self.config
        class_sizes = np.bincount(data.y, minlength=data.num_classes)
        available = np.flatnonzero(class_sizes)
        members_per_group = _group_sizes(cfg.num_clients, cfg.groups)
        self._check(class_sizes, available, members_per_group)
        order = rng.permutation(available) if cfg.shuffle_classes else available
        group_classes = order[: cfg.groups * cfg.classes_per_group].reshape(cfg.groups, -1)
        client_group = rng.permutation(np.arange(cfg.num_clients) % cfg.groups).astype(np.int64)
        owner = np.full(len(data), -1, dtype=np.int64)
        for g in range(cfg.groups):
            members = rng.permutation(np.flatnonzero(client_group == g))
            offset = 0  # where the next class's extra samples start, cycling over the members
            for c in group_classes[g]:
                idx = rng.permutation(np.flatnonzero(data.y == c))
                shares = _equal_sizes(len(idx), len(members))  # extras on the first members
                rolled = np.roll(members, -offset)
                owner[idx] = np.repeat(rolled, shares)
                offset = (offset + len(idx) % len(members)) % len(members)
        return _partition_from_owner(owner, cfg.num_clients, client_group)

    def _check(
        self, class_sizes: np.ndarray, available: np.ndarray, members_per_group: np.ndarray
    ) -> None:
        cfg = self.config
        needed = cfg.groups * cfg.classes_per_group
        if needed > len(available):
            raise ConfigError(
                f"partition (class_groups): groups * classes_per_group = {cfg.groups} * "
                f"{cfg.classes_per_group} = {needed} classes but the data has {len(available)} "
                f"classes with samples (num_classes = {len(class_sizes)}); use "
                f"groups * classes_per_group <= {len(available)}"
            )
        if cfg.num_clients < cfg.groups:
            raise ConfigError(
                f"partition (class_groups): num_clients = {cfg.num_clients} is below groups = "
                f"{cfg.groups} but each group needs at least one client; use num_clients >= "
                f"{cfg.groups} or groups <= {cfg.num_clients}"
            )
        if cfg.shuffle_classes:
            # any class may land in the largest group: check that, so no seed can fail
            candidates = available
            holders = np.full(len(available), int(members_per_group.max()))
        else:
            candidates = available[:needed]
            holders = np.repeat(members_per_group, cfg.classes_per_group)
        short = np.flatnonzero(class_sizes[candidates] < holders)
        if len(short):
            c, clients = int(candidates[short[0]]), int(holders[short[0]])
            smallest = int(class_sizes[candidates].min())
            where = "may go to a group" if cfg.shuffle_classes else "belongs to a group"
            raise ConfigError(
                f"partition (class_groups): class {c} has {int(class_sizes[c])} samples but "
                f"{where} of {clients} clients (num_clients = {cfg.num_clients}, groups = "
                f"{cfg.groups}), and each client needs at least one sample of each of its "
                f"group's classes; use num_clients <= {smallest * cfg.groups}"
            )


# ---------------------------------------------------------------------------------------------
# quantity skew
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuantityConfig:
    num_clients: int = setting(10, help="number of clients", ge=1)
    distribution: Literal["power_law", "lognormal"] = setting(
        "lognormal", help="shape of the client size distribution"
    )
    sigma: float = setting(1.0, help="lognormal sigma of the size weights", gt=0.0)
    exponent: float = setting(
        1.5, help="power_law: sizes proportional to rank^-exponent (Zipf-like)", gt=0.0
    )
    min_samples: int = setting(10, help="every client gets at least this many samples", ge=1)


@PARTITIONERS.register("quantity", QuantityConfig, "quantity skew: IID labels, skewed client sizes")
class QuantityPartitioner:
    """Quantity skew with IID labels (as in Li et al. 2022, "Federated learning on non-IID data
    silos"; lognormal sizes follow the FedProx generators, Li et al. 2020).

    Each client first gets ``min_samples``; the other ``n - num_clients * min_samples`` samples
    are shared in proportion to weights ~ lognormal(0, sigma), or to rank^-exponent over a
    random ranking of the clients (power_law), with largest-remainder rounding
    (:func:`_law_sizes`). Sizes sum to ``n`` exactly; samples are a random permutation cut by
    those sizes.

    To combine these sizes with label skew, use the ``dirichlet`` partitioner with
    ``sizes="lognormal"`` or ``sizes="power_law"`` (and ``sigma`` / ``exponent``): it draws
    the same client sizes from the same rng state and gives each client a Dir(alpha) class
    mix, e.g. ``{name: dirichlet, alpha: 0.3, sizes: power_law}``.
    """

    def __init__(self, config: QuantityConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg, n = self.config, len(data)
        _require_clients("quantity", cfg.num_clients, n, cfg.min_samples)
        sizes = _law_sizes(
            cfg.distribution,
            cfg.num_clients,
            n,
            cfg.min_samples,
            rng,
            sigma=cfg.sigma,
            exponent=cfg.exponent,
        )
        owner = _owner_from_sizes(rng.permutation(n), sizes, n)
        return _partition_from_owner(owner, cfg.num_clients)


# ---------------------------------------------------------------------------------------------
# natural clients
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NaturalConfig:
    min_samples: int = setting(1, help="drop natural clients with fewer samples", ge=1)
    max_clients: int | None = setting(
        None, help="keep a random subset of this many clients (null = all)", ge=1
    )


def _majority(client_of_sample: np.ndarray, values: np.ndarray, num_clients: int) -> np.ndarray:
    """The most common value of ``values`` per client (ties go to the smallest value)."""
    uniques, inverse = np.unique(values, return_inverse=True)
    table = np.bincount(
        client_of_sample * len(uniques) + inverse.ravel(), minlength=num_clients * len(uniques)
    ).reshape(num_clients, len(uniques))
    return uniques[np.argmax(table, axis=1)].astype(np.int64)


@PARTITIONERS.register(
    "natural", NaturalConfig, "the dataset's own clients (writers, devices, speakers)"
)
class NaturalPartitioner:
    """The dataset's natural clients from ``data.client_ids`` (as in LEAF, Caldas et al. 2018).

    Clients (ordered by id) with fewer than ``min_samples`` samples are dropped; with
    ``max_clients`` a random subset of that many remains. Where ``data.sample_groups`` is set,
    a client's group is the most common group among its samples.
    """

    def __init__(self, config: NaturalConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        cfg = self.config
        if data.client_ids is None:
            raise ConfigError(
                f"partition (natural): dataset {data.name!r} has no natural clients; choose "
                f"iid, dirichlet, pathological, classes_per_client, class_groups or quantity"
            )
        ids, client_of_sample = np.unique(data.client_ids, return_inverse=True)
        client_of_sample = client_of_sample.ravel().astype(np.int64)
        sizes = np.bincount(client_of_sample, minlength=len(ids))
        kept = np.flatnonzero(sizes >= cfg.min_samples)
        if len(kept) == 0:
            raise ConfigError(
                f"partition (natural): min_samples = {cfg.min_samples} drops all {len(ids)} "
                f"clients of {data.name!r}; the largest has {int(sizes.max())} samples"
            )
        if cfg.max_clients is not None and cfg.max_clients < len(kept):
            kept = np.sort(rng.choice(kept, cfg.max_clients, replace=False))
        new_id = np.full(len(ids), -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept))
        owner = new_id[client_of_sample]
        groups = None
        if data.sample_groups is not None:
            used = owner >= 0
            groups = _majority(owner[used], np.asarray(data.sample_groups)[used], len(kept))
        partition = _partition_from_owner(owner, len(kept), groups)
        return dataclasses.replace(partition, source_clients=ids[kept])


# ---------------------------------------------------------------------------------------------
# per-client train / validation / test
# ---------------------------------------------------------------------------------------------


def _split_totals(n: int, val: float, test: float) -> tuple[int, int]:
    """round(n * val) and round(n * test) (halves up), reduced so that train keeps >= 1."""
    n_val, n_test = int(np.floor(n * val + 0.5)), int(np.floor(n * test + 0.5))
    while n > 0 and n_val + n_test > n - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return max(n_val, 0), max(n_test, 0)


def train_val_test_split(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    val: float,
    test: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split one client's ``indices`` into (train, val, test), stratified by label.

    ``labels`` is the full label array. Validation and test get round(n * val) and
    round(n * test) samples (fewer only where train would otherwise be empty: the larger of
    the two gives way first, validation on a tie), apportioned
    over the client's classes by largest remainder so each class is split in about the same
    proportions. Train is never empty for a non-empty client. Returns sorted int64 arrays.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"need val >= 0, test >= 0 and val + test < 1; got {val}, {test}")
    indices = np.asarray(indices, dtype=np.int64)
    n_val, n_test = _split_totals(len(indices), val, test)
    classes, inverse = np.unique(labels[indices], return_inverse=True)
    class_sizes = np.bincount(inverse.ravel(), minlength=len(classes))
    val_counts = _apportion(class_sizes, n_val, rng, cap=class_sizes)
    test_counts = _apportion(class_sizes, n_test, rng, cap=class_sizes - val_counts)
    split_of = np.zeros(len(indices), dtype=np.int64)  # 0 train, 1 val, 2 test
    for c in range(len(classes)):
        members = rng.permutation(np.flatnonzero(inverse.ravel() == c))
        v, t = int(val_counts[c]), int(test_counts[c])
        split_of[members[:v]] = 1
        split_of[members[v : v + t]] = 2
    train, valid, tst = (np.sort(indices[split_of == s]) for s in range(3))
    return train, valid, tst


def sequential_split(
    indices: np.ndarray, *, val: float, test: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split one client's ``indices`` into (train, val, test) in time order.

    For samples stored in time order (the windows of a text): the sizes are those of
    :func:`train_val_test_split` (round(n * val) and round(n * test), reduced so that train
    keeps at least one sample), but the first samples go to train, the next to validation
    and the last to test, so a client is tested on what comes after its training data.
    ``indices`` are taken in the order given; returns int64 arrays in that order.
    """
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"need val >= 0, test >= 0 and val + test < 1; got {val}, {test}")
    indices = np.asarray(indices, dtype=np.int64)
    n_val, n_test = _split_totals(len(indices), val, test)
    n_train = len(indices) - n_val - n_test
    return (
        indices[:n_train].copy(),
        indices[n_train : n_train + n_val].copy(),
        indices[n_train + n_val :].copy(),
    )
