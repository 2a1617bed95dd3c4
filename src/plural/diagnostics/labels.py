"""Label and quantity skew of a federation, measured from its per-client label histogram.

Distances between a client's label distribution and the pooled one:

* Jensen-Shannon divergence in bits (Lin 1991, "Divergence measures based on the Shannon
  entropy"), bounded in [0, 1]; used to quantify label skew by e.g. the NIID-Bench study
  (Li et al. 2022, "Federated Learning on Non-IID Data Silos: An Experimental Study").
* The L1 distance ``sum_c |p_c - q_c|`` in [0, 2], which Zhao et al. 2018 ("Federated Learning
  with Non-IID Data") call the earth mover's distance (EMD) and show to predict FedAvg's
  accuracy loss.
* The total variation distance, half the L1 distance, in [0, 1].

Quantity skew is summarised by the coefficient of variation and the Gini coefficient of the
clients' training set sizes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from plural.data.federated import FederatedDataset


def as_json(value: Any) -> Any:
    """``value`` as plain JSON data: arrays become lists, NaN and infinities become None.

    Strict JSON has no NaN or infinity, so they are written as ``null``.
    """
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return as_json(value.tolist())
    if isinstance(value, np.generic):
        return as_json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _counts(histogram: np.ndarray) -> np.ndarray:
    counts = np.asarray(histogram, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"expected a (clients, classes) histogram, got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("a label histogram holds counts, which must be >= 0")
    return counts


def label_distributions(histogram: np.ndarray) -> np.ndarray:
    """Each client's label distribution: the rows of ``histogram`` normalised to sum 1.

    A client with no samples gets a row of zeros.
    """
    counts = _counts(histogram)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def global_distribution(histogram: np.ndarray) -> np.ndarray:
    """The label distribution of all clients' samples pooled (zeros if there are none)."""
    return label_distributions(_counts(histogram).sum(axis=0, keepdims=True))[0]


def _distribution(p: np.ndarray, what: str) -> np.ndarray:
    """``p`` as a probability vector (counts are accepted and normalised)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1 or (p < 0).any():
        raise ValueError(f"{what}: expected a 1-D vector of non-negative masses")
    total = p.sum()
    if not total > 0:
        raise ValueError(f"{what}: the distribution has no mass")
    return p / total


def _pair(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, q = _distribution(p, "p"), _distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"distributions over different supports: {p.shape} vs {q.shape}")
    return p, q


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    """KL(p || m) in bits, for ``m`` positive wherever ``p`` is (0 log 0 = 0)."""
    support = p > 0
    return float(np.sum(p[support] * np.log2(p[support] / m[support])))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two distributions, in bits: 0 if equal, 1 if disjoint.

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2`` (Lin 1991).
    Inputs may be counts; they are normalised first.
    """
    p, q = _pair(p, q)
    m = (p + q) / 2
    return min(max((_kl_bits(p, m) + _kl_bits(q, m)) / 2, 0.0), 1.0)


def l1_distance(p: np.ndarray, q: np.ndarray) -> float:
    """``sum_c |p_c - q_c|`` in [0, 2]: the "EMD" of Zhao et al. 2018 (inputs normalised)."""
    p, q = _pair(p, q)
    return float(np.abs(p - q).sum())


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance ``max_A |p(A) - q(A)| = L1 / 2``, in [0, 1]."""
    return l1_distance(p, q) / 2


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative ``values``: 0 if all equal, towards 1 if one holds all.

    ``G = sum_i sum_j |x_i - x_j| / (2 n^2 mean)`` (0 for an empty or all-zero vector).
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    # With x sorted ascending, sum_i sum_j |x_i - x_j| = 2 sum_i (2i - n - 1) x_i (i from 1).
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * total))


@dataclasses.dataclass(frozen=True)
class LabelSkew:
    """Label and quantity skew, per client and summarised.

    Per client: ``js`` (JS divergence to the pooled distribution, bits; NaN for a client with
    no samples), ``emd`` (L1 distance to the pooled distribution), ``classes_present``
    (classes with at least one sample), ``dominant_share`` (share of the largest class) and
    ``sizes`` (training set sizes). ``num_classes`` counts the classes present in the pooled
    data.
    """

    js: np.ndarray
    emd: np.ndarray
    classes_present: np.ndarray
    dominant_share: np.ndarray
    sizes: np.ndarray
    num_classes: int
    mean_js: float
    max_js: float
    mean_emd: float
    mean_classes: float
    size_mean: float
    size_median: float
    size_std: float
    size_min: int
    size_max: int
    size_cv: float
    size_gini: float

    @property
    def num_clients(self) -> int:
        return len(self.js)

    @property
    def samples_per_class(self) -> np.ndarray:
        """Per client: training samples per class it holds (0 for a client with no classes)."""
        return self.sizes / np.maximum(self.classes_present, 1)

    def to_dict(self) -> dict[str, Any]:
        return as_json(dataclasses.asdict(self))


def skew_from_histogram(histogram: np.ndarray, sizes: np.ndarray | None = None) -> LabelSkew:
    """:class:`LabelSkew` of a ``(clients, classes)`` label histogram.

    ``sizes`` are the clients' training set sizes (default: the histogram's row sums).
    """
    counts = _counts(histogram)
    dists = label_distributions(counts)
    pooled = global_distribution(counts)
    has_data = counts.sum(axis=1) > 0
    js = _per_client(js_divergence, dists, pooled, has_data)
    emd = _per_client(l1_distance, dists, pooled, has_data)
    sizes = counts.sum(axis=1) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if len(sizes) != len(counts):
        raise ValueError(f"{len(sizes)} sizes for {len(counts)} clients")
    classes_present = (counts > 0).sum(axis=1)
    return LabelSkew(
        js=js,
        emd=emd,
        classes_present=classes_present,
        dominant_share=dists.max(axis=1, initial=0.0),
        sizes=sizes.astype(np.int64),
        num_classes=int((pooled > 0).sum()),
        mean_js=_nan_stat(np.nanmean, js),
        max_js=_nan_stat(np.nanmax, js),
        mean_emd=_nan_stat(np.nanmean, emd),
        mean_classes=_nan_stat(np.mean, classes_present[has_data]),
        size_mean=_nan_stat(np.mean, sizes),
        size_median=_nan_stat(np.median, sizes),
        size_std=_nan_stat(np.std, sizes),
        size_min=int(sizes.min()) if len(sizes) else 0,
        size_max=int(sizes.max()) if len(sizes) else 0,
        size_cv=float(sizes.std() / sizes.mean()) if len(sizes) and sizes.mean() > 0 else 0.0,
        size_gini=gini(sizes),
    )


def _per_client(
    measure: Any, dists: np.ndarray, pooled: np.ndarray, has_data: np.ndarray
) -> np.ndarray:
    """``measure(client distribution, pooled)`` per client, NaN for clients without data."""
    return np.array(
        [measure(p, pooled) if ok else np.nan for p, ok in zip(dists, has_data, strict=True)]
    )


def _nan_stat(stat: Any, values: np.ndarray) -> float:
    """``stat(values)``, NaN when no value is finite (instead of a NumPy warning)."""
    return float(stat(values)) if np.isfinite(values).any() else float("nan")


def label_skew(federation: FederatedDataset, round_index: int = 0) -> LabelSkew:
    """Label and quantity skew of ``federation`` as its clients' data is in ``round_index``.

    The label histogram covers each client's train, validation and test samples (its local
    distribution); the sizes are training set sizes.
    """
    clients = range(federation.num_clients)
    sizes = np.array([len(federation.client(cid, round_index).train) for cid in clients])
    return skew_from_histogram(federation.label_histogram(round_index), sizes)
