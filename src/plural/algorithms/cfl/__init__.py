"""CFL (Sattler et al. 2020, "Clustered Federated Learning: Model-Agnostic Distributed Multitask
Optimization Under Privacy Constraints"): FedAvg inside clusters that are split recursively.

Every client starts in one cluster. Each round the clients train from their cluster's model and
send their new parameters; the server forms each participant's update ``dW_i = new - old`` (over
the trainable parameters, flattened to float32) and averages each cluster's models as FedAvg
does. A cluster is split in two when FedAvg on it has reached a stationary point of the joint
objective while some clients are still far from a stationary point of their own (Sec. III of the
paper, Algorithm 1)::

    mean_norm = || sum_i w_i dW_i ||  <  eps1      (the cluster as a whole has stalled)
    max_norm  = max_i || dW_i ||      >  eps2      (some clients are still being pulled away)

with ``w_i`` the FedAvg weights. The split is the bipartition of the cluster's clients by the
cosine similarity of their updates that minimises the largest cross-cluster similarity (Eq. 26
of the paper). As in the authors' implementation, it is computed by complete-linkage
agglomerative clustering into two clusters on the distance ``1 - cos``: with complete linkage
the last merge joins the two groups whose most similar cross pair is least similar. Each child
keeps the parent's model averaged (FedAvg) with its own members' updates. The number of
clusters is therefore discovered, not set; ``max_clusters`` only caps it.

Settings. The paper's ``eps1`` and ``eps2`` are absolute norms (its demo: 0.4 and 1.6), but
update norms scale with the learning rate, the local work and the model size: with the demo's
values CFL never split a 200-client rotated-MNIST federation (MLP 784-200-10). By default
(``eps1: null``) the criterion is scale-free: a cluster splits when the norm of its mean update
is below ``max_alignment`` (0.35) times its clients' mean update norm
(:func:`update_alignment`): the updates cancel out, so the joint model has stalled while its
clients still move. Measured on rotated MNIST (4 rotations, 48 clients, MLP [32], lr 0.1):
the alignment falls to 0.30 when the groups pull apart (splits at rounds 21-31, ARI 1); at 0.5
the true groups were split further (0.37-0.62 inside a group); an IID federation falls to 0.22
but ``min_separation`` keeps it whole. Set ``eps1`` (and ``eps2``) to use the paper's absolute
criteria instead (``cfl_state(server).norms`` shows the norms of a run). ``min_rounds``
(default 20) delays every split until the joint model has had time to approach a stationary
point, as the paper assumes. A split also needs both children to have at least
``min_cluster_size`` clients.

Server state (:class:`CFLState`): each cluster's clients, model and server-optimizer state,
each client's latest flat update, the norms of every round (``norms``, ``history``) and one
record per split (``splits``: round, norms, children, gap).

Partial participation: the norms are measured on the cluster's participants this round; a split
partitions the members with a stored update (their latest one), and members never seen yet join
the child holding the cluster's lowest client id.
"""

from plural.algorithms.cfl.algorithm import CFL, CFLState, cfl_state
from plural.algorithms.cfl.config import CFLConfig

__all__ = ["CFL", "CFLConfig", "CFLState", "cfl_state"]
