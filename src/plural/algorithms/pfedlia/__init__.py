"""pFedLIA (Rokvic, Danassis, Faltings 2025, "Lazy But Effective: Collaborative Personalized
Federated Learning with Heterogeneous Data", arXiv 2505.02540): clients cluster themselves by
a lazy influence approximation, then train FedAvg inside their cluster.

The run, round by round:

1. **Warm-up** (rounds ``1..warmup_rounds``): FedAvg over the whole federation gives the
   shared start ``theta0`` (the initial model when ``warmup_rounds`` is 0).
2. **Lazy phase** (start of round ``warmup_rounds + 1``, every client takes part whatever the
   sampling): client ``j`` trains ``lazy_epochs`` epochs from ``theta0`` on its training split
   and uploads ``theta_j - theta0`` (optionally compressed: ``compression``). The server relays
   to each client the lazy models it is to score (all others, or a random ``peers_scored``
   share of them).
3. **Influence**: client ``i`` scores each lazy model on its *own* validation split,
   ``S[i, j] = L_i(theta0) - L_i(theta_j)`` (``score: accuracy``: ``A_i(theta_j) -
   A_i(theta0)``); positive means ``j``'s data helps ``i``. It scores its own lazy model too.
4. **Clustering**, once by default:

   * ``variant: central``: clients send their score rows (raw, sign votes, or differentially
     private votes by randomized response, as in the lazy-influence paper, Rokvic et al.
     2022, arXiv 2205.11518); the server clusters them with OPTICS on the normalised rows
     (``normalize``, ``symmetrize``; the default when every client scores every other),
     which resolves small close groups, then
     merges the pieces it cuts large groups into (``merge_share``, beyond the paper: pieces
     of one group score each other as highly as their own mates), or (``clustering:
     spectral``) spectrally on the graph
     of mutually helpful scores, finding the number of clusters itself
     (:mod:`plural.core.score_graph`; ``clusters`` sets it instead), which holds for
     large well-separated groups but merges close small ones.
   * ``variant: decentral`` (peer to peer): each client's first choice is the top mode of
     its own row (:func:`plural.core.influence.own_row_peers`; a row with one mode: every
     helpful client where at least 95% help, else the helpful side of a 1-D k-means split,
     k=2, of its positive scores where zero falls inside the higher side). With
     ``peer_agreement`` (the default, beyond the paper) it then keeps the candidates most of
     its peers chose first, where they keep it too (only peer lists are exchanged): one row
     of a client with little validation data is noisy, the agreement of many is not; a
     client alone, or with a few peers it ranks no higher than the others it chose,
     follows, one way, the neighbourhood most of its first choices share
     (:func:`plural.core.influence.follow_first_choices`). Each client also marks the upper
     half of its peers by its own scores, and a subgroup that the others' upper halves
     leave out but its members' hold is set apart
     (:func:`plural.core.influence.split_off_subgroups`: a small group related to a large
     one); a client the agreement left alone pairs with the clients that stand out at the
     top of its row and single it out in turn
     (:func:`plural.core.influence.pair_lone_clients`: the members of a tiny group). Its
     scores never leave it.
5. **Training** (same round onwards): FedAvg inside each cluster (central), or for each client
   the FedAvg of its peers' models (decentral: each client has its own neighbourhood model).
   The updates are FedAvg's (weights, server optimizer, stragglers all apply). Each model
   starts from ``theta0`` plus its members' (peers') lazy updates averaged by the samples
   they trained on (``cluster_start: lazy``): the lazy training is a FedAvg round of the
   cluster from ``theta0``, and starting from it gains that round (0.2-0.5 points at 30
   rounds, 200 clients, benchmarks/README.md); ``cluster_start: theta0`` discards it.

Beyond the paper: ``recluster: stale`` watches each client's validation loss under its
cluster's model and re-runs the lazy phase for the clients whose loss rose by more than
``stale_rise`` over its lowest since they were clustered (data drift), then re-clusters with
their new rows and columns; ``peers_scored`` and ``compression`` cut the lazy phase's traffic;
``votes: private`` gives epsilon-DP votes.

Choices the paper leaves open, and why:

* ``normalize: row`` (default): each row divided by its largest absolute score, so clients
  whose validation loss moves a lot (small or hard validation sets) do not dominate the
  distances; the pattern of who helps whom is what groups clients.
* ``clustering: auto`` (default: ``optics`` where every client scores every other,
  ``spectral`` where clients score a subset, ``peers_scored``) or ``optics`` or
  ``spectral``, see :mod:`plural.core.score_graph`
  (spectral merges close small groups: see the ``clustering`` setting); a client
  with no mutually helpful peer becomes its own cluster (``noise: own``) or joins the
  cluster it scores highest (``noise: nearest``). With ``clustering: optics``:
  OPTICS ``min_samples: 3``, ``xi: 0.05`` (scikit-learn's default ``xi``); a client OPTICS
  leaves as noise becomes its own cluster (``noise: own``) so a client that no one helps
  (e.g. one with corrupted labels) trains on its own, or joins the nearest cluster
  (``noise: nearest``). OPTICS clusters rows as points in N dimensions, so at 50+ clients a
  group, noise spreads distances inside a group as widely as the gaps between groups and
  OPTICS cuts the group apart (4 x 50 rotated-MNIST clients: 5-7 clusters); the scores
  themselves separate, and check what the row distances decided, with one share,
  ``merge_share`` (0.6): a client OPTICS left out keeps the cluster its hierarchy put it
  in only if that cluster helps it at least 0.6 of what its closest peers give it; a
  cluster whose two halves score each other below 0.6 of their mean within splits; two
  clusters merge when they score each other at least 0.6 of their pooled mean within
  (fortunes, English and German: 0.10 and 0.11 within, -0.04 across, kept apart). Missing scores
  (``peers_scored < 1``) are handled by NaN-aware Euclidean distances. ``peers_scored``
  above 1 is a count of peers (e.g. 20), so that each client's scoring work and the relayed
  bytes stay bounded as the federation grows.
* Decentral training is simulated with the server as a relay: a client receives the average
  of its peers' models (one model down, one up); ``peer_exchange_bytes`` in the lazy-phase
  record is what a true peer-to-peer exchange of lazy models costs.
* The server keeps the scores, the released values and (decentral) the first choices and
  neighbourhoods sparse (:mod:`plural.core.sparse_scores`; O(N k) for ``peers_scored: k``,
  never an N x N array, where the dense layout held two float64 ones, 1.6 GB at 10,000
  clients; ``benchmarks/lia_state_memory.py``); OPTICS, which clusters rows as points, makes
  them dense for its own step, and ``lia_records`` and the artifacts are dense up to 2,000
  clients.
* The lazy phase's cost is recorded separately from training (``lia_records(server)``
  and ``summary.json``): client compute as samples trained and evaluated, wall time, and bytes.
  The round's metric rows count all bytes, lazy phase included.

Measured defaults: see ``benchmarks/README.md`` (pFedLIA section).
"""

from plural.algorithms.pfedlia.algorithm import PFedLIA
from plural.algorithms.pfedlia.config import PFedLIAConfig
from plural.algorithms.pfedlia.messages import LIAServerState, lia_records, lia_state

__all__ = ["LIAServerState", "PFedLIA", "PFedLIAConfig", "lia_records", "lia_state"]
