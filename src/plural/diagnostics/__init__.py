"""Heterogeneity diagnostics: how non-IID is a federation, and which algorithms suit it.

* :mod:`~plural.diagnostics.labels`: label and quantity skew from the label histogram
  (JS divergence, the L1 "EMD" of Zhao et al. 2018, sizes).
* :mod:`~plural.diagnostics.gradients`: gradient dissimilarity (G^2, FedProx's B^2) at a model,
  client drift and the cosine similarity of client updates.
* :mod:`~plural.diagnostics.recommend`: cluster structure of the clients and a recommended
  family of algorithms, with the measured reasons.
* :mod:`~plural.diagnostics.plots`: PNG figures (matplotlib, loaded only when plotting).

Quick use::

    from plural.diagnostics import label_skew, gradient_dissimilarity, client_drift, recommend
    skew = label_skew(federation)
    dissimilarity = gradient_dissimilarity(trainer, params, federation)
    drift = client_drift(trainer, params, federation, rng_seed=0)
    advice = recommend(skew, dissimilarity, drift, available=plural.ALGORITHMS.names())
"""

from plural.diagnostics.gradients import (
    ClientDrift,
    GradientDissimilarity,
    client_drift,
    cosine_matrix,
    dissimilarity_from_gradients,
    distance,
    drift_from_updates,
    flat,
    gradient_dissimilarity,
)
from plural.diagnostics.labels import (
    LabelSkew,
    as_json,
    gini,
    global_distribution,
    js_divergence,
    l1_distance,
    label_distributions,
    label_skew,
    skew_from_histogram,
    tv_distance,
)
from plural.diagnostics.plots import (
    plot_client_values,
    plot_label_histogram,
    plot_similarity,
    plot_sizes,
)
from plural.diagnostics.recommend import (
    FAMILY_METHODS,
    ClusterSignal,
    Recommendation,
    cluster_structure,
    recommend,
)

__all__ = [
    "FAMILY_METHODS",
    "ClientDrift",
    "ClusterSignal",
    "GradientDissimilarity",
    "LabelSkew",
    "Recommendation",
    "as_json",
    "client_drift",
    "cluster_structure",
    "cosine_matrix",
    "dissimilarity_from_gradients",
    "distance",
    "drift_from_updates",
    "flat",
    "gini",
    "global_distribution",
    "gradient_dissimilarity",
    "js_divergence",
    "l1_distance",
    "label_distributions",
    "label_skew",
    "plot_client_values",
    "plot_label_histogram",
    "plot_similarity",
    "plot_sizes",
    "recommend",
    "skew_from_histogram",
    "tv_distance",
]
