""":class:`Oracle`: FedAvg inside each *true* group of the federation (``federation.groups``),
the upper reference of clustered FL. Each client receives only its group's model.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from plural.algorithms.clustered import (
    Clustered,
)
from plural.algorithms.fedavg import AveragingConfig
from plural.core.algorithm import FederationInfo, ModelMessage, RoundContext, ServerState
from plural.core.params import Params, clone
from plural.registry import ALGORITHMS

__all__ = ["Oracle", "OracleConfig"]

NO_GROUPS = (
    "oracle needs a federation with known groups (e.g. transforms: [{name: rotation, groups: 4}]);"
    " this one has none, so oracle runs as plain FedAvg (one group)"
)


@dataclasses.dataclass(frozen=True)
class OracleConfig(AveragingConfig):
    """Oracle has only the averaging settings; the clusters are the federation's groups."""


@ALGORITHMS.register("oracle", OracleConfig, "Oracle: FedAvg inside each true group of clients")
class Oracle(Clustered):
    """FedAvg within each of the federation's true groups (the clustered-FL upper reference).

    A federation without known groups (``info.groups`` None) gives one group, i.e. FedAvg,
    with a warning, so that the algorithm still runs on any federation.
    """

    name = "oracle"
    in_demo = False  # the demo federation has no true groups
    config: OracleConfig

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        if info.groups is None:
            warnings.warn(NO_GROUPS, stacklevel=2)
            groups = np.zeros(info.num_clients, dtype=np.int64)
        else:
            _, groups = np.unique(np.asarray(info.groups), return_inverse=True)
        k = int(groups.max()) + 1
        return self.start([params] + [clone(params) for _ in range(1, k)], groups)

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        models, groups = self.models(server), self.assignment(server)
        messages = {cid: ModelMessage(models[groups[cid]]) for cid in cohort}
        updates = ctx.map("client_update", cohort, per_client=messages)
        return self.aggregate_clusters(
            server, updates, [int(groups[c]) for c in cohort], ctx.rng("aggregate")
        )
