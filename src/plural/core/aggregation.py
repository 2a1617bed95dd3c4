"""The aggregation chain: how the server turns the models clients send into its next target.

A chain composes small named pieces, in the spirit of optax's chains:

    weighting (the algorithm's) -> client stages (e.g. L2 clipping of each client's update)
    -> reducer (weighted mean; robust rules) -> post stages (e.g. Gaussian noise)

and the algorithm's server optimizer then steps towards the result. Every averaging
algorithm calls the chain from :meth:`plural.algorithms.fedavg.FedAvg.target`, so the same
chain applies to FedAvg and its variants, to the shared part of partially personalized
methods (their updates carry only shared entries), and per group for clustered methods
(each cluster's updates are combined on their own).

The plain chain (no stage, the weighted mean) reduces client *models* exactly as
:func:`plural.core.aggregators.weighted_mean` always has, so results without privacy or
robustness settings are bit-identical to before. A chain with stages works on updates
(``model - reference``), which is what clipping, robust rules and noise are defined on.

Chains are accumulators (``add`` one client at a time, then ``result``), so a server can fold
replies as they arrive; a reducer that needs every update at once (a median, Krum) says so
with ``streaming = False`` and the accumulator keeps the updates until ``result``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from plural.core.aggregators import WeightedMean
from plural.core.params import Params

AggregationState = dict[str, Any]
GROUP_SHARE = "group_share"
"""Chain state key, set for each cluster's chain by clustered methods: the share of the
federation's clients that cluster's model serves (absent: 1, one model for everyone). A post
stage that divides by the expected number of contributions (DP-FedAvg's noise) scales it."""
"""What stateful pieces (an adaptive clip, say) carry from one round to the next; kept by the
algorithm in its server state, one per group for clustered methods. Tensors, numbers and
strings only, so it checkpoints safely."""


class ClientStage(Protocol):
    """Transforms one client's update before reduction (e.g. clipping to an L2 norm)."""

    name: str

    def apply(
        self, delta: Params, weight: float, state: AggregationState
    ) -> tuple[Params, float, Mapping[str, Any]]:
        """The transformed update and weight of one client, and notes for the post stages
        (e.g. ``{"clipped": True}``)."""
        ...


class Reducer(Protocol):
    """Combines the clients' (transformed) updates into one update."""

    name: str
    streaming: bool
    """Whether updates can be folded one at a time (True) or are needed all at once."""

    def reduce(
        self,
        deltas: Sequence[Params],
        weights: np.ndarray,
        rng: np.random.Generator | None,
        state: AggregationState,
    ) -> Params:
        """The combined update; ``state`` is the chain's state (read only: e.g. the center a
        centered clipping rule clips around)."""
        ...


class PostStage(Protocol):
    """Transforms the reduced update (e.g. adds calibrated noise to it)."""

    name: str

    def apply(
        self,
        delta: Params,
        summary: RoundSummary,
        state: AggregationState,
        rng: np.random.Generator | None,
    ) -> tuple[Params, AggregationState]: ...


@dataclasses.dataclass(frozen=True)
class RoundSummary:
    """What post stages may know of the contributions: how many, their total weight, and the
    per-client notes the client stages left (e.g. whether each update was clipped)."""

    count: int
    total_weight: float
    notes: tuple[Mapping[str, Any], ...] = ()


class WeightedMeanReducer:
    """The weighted mean of the updates (FedAvg's rule); folds one update at a time."""

    name = "mean"
    streaming = True

    def reduce(
        self,
        deltas: Sequence[Params],
        weights: np.ndarray,
        rng: np.random.Generator | None,
        state: AggregationState,
    ) -> Params:
        accumulator = WeightedMean()
        for delta, weight in zip(deltas, weights, strict=True):
            accumulator.add(delta, float(weight))
        return accumulator.result()


@dataclasses.dataclass(frozen=True)
class AggregationChain:
    """Client stages, a reducer and post stages (see the module docstring)."""

    client_stages: tuple[ClientStage, ...] = ()
    reducer: Reducer = dataclasses.field(default_factory=WeightedMeanReducer)
    post_stages: tuple[PostStage, ...] = ()

    @property
    def plain(self) -> bool:
        """Whether this is the plain weighted mean of client models."""
        return (
            not self.client_stages
            and not self.post_stages
            and isinstance(self.reducer, WeightedMeanReducer)
        )

    @property
    def needs_rng(self) -> bool:
        """Whether any piece draws random numbers (the caller must then pass ``rng``)."""
        return bool(self.post_stages) or not isinstance(self.reducer, WeightedMeanReducer)

    def describe(self) -> str:
        """The chain as ``clip -> mean -> noise``."""
        names = [s.name for s in self.client_stages] + [self.reducer.name]
        return " -> ".join(names + [s.name for s in self.post_stages])

    def accumulator(
        self, reference: Params, state: AggregationState | None = None
    ) -> ChainAccumulator:
        """An accumulator of client models around ``reference`` (the model the clients
        received, restricted to the entries they send)."""
        return ChainAccumulator(self, reference, dict(state or {}))

    def combine(
        self,
        reference: Params,
        models: Sequence[Params],
        weights: Sequence[float] | np.ndarray,
        rng: np.random.Generator | None = None,
        state: AggregationState | None = None,
    ) -> tuple[Params, AggregationState]:
        """The target model from the client ``models`` and their ``weights``, and the new
        chain state."""
        accumulator = self.accumulator(reference, state)
        for params, weight in zip(models, weights, strict=True):
            accumulator.add(params, float(weight))
        return accumulator.result(rng)


class ChainAccumulator:
    """Folds client models into a chain's result one at a time (see AggregationChain)."""

    def __init__(self, chain: AggregationChain, reference: Params, state: AggregationState) -> None:
        self.chain = chain
        self.reference = reference
        self.state = state
        self.count = 0
        self.total_weight = 0.0
        self._plain = WeightedMean() if chain.plain else None
        self._streamed = WeightedMean() if chain.reducer.streaming else None
        self._held: list[tuple[Params, float]] = []
        self._notes: list[Mapping[str, Any]] = []

    def add(self, params: Mapping[str, torch.Tensor], weight: float) -> ChainAccumulator:
        """Fold one client's model (with its aggregation weight) into the result."""
        self.count += 1
        if self._plain is not None:
            self._plain.add(params, weight)
            self.total_weight += weight
            return self
        delta = difference(params, self.reference)
        notes: dict[str, Any] = {}
        for stage in self.chain.client_stages:
            delta, weight, stage_notes = stage.apply(delta, weight, self.state)
            notes.update(stage_notes)
        self._notes.append(notes)
        self.total_weight += weight
        if self._streamed is not None:
            self._streamed.add(delta, weight)
        else:
            self._held.append((delta, weight))
        return self

    def result(self, rng: np.random.Generator | None = None) -> tuple[Params, AggregationState]:
        """The target model and the chain's new state."""
        if self._plain is not None:
            return self._plain.result(), self.state
        if self.count == 0:
            raise ValueError("cannot aggregate: no client was added")
        if self.chain.needs_rng and rng is None:
            raise ValueError(f"aggregation chain {self.chain.describe()} needs a generator")
        if self._streamed is not None:
            delta = self._streamed.result()
        else:
            deltas = [d for d, _ in self._held]
            weights = np.asarray([w for _, w in self._held], dtype=np.float64)
            delta = self.chain.reducer.reduce(deltas, weights, rng, self.state)
        summary = RoundSummary(self.count, self.total_weight, tuple(self._notes))
        state = self.state
        for stage in self.chain.post_stages:
            delta, state = stage.apply(delta, summary, state, rng)
        return apply_delta(self.reference, delta), state


def difference(params: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> Params:
    """``params - reference`` for every entry of ``params`` (float64 for floating entries, so
    sums of many updates lose nothing; other entries are passed as they are)."""
    out: Params = {}
    for name, tensor in params.items():
        if tensor.is_floating_point():
            out[name] = tensor.detach().double() - reference[name].detach().double()
        else:
            out[name] = tensor.detach()
    return out


def apply_delta(reference: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Params:
    """``reference + delta`` in the reference's dtypes (non-float entries taken from delta)."""
    out: Params = {}
    for name, tensor in delta.items():
        base = reference[name]
        if base.is_floating_point():
            out[name] = (base.detach().double() + tensor.double()).to(base.dtype)
        else:
            out[name] = tensor.round().to(base.dtype) if tensor.is_floating_point() else tensor
    return out


def global_norm(params: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of every floating entry of ``params`` taken together."""
    total = 0.0
    for tensor in params.values():
        if tensor.is_floating_point():
            total += float(tensor.double().pow(2).sum())
    return total**0.5


def clip_to_norm(delta: Params, bound: float) -> tuple[Params, bool]:
    """``delta`` scaled down to global L2 norm ``bound`` if it is longer (floating entries in
    float64, so the bound holds to float64 rounding), and whether it was scaled. The one
    clipping of updates that privacy (DP-FedAvg) and robustness (norm bounding, centered
    clipping) share."""
    norm = global_norm(delta)
    if norm <= bound or math.isinf(bound):
        return dict(delta), False
    scale = bound / norm
    clipped = {k: v.double() * scale if v.is_floating_point() else v for k, v in delta.items()}
    return clipped, True


def group_generators(
    rng: np.random.Generator | None, groups: int, needed: bool
) -> list[np.random.Generator | None]:
    """One generator per group (cluster) for a chain that draws random numbers, each derived
    from ``rng`` in group order; ``None`` for each when the chain needs none (nothing is drawn
    from ``rng`` then, so plain runs keep their random streams)."""
    if not needed or rng is None:
        return [None] * groups
    seeds = rng.integers(0, 2**63 - 1, size=groups)
    return [np.random.default_rng(int(seed)) for seed in seeds]


PLAIN = AggregationChain()
"""The weighted mean of client models: FedAvg's aggregation, and the default."""

ChainBuilder = Callable[[Any], AggregationChain | None]
_BUILDERS: list[ChainBuilder] = []


def register_chain_builder(builder: ChainBuilder) -> ChainBuilder:
    """Register a function ``(experiment config) -> chain or None`` that builds the pieces one
    config section asks for (privacy, robust aggregation, ...). :func:`chain_for` joins the
    pieces of every builder in registration order."""
    _BUILDERS.append(builder)
    return builder


def chain_for(config: Any) -> AggregationChain:
    """The aggregation chain a run's config asks for (:data:`PLAIN` when none asks).

    Client and post stages of the registered builders are concatenated in registration
    order, except that post stages which keep the aggregate for later rounds
    (``keeps_released = True``, e.g. centered clipping's center) run after every other one:
    what they keep is then what was released (noised, under privacy), whatever order the
    builders were registered in. At most one builder may replace the weighted-mean reducer.
    """
    client_stages: list[ClientStage] = []
    post_stages: list[PostStage] = []
    reducer: Reducer | None = None
    for builder in _BUILDERS:
        piece = builder(config)
        if piece is None:
            continue
        client_stages.extend(piece.client_stages)
        post_stages.extend(piece.post_stages)
        if not isinstance(piece.reducer, WeightedMeanReducer):
            if reducer is not None:
                raise ValueError(
                    f"two aggregation rules asked for: {reducer.name!r} and {piece.reducer.name!r}"
                )
            reducer = piece.reducer
    post_stages.sort(key=lambda stage: bool(getattr(stage, "keeps_released", False)))
    return AggregationChain(
        tuple(client_stages), reducer or WeightedMeanReducer(), tuple(post_stages)
    )
