"""pFedLIA's settings (see :mod:`plural.algorithms.pfedlia`)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from plural.algorithms.fedavg import AveragingConfig
from plural.config import ConfigError, setting
from plural.core.compression import Compression
from plural.core.influence import (
    NoisePolicy,
    Normalize,
)

Variant = Literal["central", "decentral"]
ScoreKind = Literal["loss", "accuracy"]
Votes = Literal["raw", "sign", "private"]
Recluster = Literal["never", "stale"]
Clustering = Literal["auto", "spectral", "optics"]
ClusterStart = Literal["lazy", "theta0"]


@dataclasses.dataclass(frozen=True)
class PFedLIAConfig(AveragingConfig):
    """pFedLIA's settings; averaging settings (weighting, server optimizer) apply per cluster."""

    variant: Variant = setting(
        "central",
        help="'central': the server clusters the clients' score rows with OPTICS; "
        "'decentral': each client keeps the peers in the top mode of its own row (a row with "
        "one mode: its helpful side, k-means with k=2) and trains with their models",
    )
    peer_agreement: bool = setting(
        True,
        help="decentral: keep a candidate only where most of the client's peers chose it "
        "first and it keeps the client too, set apart a subgroup the others' upper halves "
        "leave out, pair clients left alone that single each other out, and let a client "
        "alone or in a small neighbourhood follow that of its first choices (peer lists, "
        "which half of them a client ranks higher and the few that stand out are exchanged, "
        "scores never); false: every client keeps its own first choice, "
        "as in the paper",
    )
    warmup_rounds: int = setting(
        5, help="FedAvg rounds over the whole federation before the lazy phase", ge=0
    )
    lazy_epochs: int = setting(
        1, help="k: local epochs each client trains from theta0 in the lazy phase", ge=1
    )
    lazy_lr: float | None = setting(
        None, help="learning rate of the lazy training (null: train.lr)", gt=0
    )
    score: ScoreKind = setting(
        "loss",
        help="'loss': S_ij = L_i(theta0) - L_i(theta_j); 'accuracy': A_i(theta_j) - A_i(theta0), "
        "on client i's validation split",
    )
    normalize: Normalize = setting(
        "row",
        help="central: 'row' divides each score row by its largest absolute value; 'helpful' "
        "zeroes the negative scores first (rows say only who helps, and how much); 'none'",
    )
    symmetrize: bool | None = setting(
        None,
        help="central: cluster (S + S^T) / 2 instead of S (a pair scored one way only keeps that "
        "score); null: only when peers_scored < 1, where it fills in missing scores",
    )
    clustering: Clustering = setting(
        "auto",
        help="central: 'auto' is 'optics' where every client scores every other, handing "
        "over to 'spectral' where OPTICS calls most clients noise (1,000 clients of 14 "
        "validation images: ARI 0.27 against 1.00; the graph's clusters are then merged as "
        "merge_share says), and 'spectral' where clients score a "
        "subset (peers_scored: OPTICS compares rows on the few entries two rows share; 200 "
        "clients scoring 20: ARI 0.30 against 1.00); "
        "'optics' clusters the score rows with OPTICS (min_samples, xi; "
        "resolves small, close groups; the pieces it cuts large groups into are merged back, "
        "see merge_share); 'spectral' clusters the "
        "graph of mutually helpful scores (eigengap and a modularity test choose the number "
        "of clusters, then each cluster is clustered again on its own subgraph; holds from 20 "
        "to 1,000 clients of well-separated groups, but merges "
        "close small groups such as English and German in the fortunes federation)",
    )
    clusters: int | None = setting(
        None,
        help="central: null finds the number of clusters; a number k forces k clusters "
        "(spectral: k eigenvectors; optics: average linkage on the row distances; 1 is FedAvg)",
        ge=1,
    )
    min_samples: int = setting(
        3,
        help="OPTICS: neighbours that make a client a cluster core, and the smallest cluster "
        "(2 split true groups of 4 clients into pairs in our measurements; 3 did not)",
        ge=2,
    )
    xi: float = setting(0.05, help="OPTICS: minimum steepness of a cluster boundary", gt=0, lt=1)
    noise: NoisePolicy = setting(
        "own",
        help="clients OPTICS leaves unclustered: 'own' (a cluster of their own) or 'nearest' "
        "(the nearest cluster)",
    )
    merge_share: float | None = setting(
        0.6,
        help="central, optics (and auto's hand-over to the score graph): merge two clusters "
        "whose members score each other at least this "
        "share of their pooled mean score within (pieces of one group score each other as "
        "their mates do; distinct groups far lower), split a cluster whose halves do not, and "
        "keep a left-out client in the cluster OPTICS's hierarchy gave it only if that cluster "
        "helps it this share of what its closest peers give; 0.5 and 0.6 gave the same "
        "clusters on every saved score matrix, 0.7 left one client of 200 out "
        "(benchmarks/README.md, 'the scores check'); null: OPTICS's clusters as they are",
        gt=0,
    )
    votes: Votes = setting(
        "raw",
        help="central: what clients send: 'raw' scores, 'sign' votes (+1 helps, -1 not), or "
        "'private' sign votes by randomized response (epsilon-DP per vote)",
    )
    epsilon: float = setting(1.0, help="'private': privacy budget of each vote", gt=0)
    peers_scored: float = setting(
        1.0,
        help="how many of the other clients each client scores (a random subset; fewer lazy "
        "models relayed): a share if at most 1 (1: all), else a count (e.g. 20; all if fewer)",
        gt=0,
    )
    compression: Compression = setting(
        "none",
        help="lazy updates theta_j - theta0 as sent: 'none', 'topk' (largest entries, "
        "topk_fraction of each tensor) or 'int8' (8-bit quantisation)",
    )
    topk_fraction: float = setting(
        0.1, help="'topk': share of each tensor's entries kept", gt=0, le=1
    )
    cluster_start: ClusterStart = setting(
        "lazy",
        help="what each cluster's model (decentral: each client's) starts from after the "
        "first lazy phase: 'lazy': theta0 plus the mean of its members' (peers') lazy "
        "updates (weighted by their samples under weighting: samples, else equally; no "
        "server optimizer), so the lazy training counts as the clusters' first round of "
        "averaging; 'theta0': theta0, that training discarded (with clusters: 1, exactly "
        "FedAvg)",
    )
    recluster: Recluster = setting(
        "never",
        help="'never': cluster once; 'stale': re-run the lazy phase for clients whose "
        "validation loss under their cluster's model rose by stale_rise (drift)",
    )
    stale_rise: float = setting(
        0.5,
        help="'stale': rise of the validation loss (loss units) over its lowest since the "
        "client was clustered that marks the client's cluster as stale",
        gt=0,
    )

    def __post_init__(self) -> None:
        if self.variant == "decentral" and self.votes != "raw":
            raise ConfigError(
                f"votes: {self.votes!r} applies to the central variant only (in the decentral "
                "variant scores never leave the client); use votes: raw or variant: central"
            )
        if self.variant == "central" and not self.peer_agreement:
            raise ConfigError(
                "peer_agreement applies to the decentral variant only; remove it or use "
                "variant: decentral"
            )
        if self.variant == "decentral" and self.clusters is not None:
            raise ConfigError(
                "clusters: applies to the central variant only (decentral clients choose their "
                "peers from their own scores); use clusters: null or variant: central"
            )
