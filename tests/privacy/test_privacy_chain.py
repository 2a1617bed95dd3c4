"""Clipping and noise pieces of the aggregation chain: bounds, distribution, reduction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from plural.core.aggregation import AggregationChain, global_norm
from plural.core.aggregators import weighted_mean
from plural.privacy.chain import CLIP, NOISED, ClipUpdates, NoisePlan, SumNoise, clip_to


def _updates(count: int, scale: float, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(5, 4, generator=gen) * scale, "b": torch.randn(4, generator=gen)}
        for _ in range(count)
    ]


@pytest.mark.parametrize(("scale", "bound"), [(0.01, 1.0), (3.0, 1.0), (100.0, 0.05)])
def test_clipped_updates_have_norm_at_most_clip(scale: float, bound: float) -> None:
    stage = ClipUpdates(NoisePlan(bound))
    for delta in _updates(20, scale, seed=int(scale * 10)):
        clipped, _, notes = stage.apply(delta, 1.0, {})
        assert global_norm(clipped) <= bound * (1 + 1e-12)
        assert notes["unclipped"] == (global_norm(delta) <= bound)
        if notes["unclipped"]:  # within the bound: untouched
            assert all(torch.equal(clipped[k], delta[k]) for k in delta)
        else:  # scaled, direction kept
            ratio = clipped["w"] / delta["w"]
            assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))


@pytest.mark.parametrize(("noise", "bound", "denominator"), [(1.0, 0.5, 4.0), (2.5, 2.0, 30.0)])
def test_noise_on_the_sum_has_the_configured_distribution(
    noise: float, bound: float, denominator: float
) -> None:
    plan = NoisePlan(bound, noise_multiplier=noise, denominator=denominator)
    chain = AggregationChain(client_stages=(ClipUpdates(plan),), post_stages=(SumNoise(plan),))
    reference = {"w": torch.zeros(20_000, dtype=torch.float64)}
    gen = torch.Generator().manual_seed(1)
    models = [{"w": torch.randn(20_000, generator=gen, dtype=torch.float64)} for _ in range(3)]
    target, state = chain.combine(reference, models, [1.0, 1.0, 1.0], np.random.default_rng(5))
    clipped_sum = sum(clip_to(m, bound)["w"] for m in models)
    residual = (target["w"] - clipped_sum / denominator).numpy()
    # KS test of the residual against N(0, (noise * clip / denominator)^2): under the
    # configured distribution it rejects with probability 1e-4.
    result = stats.kstest(residual, "norm", args=(0.0, noise * bound / denominator))
    assert result.pvalue > 1e-4
    assert state[NOISED] == 1


def test_zero_noise_and_infinite_clip_is_the_uniform_mean() -> None:
    models = _updates(7, 2.0, seed=3)
    reference = _updates(1, 1.0, seed=4)[0]
    plan = NoisePlan(math.inf, noise_multiplier=0.0, denominator=7.0)
    chain = AggregationChain(client_stages=(ClipUpdates(plan),), post_stages=(SumNoise(plan),))
    target, _ = chain.combine(reference, models, [1.0] * 7, np.random.default_rng(0))
    expected = weighted_mean([(m, 1.0) for m in models])
    for name in expected:
        assert torch.allclose(target[name], expected[name], atol=1e-6, rtol=0)


def test_adaptive_clip_moves_towards_the_quantile() -> None:
    # every update has norm 1: a clip above 1 leaves all unclipped and shrinks, a clip below
    # 1 clips all and grows, so the clip closes in on the updates' norm from both sides
    updates = [{"w": torch.tensor([0.6, 0.8])} for _ in range(50)]
    for start in (8.0, 0.1):
        plan = NoisePlan(start, noise_multiplier=0.5, denominator=50.0, count_noise=2.0)
        chain = AggregationChain(
            client_stages=(ClipUpdates(plan),), post_stages=(SumNoise(plan, quantile=0.5, lr=0.3),)
        )
        state: dict = {}
        rng = np.random.default_rng(2)
        for _ in range(40):
            _, state = chain.combine({"w": torch.zeros(2)}, updates, [1.0] * 50, rng, state)
        assert abs(math.log(state[CLIP])) < abs(math.log(start)) / 4
