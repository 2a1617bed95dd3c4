"""CFL's settings."""

from __future__ import annotations

import dataclasses

from plural.algorithms.fedavg import AveragingConfig
from plural.config import setting


@dataclasses.dataclass(frozen=True)
class CFLConfig(AveragingConfig):
    eps1: float | None = setting(
        None,
        help="absolute criterion: split only when the norm of the cluster's mean update is "
        "below this (paper's demo: 0.4; scales with lr, local work and model size, see "
        "cfl_state(server).norms). null (default): the scale-free criterion, max_alignment",
        ge=0,
    )
    eps2: float | None = setting(
        None,
        help="absolute criterion: split only when the largest client update norm in the "
        "cluster is above this (paper's demo: 1.6; rescale like eps1). null: not checked",
        ge=0,
    )
    max_alignment: float = setting(
        0.35,
        help="scale-free criterion (when eps1 is null): split only when the norm of the "
        "cluster's mean update is below this share of its clients' mean update norm (1: all "
        "updates point the same way; near 0: they cancel, the joint model has stalled while "
        "its clients still move); independent of lr and model size",
        gt=0,
        le=1,
    )
    min_rounds: int = setting(
        20, help="no split before this round (the joint model first nears a stationary point)", ge=0
    )
    min_cluster_size: int = setting(
        2, help="a split needs at least this many clients in each of the two children", ge=1
    )
    max_clusters: int | None = setting(
        None, help="at most this many clusters (null: no cap; the number is discovered)", ge=1
    )
    min_separation: float | None = setting(
        0.18,
        help="accept a split only if the two children's updates are more alike inside than "
        "across by this much (mean cosine within minus mean across; scale-free, unlike eps1 "
        "and eps2). True rotation/label-swap splits measured 0.20-1.47, false splits of IID "
        "federations 0.11-0.15 (tests/test_cfl.py). null: accept every split the norms trigger",
        ge=-2,
        le=2,
    )
    repeated_split: bool = setting(
        True,
        help="also accept a split whose gap is above half of min_separation when the cluster's "
        "previous check proposed the same bipartition (ARI >= 0.9): true groups propose the "
        "same split round after round (the first split of 4 rotation groups of 25: gaps "
        "0.12-0.17, repeated), IID clients a new one each time (consecutive ARI -0.05 to 0.17, "
        "gaps 0.03-0.08 at 100 clients)",
    )
