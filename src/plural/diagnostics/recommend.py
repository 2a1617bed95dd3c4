"""From measured heterogeneity to a family of algorithms: a short, documented decision list.

The measurements are those of :mod:`plural.diagnostics.labels` and
:mod:`plural.diagnostics.gradients`, taken at a fresh (round 0) model: later in training the
global gradient shrinks and B^2 grows for any federation. The thresholds below were calibrated
on the scikit-learn digits (10-40 clients; logistic regression and an MLP with 8 hidden units;
1-2 local epochs; 3 seeds); the values measured there are quoted next to each constant. They
are heuristics: every reason the recommendation gives quotes the number it measured and the
threshold it compared it with, so a reader can judge a borderline case.

The rules, first match wins (:data:`RULES`):

1. ``multi_task`` if B^2 >= B2_EXTREME, or B^2 >= B2_SEVERE with little local data;
2. ``clustered`` if the client updates form distinct groups (:func:`cluster_structure`);
3. ``fedavg`` if labels are near-IID and B^2 and drift dispersion are low (where measured);
4. ``personalized`` if label skew is strong, or B^2 severe, and clients have enough data;
5. ``shared_body`` if label skew is strong, clients hold few classes and little data;
6. otherwise ``robust_global``.

Families and the settings they are designed for:

* ``fedavg``: near-IID clients (McMahan et al. 2017).
* ``robust_global``: one global model, with a correction for moderate client drift: FedProx
  (Li et al. 2020), SCAFFOLD (Karimireddy et al. 2020).
* ``clustered``: clients fall into groups with different optima: IFCA (Ghosh et al. 2020),
  CFL (Sattler et al. 2020), pFedLIA.
* ``personalized``: strong skew and enough local data to adapt a global model per client:
  fine-tuning, Ditto (Li et al. 2021), pFedMe (T. Dinh et al. 2020).
* ``shared_body``: strong label skew, few classes and little data per client: share the
  feature extractor, keep the classifier head local: FedPer (Arivazhagan et al. 2019), FedRep
  (Collins et al. 2021).
* ``multi_task``: severe heterogeneity: MOCHA (Smith et al. 2017) or local-heavy training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from plural.diagnostics.gradients import ClientDrift, GradientDissimilarity
from plural.diagnostics.labels import LabelSkew, as_json

# --- label skew (mean JS divergence to the pooled label distribution, bits) -----------------
# IID clients measure 0.01-0.03 from sampling noise alone (digits, 4-13 samples per class);
# Dirichlet alpha = 1 measures about 0.11.
JS_NEAR_IID = 0.05
# Dirichlet alpha = 0.3 on 10 classes measures about 0.31, two classes per client 0.61: from
# here on each client's label mix is far from the population's.
JS_STRONG = 0.3

# --- gradient dissimilarity B^2 at the fresh model (1 = identical clients) ------------------
# IID clients measure 1.1-2.2 (sampling noise inflates B^2 when clients hold few samples);
# Dirichlet alpha = 1 measures 4.3-5.4. Rotated or label-swapped groups also stay near 2 at a
# fresh model: those show in the cluster structure of the updates instead.
B2_NEAR_IID = 2.5
# Two classes per client or Dirichlet alpha = 0.1 measure 17-29, alpha = 0.05 20-34, one
# class per client 49-55. From 30 on, clients pull in nearly opposite directions; with little
# local data nothing but a multi-task model (sharing through task relations) serves them.
B2_SEVERE = 30.0
# Beyond this the clients' gradients cancel almost completely: a single model makes no
# progress for anyone, whatever the local data.
B2_EXTREME = 100.0

# --- client drift dispersion (std / mean of ||w_k - w|| after one local epoch) ---------------
# IID clients of equal size measure 0.05-0.19; quantity skew 0.44-0.6, Dirichlet alpha <= 0.1
# 0.34-0.56.
DRIFT_CV_NEAR_IID = 0.3

# --- local data ------------------------------------------------------------------------------
# A client can adapt a model on its own (fine-tuning, Ditto) when it has some tens of training
# samples for each class it holds; below that a personal head or model overfits.
SAMPLES_PER_CLASS_RICH = 25.0
# "Few classes": a client sees at most this fraction of the classes, the setting where a
# shared body with a local head (FedPer, FedRep) is designed to help.
FEW_CLASSES_FRACTION = 0.5

# --- cluster structure of the client-update cosine similarities ------------------------------
# Silhouette above 0.5 is "a reasonable structure" (Kaufman & Rousseeuw 1990, "Finding Groups
# in Data"); below 0.25 there is no substantial structure. IID clients measured 0.17-0.42;
# two rotated or label-swapped groups 0.57-0.83.
SILHOUETTE_MIN = 0.5
# Weaker structure still means groups when the labels cannot explain it: 4 rotation groups and
# 2 label-swap groups of digits (MLP, momentum 0.9) measured 0.39-0.47 with the groups found
# exactly (ARI 1), while label skew alone (Dirichlet 0.3) also reaches 0.48. So from 0.3 on,
# clusters count as groups only if the label skew is not strong.
SILHOUETTE_WEAK = 0.3
# Silhouettes are scale-free: near-identical updates can still split "cleanly". Require the
# clusters to differ by this much in cosine distance (between minus within) as well.
SEPARATION_MIN = 0.2
# A lone outlier client is not a group.
MIN_CLUSTER_SIZE = 2
MAX_CLUSTERS = 8

FAMILY_METHODS: dict[str, list[str]] = {
    "fedavg": ["fedavg"],
    "robust_global": ["fedprox", "scaffold"],
    "clustered": ["ifca", "cfl", "pfedlia"],
    "personalized": ["finetune", "ditto", "pfedme"],
    "shared_body": ["fedper", "fedrep"],
    "multi_task": ["mocha", "local"],
}
# Where a family has no available method, the families to try next, closest first.
FALLBACK_FAMILIES: dict[str, list[str]] = {
    "fedavg": ["robust_global"],
    "robust_global": ["fedavg"],
    "clustered": ["personalized", "shared_body", "robust_global", "fedavg"],
    "personalized": ["shared_body", "multi_task", "robust_global", "fedavg"],
    "shared_body": ["personalized", "multi_task", "robust_global", "fedavg"],
    "multi_task": ["personalized", "shared_body", "fedavg"],
}


# ---------------------------------------------------------------------------------------------
# cluster structure
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterSignal:
    """Whether client updates fall into distinct groups.

    ``k`` is the best number of clusters (1 if no split qualifies), ``silhouette`` its mean
    silhouette (NaN if none was computed), ``separation`` the mean cosine distance between
    clusters minus within them, ``assignment`` each client's cluster, ``silhouettes`` the
    silhouette of every ``k`` tried.
    """

    k: int
    silhouette: float
    separation: float
    assignment: np.ndarray
    silhouettes: dict[int, float]

    @property
    def distinct(self) -> bool:
        """At least two groups with a good silhouette and a real gap between them."""
        return (
            self.k >= 2 and self.silhouette >= SILHOUETTE_MIN and self.separation >= SEPARATION_MIN
        )

    def to_dict(self) -> dict[str, Any]:
        return as_json({**dataclasses.asdict(self), "distinct": self.distinct})


def _cosine_distances(similarity: np.ndarray) -> np.ndarray:
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("the similarity matrix has non-finite entries")
    d = np.clip(1.0 - (s + s.T) / 2, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def _separation(d: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance between clients of different clusters minus within the same cluster."""
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    within = d[same & off_diagonal]
    between = d[~same]
    if len(within) == 0 or len(between) == 0:
        return float("nan")
    return float(between.mean() - within.mean())


def cluster_structure(similarity: np.ndarray, max_clusters: int = MAX_CLUSTERS) -> ClusterSignal:
    """Best split of clients by their pairwise (cosine) similarity.

    Average-linkage agglomerative clustering on the distance ``1 - similarity`` for
    ``k = 2 .. min(max_clusters, K - 1)``; the split with the best silhouette (Rousseeuw 1987)
    among those whose clusters all hold at least ``MIN_CLUSTER_SIZE`` clients wins. This is
    deterministic (no random initialisation), unlike k-means or spectral clustering.
    """
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    d = _cosine_distances(similarity)
    n = len(d)
    best = ClusterSignal(1, float("nan"), float("nan"), np.zeros(n, dtype=np.int64), {})
    scores: dict[int, float] = {}
    for k in range(2, min(max_clusters, n - 1) + 1):
        clustering = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average")
        labels = clustering.fit_predict(d).astype(np.int64)
        scores[k] = float(silhouette_score(d, labels, metric="precomputed"))
        big_enough = np.bincount(labels).min() >= MIN_CLUSTER_SIZE
        if big_enough and (best.k == 1 or scores[k] > best.silhouette):
            best = ClusterSignal(k, scores[k], _separation(d, labels), labels, {})
    return dataclasses.replace(best, silhouettes=scores)


# ---------------------------------------------------------------------------------------------
# findings: one measured number compared with one threshold
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Finding:
    """A comparison of a measured value with a threshold, as a sentence quoting both."""

    holds: bool
    text: str
    measured: bool = True


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}
_NEGATED = {"<": ">=", "<=": ">", ">=": "<", ">": "<="}


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.4g}"


def _check(label: str, value: float, op: str, threshold: float, yes: str, no: str) -> Finding:
    """``value op threshold``, phrased as e.g. "mean JS divergence 0.41 >= 0.3: strong label
    skew" (or with the negated operator and ``no``). An unmeasured (NaN) value never holds."""
    if math.isnan(value):
        return Finding(False, f"{label} not measured", measured=False)
    holds = _COMPARE[op](value, threshold)
    shown, meaning = (op, yes) if holds else (_NEGATED[op], no)
    return Finding(holds, f"{label} {_number(value)} {shown} {_number(threshold)}: {meaning}")


def _optional(finding: Finding) -> Finding:
    """``finding``, or one that holds if its value was not measured (absent evidence)."""
    return finding if finding.measured else dataclasses.replace(finding, holds=True)


def _negate(finding: Finding) -> Finding:
    return dataclasses.replace(finding, holds=finding.measured and not finding.holds)


@dataclasses.dataclass(frozen=True)
class _Signals:
    """Everything the decision list looks at, measured once."""

    labels_iid: Finding
    b2_iid: Finding
    drift_even: Finding
    strong_skew: Finding
    severe_b2: Finding
    extreme_b2: Finding
    data_rich: Finding
    few_classes: Finding
    clusters: Finding
    weak_clusters: Finding

    @property
    def data_poor(self) -> Finding:
        return _negate(self.data_rich)


def _measure(scores: dict[str, float], cluster: ClusterSignal | None) -> _Signals:
    js, b2 = scores["mean_js"], scores["b2"]
    return _Signals(
        labels_iid=_check(
            "mean JS divergence", js, "<", JS_NEAR_IID, "labels near-IID", "labels not IID"
        ),
        b2_iid=_check(
            "B^2", b2, "<", B2_NEAR_IID, "gradients close to IID", "gradients dissimilar"
        ),
        drift_even=_check(
            "drift dispersion (std/mean)",
            scores["drift_cv"],
            "<",
            DRIFT_CV_NEAR_IID,
            "clients drift alike",
            "clients drift unevenly",
        ),
        strong_skew=_check(
            "mean JS divergence", js, ">=", JS_STRONG, "strong label skew", "label skew moderate"
        ),
        severe_b2=_check(
            "B^2", b2, ">=", B2_SEVERE, "severe gradient dissimilarity", "dissimilarity not severe"
        ),
        extreme_b2=_check(
            "B^2",
            b2,
            ">=",
            B2_EXTREME,
            "client gradients cancel almost completely",
            "a shared model still makes progress",
        ),
        data_rich=_check(
            "median training samples per held class",
            scores["median_samples_per_class"],
            ">=",
            SAMPLES_PER_CLASS_RICH,
            "enough local data to adapt per client",
            "little local data per client",
        ),
        few_classes=_check(
            "mean fraction of classes per client",
            scores["class_fraction"],
            "<=",
            FEW_CLASSES_FRACTION,
            "few classes per client",
            "most classes on every client",
        ),
        clusters=_cluster_finding(cluster, SILHOUETTE_MIN),
        weak_clusters=_cluster_finding(cluster, SILHOUETTE_WEAK),
    )


def _cluster_finding(cluster: ClusterSignal | None, min_silhouette: float) -> Finding:
    if cluster is None:
        return Finding(False, "client-update clusters not measured", measured=False)
    if cluster.k < 2:
        return Finding(False, "no split of the client updates into groups of 2+ clients")
    silhouette = _check(
        f"silhouette of {cluster.k} update clusters",
        cluster.silhouette,
        ">=",
        min_silhouette,
        "clients form groups",
        "no clear groups",
    )
    gap = _check(
        "cosine-distance gap between clusters",
        cluster.separation,
        ">=",
        SEPARATION_MIN,
        "the groups pull in different directions",
        "the groups' updates are alike",
    )
    return Finding(
        silhouette.holds and gap.holds,
        f"{silhouette.text}; {gap.text}",
        measured=silhouette.measured and gap.measured,
    )


# ---------------------------------------------------------------------------------------------
# the decision list
# ---------------------------------------------------------------------------------------------

Rule = tuple[str, Callable[[_Signals], list[Finding]]]

# Each rule names a family and the findings that must all hold; the first rule that holds wins.
RULES: list[Rule] = [
    ("multi_task", lambda s: [s.extreme_b2]),
    ("multi_task", lambda s: [s.severe_b2, s.data_poor]),
    ("clustered", lambda s: [s.clusters]),
    ("clustered", lambda s: [s.weak_clusters, _negate(s.strong_skew)]),
    ("fedavg", lambda s: [_optional(s.labels_iid), _optional(s.b2_iid), _optional(s.drift_even)]),
    ("personalized", lambda s: [s.strong_skew, s.data_rich]),
    ("personalized", lambda s: [s.severe_b2, s.data_rich]),
    ("shared_body", lambda s: [s.strong_skew, s.few_classes, s.data_poor]),
]
DEFAULT_FAMILY = "robust_global"


def _decide(signals: _Signals) -> tuple[str, list[str]]:
    """The first rule whose findings all hold, with those findings as reasons."""
    for family, findings_of in RULES:
        findings = findings_of(signals)
        if all(f.holds for f in findings):
            return family, [f.text for f in findings]
    looked_at = [
        signals.labels_iid,
        signals.b2_iid,
        signals.drift_even,
        signals.clusters,
        signals.strong_skew,
        signals.severe_b2,
    ]
    reasons = [f.text for f in looked_at if f.measured]
    return DEFAULT_FAMILY, [*reasons, "moderate heterogeneity: one global model, drift-corrected"]


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """A family of algorithms, its methods, those that are available, and why.

    ``reasons`` quote each measured value and the threshold it was compared with; ``notes``
    say what was substituted when no method of the family is available; ``scores`` hold the
    measured values (NaN where not measured).
    """

    family: str
    methods: list[str]
    available_methods: list[str]
    reasons: list[str]
    scores: dict[str, float]
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return as_json(dataclasses.asdict(self))


def _available_methods(family: str, available: set[str]) -> tuple[list[str], list[str]]:
    """The family's available methods, else those of the closest family that has some."""
    own = [m for m in FAMILY_METHODS[family] if m in available]
    if own:
        return own, []
    for other in FALLBACK_FAMILIES[family]:
        substitutes = [m for m in FAMILY_METHODS[other] if m in available]
        if substitutes:
            note = (
                f"none of {', '.join(FAMILY_METHODS[family])} is available; "
                f"closest available: {', '.join(substitutes)} ({other})"
            )
            return substitutes, [note]
    return [], [f"none of {', '.join(FAMILY_METHODS[family])} nor a fallback is available"]


def _label_scores(skew: LabelSkew | None) -> dict[str, float]:
    names = ("mean_js", "max_js", "mean_emd", "mean_classes", "class_fraction")
    if skew is None:
        return dict.fromkeys((*names, "median_samples_per_class", "size_cv"), float("nan"))
    has_data = skew.sizes > 0
    return {
        "mean_js": skew.mean_js,
        "max_js": skew.max_js,
        "mean_emd": skew.mean_emd,
        "mean_classes": skew.mean_classes,
        "class_fraction": (
            skew.mean_classes / skew.num_classes if skew.num_classes else float("nan")
        ),
        "median_samples_per_class": (
            float(np.median(skew.samples_per_class[has_data])) if has_data.any() else float("nan")
        ),
        "size_cv": skew.size_cv,
    }


def _scores(
    skew: LabelSkew | None,
    dissimilarity: GradientDissimilarity | None,
    drift: ClientDrift | None,
    cluster: ClusterSignal | None,
) -> dict[str, float]:
    nan = float("nan")
    return {
        **_label_scores(skew),
        "g2": dissimilarity.g2 if dissimilarity else nan,
        "b2": dissimilarity.b2 if dissimilarity else nan,
        "drift_cv": drift.drift_cv if drift else nan,
        "mean_update_cosine": drift.mean_cosine if drift else nan,
        "clusters": float(cluster.k) if cluster else nan,
        "silhouette": cluster.silhouette if cluster else nan,
        "cluster_separation": cluster.separation if cluster else nan,
    }


def recommend(
    label_skew: LabelSkew | None,
    dissimilarity: GradientDissimilarity | None,
    drift: ClientDrift | None,
    *,
    cluster: ClusterSignal | None = None,
    available: Iterable[str],
) -> Recommendation:
    """Recommend a family of algorithms from the measured heterogeneity (see :data:`RULES`).

    Any of ``label_skew`` (None for regression targets), ``dissimilarity`` and ``drift`` may
    be None when it was not measured, but not all three; the rules that need a missing
    measurement do not fire, and ``fedavg`` asks only that what was measured looks IID.
    ``cluster`` defaults to :func:`cluster_structure` of the
    drift's update similarities (with at least 3 clients). ``available`` names the algorithms
    that can be run (e.g. ``plural.ALGORITHMS.names()``).
    """
    if label_skew is None and dissimilarity is None and drift is None:
        raise ValueError("recommend needs at least one of label_skew, dissimilarity, drift")
    if cluster is None and drift is not None and len(drift.clients) >= 3:
        cluster = cluster_structure(drift.update_cosine)
    scores = _scores(label_skew, dissimilarity, drift, cluster)
    signals = _measure(scores, cluster)
    family, reasons = _decide(signals)
    chosen, notes = _available_methods(family, set(available))
    return Recommendation(family, list(FAMILY_METHODS[family]), chosen, reasons, scores, notes)
