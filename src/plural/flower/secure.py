"""SecAgg+ rounds (Bell et al. 2020): the server learns the weighted mean of the clients'
updates, never one client's update.

Flower implements the protocol (key agreement, secret sharing, masking, unmasking of nodes
that drop out): its ``SecAggPlusWorkflow`` on the server and its ``secaggplus_mod`` on the
nodes. plural drives the workflow for the phase whose updates the server averages
(``client_update`` of the methods :func:`~plural.flower.secagg.secagg_refusal` admits):

* every node takes part in every such round (one without sampled clients sends zeros with
  weight 0), so the protocol always has the nodes it needs and the server does not learn
  which nodes held the cohort from who answers;
* each node runs its clients' work as usual and hands the mod one vector: the weighted mean
  of its clients' updates (floating entries) with their total weight, which the mod
  quantizes and masks; the parties are nodes, so a node holding several clients reveals
  only the sum over all nodes too;
* the rest of each reply (losses, sample counts, integer entries such as batch-norm step
  counters, costs) travels in the clear, as Flower's metrics do;
* on the server every update of the round carries the unmasked mean, so the algorithm's
  weighted mean (through the same chain, server optimizer and bookkeeping) gives exactly
  that mean.

A node that drops out mid-round is unmasked around by Flower's protocol. A node already gone
when a round starts halts Flower's unmasking (it asks for key shares the node never made):
the backend then masks the round again without it and leaves it out of later rounds (see
:class:`MaskedRound`).

Flower quantizes each node's vector to ``quantization_range`` levels over
``[-clipping_range, clipping_range]`` with stochastic rounding, so a SecAgg+ run matches a
plain run to about 1e-5 and is not bit-reproducible. A value outside the clipping range is
an error on the node (it would be clipped silently).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plural.config import ConfigError
from plural.core.algorithm import Update
from plural.flower import wire
from plural.registry import aggregating_settings

SECURE_PHASE = "client_update"
"""The client phase whose updates the server averages (every admitted method's)."""
WORK_KEY = "plural.work"
"""FitIns config: this node's pickled work items."""
META_KEY = "plural.meta"
"""FitRes metrics: the node's pickled replies without their floating entries."""
CLIPPING_RANGE = 16.0
"""Flower quantizes values in [-16, 16]: model weights and their means stay well inside."""
QUANTIZATION_RANGE = 2**22
"""Levels over the clipping range (a step of 7.6e-6; Flower's default count)."""
MODULUS_RANGE = 2**32
"""Flower's default: the sum of up to 1,024 nodes' quantized vectors fits."""


@dataclasses.dataclass(frozen=True)
class NodeShare:
    """What a node's replies to a SecAgg+ round are made of."""

    names: tuple[str, ...]
    """The floating entries averaged, in vector order."""
    dtypes: tuple[str, ...]
    replies: list[Any]
    """Each work item's (reply, state marker, cost), updates without their floating entries."""


def client_weight(cfg: Any, update: Update) -> int:
    """The weight the server's weighted mean gives ``update`` (``samples`` or ``uniform``
    weighting; 0 for a straggler's partial work when stragglers are dropped)."""
    settings = aggregating_settings(cfg)
    if getattr(settings, "drop_stragglers", False) and not update.complete:
        return 0
    if getattr(settings, "weighting", "samples") == "uniform":
        return 1
    return int(update.num_samples)


def node_mean(
    cfg: Any, results: Sequence[Any], template: dict[str, tuple[tuple[int, ...], str]]
) -> tuple[list[np.ndarray], int, NodeShare]:
    """This node's vector for the mod: the weighted mean of its clients' floating entries
    named in ``template`` (float64; zeros for a node without updates), its total weight, and
    the replies that travel in the clear."""
    names = tuple(sorted(template))
    updates = [r[0] for r in results if isinstance(r[0], Update) and r[0].params is not None]
    for update in updates:
        sent = {n for n, t in update.params.items() if t.is_floating_point()}  # type: ignore[union-attr]
        if sent != set(names):
            raise ValueError(
                "SecAgg+: a client's update holds other floating entries than the model the "
                f"server sent ({sorted(sent ^ set(names))[:5]}); this method cannot be masked"
            )
    # A diverged client's update is left out of the mean and reaches the server as NaNs,
    # which reveal nothing, so the engine applies train.on_nonfinite as in a plain run.
    finite = [all(bool(torch.isfinite(u.params[n]).all()) for n in names) for u in updates]  # type: ignore[index]
    weights = [client_weight(cfg, u) if ok else 0 for u, ok in zip(updates, finite, strict=True)]
    total = sum(weights)
    vector = []
    for name in names:
        mixed = torch.zeros(template[name][0], dtype=torch.float64)
        for update, weight in zip(updates, weights, strict=True):
            if weight:
                mixed += weight * update.params[name].double()  # type: ignore[index]
        vector.append((mixed / max(total, 1)).numpy())
    outside = max((float(np.abs(v).max()) for v in vector if v.size), default=0.0)
    if outside > CLIPPING_RANGE:
        raise ValueError(
            f"SecAgg+: an averaged update holds {outside:.3g}, outside Flower's clipping range "
            f"[-{CLIPPING_RANGE:g}, {CLIPPING_RANGE:g}] (it would be clipped silently); "
            "lower train.lr or run without --secagg"
        )
    dtypes = tuple(template[name][1] for name in names)
    replies = [_without(r, names) for r in results]
    return vector, total, NodeShare(names, dtypes, replies)


def template_of(message: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of the floating entries of the model the server sends: what
    the clients' updates hold and the nodes average."""
    params = getattr(message, "params", None)
    if not isinstance(params, dict):
        raise ConfigError(
            f"flower secagg: the server sends {type(message).__name__}, not a model; this "
            "method cannot be masked"
        )
    return {
        name: (tuple(t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in params.items()
        if t.is_floating_point()
    }


def _without(result: Any, names: Sequence[str]) -> Any:
    """``result`` with its update's floating entries removed (NaNs for a diverged one)."""
    reply, *rest = result
    if isinstance(reply, Update) and reply.params is not None:
        diverged = not all(bool(torch.isfinite(reply.params[n]).all()) for n in names)
        kept = {
            n: torch.full_like(t, float("nan")) if diverged else t
            for n, t in reply.params.items()
            if diverged or n not in names
        }
        reply = dataclasses.replace(reply, params=kept)
    return (reply, *rest)


def with_mean(share: NodeShare, mean: Sequence[np.ndarray]) -> list[Any]:
    """The node's replies with the unmasked mean as every update's floating entries."""
    entries = {
        name: torch.from_numpy(np.asarray(array)).to(getattr(torch, dtype))
        for name, dtype, array in zip(share.names, share.dtypes, mean, strict=True)
    }
    replies = []
    for reply, *rest in share.replies:
        if isinstance(reply, Update) and reply.params is not None:
            reply = dataclasses.replace(reply, params={**entries, **reply.params})
        replies.append((reply, *rest))
    return replies


# ---- the server's side


class _Proxy:
    """What Flower's workflow needs of a client proxy: its node."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.cid = str(node_id)


class _Strategy:
    """The two strategy calls of the workflow: what each node receives, and the result."""

    def __init__(self, payloads: dict[int, bytes]) -> None:
        self.payloads = payloads
        self.results: list[Any] = []

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
        from flwr.common import FitIns, Parameters

        empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
        return [
            (_Proxy(node), FitIns(empty, {WORK_KEY: payload}))
            for node, payload in self.payloads.items()
        ]

    def aggregate_fit(self, server_round: int, results: list[Any], failures: Any) -> Any:
        self.results = results
        return None, {}


class _Nodes:
    def __init__(self, count: int) -> None:
        self.count = count

    def num_available(self) -> int:
        return self.count


@dataclasses.dataclass
class MaskedRound:
    """What one SecAgg+ round gave: each node's replies (with the unmasked mean in every
    update), and the nodes that answered its first stage."""

    replies: dict[int, list[Any]]
    answered: set[int]


def masked_round(
    grid: Any,
    payloads: dict[int, bytes],
    round_index: int,
    max_weight: float,
    timeout: float | None,
) -> MaskedRound:
    """One SecAgg+ round over the nodes of ``payloads`` (see :class:`MaskedRound`; no
    replies when the protocol halted)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.common import parameters_to_ndarrays
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

    if len(payloads) < 2:
        raise ConfigError("flower secagg: SecAgg+ needs at least 2 nodes; start more SuperNodes")
    state = RecordDict(
        {
            MAIN_CONFIGS_RECORD: ConfigRecord({Key.CURRENT_ROUND: round_index}),
            MAIN_PARAMS_RECORD: ArrayRecord(),
        }
    )
    strategy = _Strategy(payloads)
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
        strategy=strategy,  # type: ignore[arg-type]
        client_manager=_Nodes(len(payloads)),  # type: ignore[arg-type]
    )
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every node shares with every other (SecAgg); fine to ~100 nodes
        reconstruction_threshold=0.5,
        max_weight=max(max_weight, 1.0),
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
        timeout=timeout,
    )
    # The workflow's own stages, one by one (what its __call__ does), to learn who answered
    # the first one: a node gone before the round halts Flower's unmasking (it asks for key
    # shares the node never made), and the round is then played without it.
    progress = WorkflowState()
    answered: set[int] = set()
    stages = (
        workflow.setup_stage,
        workflow.share_keys_stage,
        workflow.collect_masked_vectors_stage,
        workflow.unmask_stage,
    )
    for index, stage in enumerate(stages):
        done = stage(grid, context, progress)
        if index == 0:
            answered = set(progress.active_node_ids)
        if not done:
            return MaskedRound({}, answered)
    replies = {}
    for proxy, fitres in strategy.results:
        share: NodeShare = wire.loads(fitres.metrics[META_KEY])
        replies[proxy.node_id] = with_mean(share, parameters_to_ndarrays(fitres.parameters))
    return MaskedRound(replies, answered)


def cohort_weight(cfg: Any, sizes: Sequence[int], clients: Sequence[int]) -> float:
    """An upper bound of the round's total weight (Flower's ``max_weight``: each node's
    weight is quantized as a share of it, so the tighter the better)."""
    settings = aggregating_settings(cfg)
    if getattr(settings, "weighting", "samples") == "uniform":
        return float(len(clients))
    return float(math.fsum(sizes[c] for c in clients))
