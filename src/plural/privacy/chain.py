"""The aggregation-chain pieces of client-level and local differential privacy.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"):
each client's update ``model - reference`` is clipped to L2 norm ``clip``; the server adds
Gaussian noise of std ``noise_multiplier * clip`` to the *sum* of the clipped updates and
divides by a fixed denominator (the expected number of contributions), so that one client
changes the result by at most ``clip / denominator`` whatever the others send. This needs
every client to count alike (uniform weights) and the weighted-mean reducer; the run's checks
(:mod:`plural.privacy.run`) refuse anything else.

Adaptive clipping (Andrew et al. 2021): the clip moves geometrically towards the
``quantile`` of the update norms, estimated from a noised count of unclipped updates; the
privacy cost of that count is paid out of the configured noise multiplier.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from plural.core.aggregation import (
    GROUP_SHARE,
    AggregationState,
    RoundSummary,
    clip_to_norm,
    global_norm,
)
from plural.core.params import Params

CLIP = "clip"
"""Chain-state key of the current clip (adaptive clipping only)."""
NOISED = "noised_rounds"
"""Chain-state key counting the rounds this chain (this cluster's) added noise."""


@dataclasses.dataclass
class NoisePlan:
    """The numbers the noise needs, known once the federation is built (see
    :class:`plural.privacy.run.PrivateRun`): noise multiplier and denominator."""

    clip: float
    noise_multiplier: float = 0.0
    denominator: float = 1.0
    count_noise: float = 0.0
    """std of the noise on the adaptive clip's count (0: no adaptive clip)."""
    bound: bool = False

    def update_noise(self) -> float:
        """The noise multiplier left for the updates once the adaptive clip's count has been
        paid for (Andrew et al. 2021, Thm. 1): ``(z^-2 - (2 sigma_b)^-2)^(-1/2)``."""
        if self.count_noise <= 0 or self.noise_multiplier <= 0:
            return self.noise_multiplier
        rest = self.noise_multiplier**-2 - (2 * self.count_noise) ** -2
        return rest**-0.5

    def current_clip(self, state: AggregationState) -> float:
        return float(state.get(CLIP, self.clip))

    def group_denominator(self, state: AggregationState) -> float:
        """The expected number of contributions to this model: the run's expected cohort
        times the share of clients the model serves (one cluster's; 1 for a global model)."""
        return max(self.denominator * float(state.get(GROUP_SHARE, 1.0)), 1.0)


class ClipUpdates:
    """Client stage: scale each client's update to L2 norm at most the clip."""

    name = "clip"

    def __init__(self, plan: NoisePlan) -> None:
        self.plan = plan

    def apply(
        self, delta: Params, weight: float, state: AggregationState
    ) -> tuple[Params, float, dict[str, bool]]:
        bound = self.plan.current_clip(state)
        return clip_to(delta, bound), weight, {"unclipped": global_norm(delta) <= bound}


def clip_to(delta: Params, bound: float) -> Params:
    """``delta`` scaled down to global L2 norm ``bound`` (unchanged when within it)."""
    return clip_to_norm(delta, bound)[0]


def gaussian_like(delta: Params, std: float, rng: np.random.Generator) -> Params:
    """Independent N(0, std^2) noise for every floating entry of ``delta`` (float64)."""
    out: Params = {}
    for name, tensor in delta.items():
        if tensor.is_floating_point():
            draw = rng.standard_normal(tuple(tensor.shape))
            out[name] = torch.from_numpy(np.asarray(draw * std, dtype=np.float64))
    return out


class SumNoise:
    """Post stage of DP-FedAvg: ``(sum of clipped updates + N(0, (z C)^2)) / denominator``,
    then the adaptive clip's step when configured."""

    name = "noise"

    def __init__(self, plan: NoisePlan, quantile: float | None = None, lr: float = 0.0) -> None:
        self.plan = plan
        self.quantile = quantile
        self.lr = lr

    def apply(
        self,
        delta: Params,
        summary: RoundSummary,
        state: AggregationState,
        rng: np.random.Generator | None,
    ) -> tuple[Params, AggregationState]:
        assert rng is not None
        plan = self.plan
        bound = plan.current_clip(state)
        multiplier = plan.update_noise()
        noise = gaussian_like(delta, multiplier * bound if multiplier > 0 else 0.0, rng)
        denominator = plan.group_denominator(state)
        out = {}
        for name, mean in delta.items():
            if name in noise:  # the mean of uniformly weighted updates, times their count
                out[name] = (mean * summary.total_weight + noise[name]) / denominator
            else:
                out[name] = mean
        new_state = dict(state)
        new_state[NOISED] = int(state.get(NOISED, 0)) + 1
        if self.quantile is not None:
            new_state[CLIP] = self._next_clip(bound, summary, rng, denominator)
        return out, new_state

    def _next_clip(
        self, bound: float, summary: RoundSummary, rng: np.random.Generator, denominator: float
    ) -> float:
        """Andrew et al. 2021: ``C <- C exp(-lr (b - quantile))``, ``b`` the noised share of
        unclipped updates."""
        unclipped = sum(bool(n.get("unclipped")) for n in summary.notes)
        noised = unclipped + float(rng.normal(0.0, self.plan.count_noise))
        share = noised / denominator
        assert self.quantile is not None
        return float(bound * math.exp(-self.lr * (share - self.quantile)))


class LocalNoise:
    """Post stage of local DP: every client adds N(0, (z C)^2) to its own clipped update
    before sending, and the server averages what it receives.

    The sum of the clients' independent noises is N(0, m (z C)^2); this simulation draws it
    once, at the server, which gives the aggregate exactly the distribution it has when each
    client draws its own (a deployment draws on the client)."""

    name = "local_noise"

    def __init__(self, plan: NoisePlan) -> None:
        self.plan = plan

    def apply(
        self,
        delta: Params,
        summary: RoundSummary,
        state: AggregationState,
        rng: np.random.Generator | None,
    ) -> tuple[Params, AggregationState]:
        assert rng is not None
        multiplier = self.plan.noise_multiplier
        std = multiplier * self.plan.clip * math.sqrt(summary.count) if multiplier > 0 else 0.0
        noise = gaussian_like(delta, std, rng)
        out = {
            k: (v * summary.total_weight + noise[k]) / summary.total_weight if k in noise else v
            for k, v in delta.items()
        }
        return out, {**state, NOISED: int(state.get(NOISED, 0)) + 1}
