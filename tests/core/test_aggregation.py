"""The aggregation chain: the plain chain is the weighted mean bit for bit; stages compose."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from plural.core import aggregation
from plural.core.aggregation import (
    PLAIN,
    AggregationChain,
    AggregationState,
    RoundSummary,
    chain_for,
    global_norm,
    group_generators,
)
from plural.core.aggregators import weighted_mean
from plural.core.params import Params


def _models(count: int, seed: int = 0) -> list[Params]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)}
        for _ in range(count)
    ]


class _Clip:
    name = "clip"

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def apply(
        self, delta: Params, weight: float, state: AggregationState
    ) -> tuple[Params, float, Mapping[str, Any]]:
        scale = min(1.0, self.bound / max(global_norm(delta), 1e-12))
        return {k: v * scale for k, v in delta.items()}, weight, {"clipped": scale < 1}


class _Median:
    name = "median"
    streaming = False

    def reduce(
        self,
        deltas: Sequence[Params],
        weights: np.ndarray,
        rng: np.random.Generator | None,
        state: AggregationState,
    ) -> Params:
        return {k: torch.stack([d[k] for d in deltas]).median(dim=0).values for k in deltas[0]}


class _Count:
    """A post stage that records how many clients it saw in the chain state."""

    name = "count"

    def apply(
        self,
        delta: Params,
        summary: RoundSummary,
        state: AggregationState,
        rng: np.random.Generator | None,
    ) -> tuple[Params, AggregationState]:
        clipped = sum(bool(n.get("clipped")) for n in summary.notes)
        return delta, {"seen": state.get("seen", 0) + summary.count, "clipped": clipped}


def test_plain_chain_is_weighted_mean_bit_for_bit() -> None:
    models = _models(5)
    weights = [3.0, 1.0, 0.5, 7.0, 2.0]
    target, state = PLAIN.combine(models[0], models, weights)
    expected = weighted_mean(list(zip(models, weights, strict=True)))
    assert state == {}
    for name in expected:
        assert torch.equal(target[name], expected[name])


def test_mean_in_update_space_equals_mean_of_models() -> None:
    models = _models(4, seed=1)
    reference = _models(1, seed=2)[0]
    chain = AggregationChain(post_stages=(_Count(),))
    target, state = chain.combine(reference, models, [1, 2, 3, 4], rng=np.random.default_rng(0))
    expected = weighted_mean(list(zip(models, [1, 2, 3, 4], strict=True)))
    for name in expected:
        assert torch.allclose(target[name], expected[name], atol=1e-6)
    assert state == {"seen": 4, "clipped": 0}


def test_clip_stage_bounds_each_update_and_notes_reach_post_stages() -> None:
    reference = {"w": torch.zeros(3)}
    models = [{"w": torch.tensor([3.0, 4.0, 0.0])}, {"w": torch.tensor([0.3, 0.4, 0.0])}]
    chain = AggregationChain(client_stages=(_Clip(1.0),), post_stages=(_Count(),))
    target, state = chain.combine(reference, models, [1.0, 1.0], rng=np.random.default_rng(0))
    # the first update (norm 5) is clipped to norm 1, the second (norm 0.5) is not
    assert torch.allclose(target["w"], torch.tensor([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2, 0.0]))
    assert state["clipped"] == 1


def test_non_streaming_reducer_sees_every_update() -> None:
    reference = {"w": torch.zeros(1)}
    models = [{"w": torch.tensor([v])} for v in (1.0, 2.0, 100.0)]
    chain = AggregationChain(reducer=_Median())
    target, _ = chain.combine(reference, models, [1, 1, 1], rng=np.random.default_rng(0))
    assert float(target["w"]) == 2.0
    with pytest.raises(ValueError, match="needs a generator"):
        chain.combine(reference, models, [1, 1, 1])


def test_chain_for_joins_builders_and_refuses_two_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregation, "_BUILDERS", [])
    assert chain_for(object()).plain
    aggregation.register_chain_builder(lambda cfg: AggregationChain(client_stages=(_Clip(1),)))
    aggregation.register_chain_builder(lambda cfg: None)
    aggregation.register_chain_builder(lambda cfg: AggregationChain(reducer=_Median()))
    chain = chain_for(object())
    assert chain.describe() == "clip -> median"
    aggregation.register_chain_builder(lambda cfg: AggregationChain(reducer=_Median()))
    with pytest.raises(ValueError, match="two aggregation rules"):
        chain_for(object())


def test_group_generators_draw_nothing_when_not_needed() -> None:
    rng = np.random.default_rng(7)
    assert group_generators(rng, 3, needed=False) == [None, None, None]
    assert rng.integers(1000) == np.random.default_rng(7).integers(1000)
    first = [g.integers(10**9) for g in group_generators(np.random.default_rng(7), 3, True)]
    again = [g.integers(10**9) for g in group_generators(np.random.default_rng(7), 3, True)]
    assert first == again and len(set(first)) == 3
