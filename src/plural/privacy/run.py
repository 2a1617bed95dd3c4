"""Differential privacy of one run: checks before any data is loaded, calibration once the
federation is known, the ledger of what ran, and what the run reports.

The engine calls :func:`plan_privacy` right after building the algorithm (ConfigErrors for
settings that cannot be private), :meth:`PrivateRun.start` once the federation is built
(delta against the number of protected units, calibration of the noise to a target
epsilon), :meth:`PrivateRun.after_round` after each round (the ledger counts the rounds, or
each client's DP-SGD steps, that ran; epsilon so far goes to ``diagnostics.jsonl``) and
:meth:`PrivateRun.summary` for the ``privacy`` block of ``summary.json``. The ledger is plain
numbers, saved in the checkpoint, so a resumed run counts exactly the rounds and steps that
ran.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from plural.config import ConfigError
from plural.core.aggregation import AggregationChain, WeightedMeanReducer, register_chain_builder
from plural.core.algorithm import Algorithm
from plural.privacy import accountant
from plural.privacy.chain import ClipUpdates, LocalNoise, NoisePlan, SumNoise
from plural.privacy.dpsgd import PrivateTrainConfig
from plural.privacy.settings import PrivacyConfig
from plural.registry import aggregating_algorithm, aggregating_settings

logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order RDP warnings

REFUSED = {
    "qfedavg": "its own aggregation rule replaces the weighted mean, so no sensitivity bound holds",
    "scaffold": "clients send control variates outside the aggregation chain, un-noised",
    "fedem": "it aggregates its mixture components outside the aggregation chain",
    "cfl": "it splits clusters from the clients' raw (un-noised) updates",
    "fedproto": "it aggregates class prototypes, not models, outside the aggregation chain",
    "mocha": "it does not average models through the aggregation chain",
    "local": "clients never communicate: there is nothing to privatize",
    "fedfomo": "clients send their models to the server as they are, to be relayed to peers",
    "pfedhn": "the hypernetwork learns from each client's raw update, outside the chain",
    "fedpac": "clients send heads, class centroids and feature variances outside the chain",
    "pfedgraph": "each client's aggregate is a similarity-weighted mix of raw client models, "
    "computed outside the aggregation chain",
}
NOT_PRIVATIZED = {
    "ifca": "each client's choice of cluster",
    "pfedlia": "the lazy phase: each client's lazy update theta_j - theta0 (relayed to its "
    "peers un-noised), and its influence score row unless votes: private (each vote is then "
    "epsilon-DP by randomized response, and composed into the client's budget)",
}
SAMPLE_REFUSED = {
    name: "DP-SGD clips per-sample gradients of the plain loss; its local objective "
    f"({objective}) is not covered"
    for name, objective in (
        ("fedproto", "the prototype term"),
        ("per_fedavg", "the meta-gradient"),
        ("fedrod", "the balanced generic loss plus the personal-head loss"),
        ("fedpac", "the feature alignment term"),
    )
}
COUNT_WEIGHTINGS = ("uniform", "private_samples")


def check_settings(config: Any) -> None:
    """ConfigErrors, before any data is loaded, for a run that cannot be private as set."""
    privacy: PrivacyConfig = config.privacy
    accountant.require_accounting()
    name = aggregating_algorithm(config)
    if name in REFUSED and privacy.level != "sample":
        raise ConfigError(
            f"privacy: level {privacy.level!r} cannot protect algorithm {name!r}: {REFUSED[name]}"
        )
    if name in SAMPLE_REFUSED and privacy.level == "sample":
        raise ConfigError(
            f"privacy: level 'sample' cannot protect {name!r}: {SAMPLE_REFUSED[name]}"
        )
    weighting = getattr(aggregating_settings(config), "weighting", "uniform")
    if privacy.level in ("client", "local") and weighting != "uniform":
        raise ConfigError(
            f"privacy: level {privacy.level!r} needs algorithm.weighting: uniform (got "
            f"{weighting!r}): weighting clients by their data size lets one client move the "
            "average by more than clip / cohort, which breaks the noise's sensitivity bound"
        )
    if privacy.level == "sample" and weighting not in COUNT_WEIGHTINGS:
        raise ConfigError(
            f"privacy: level 'sample' needs algorithm.weighting uniform or private_samples "
            f"(got {weighting!r}): the server must not learn the clients' exact data sizes"
        )
    counts_private = getattr(aggregating_settings(config), "count_noise", 0) > 0
    if privacy.level == "sample" and weighting == "private_samples" and not counts_private:
        raise ConfigError(
            "privacy: level 'sample' with weighting private_samples needs "
            "algorithm.count_noise > 0 (the Laplace noise that makes the counts private)"
        )
    sampling = config.sampling
    fixed_size = sampling.count is not None or (sampling.fraction or 1.0) < 1.0
    if privacy.level == "client" and not sampling.poisson and fixed_size:
        raise ConfigError(
            "privacy: client-level DP is accounted for Poisson sampling of clients (each "
            "joins a round independently with probability fraction); fixed-size cohorts "
            "are not accounted. Set sampling: {fraction: ..., poisson: true}"
        )


def privacy_chain(config: Any) -> AggregationChain | None:
    """The chain pieces of ``config.privacy`` (registered with the aggregation chain):
    clipping and noise for levels client and local, nothing for level sample."""
    privacy: PrivacyConfig | None = getattr(config, "privacy", None)
    if privacy is None:
        return None
    check_settings(config)
    if privacy.level == "sample":
        return None
    assert privacy.clip is not None
    plan = NoisePlan(privacy.clip)
    if privacy.level == "local":
        return AggregationChain(client_stages=(ClipUpdates(plan),), post_stages=(LocalNoise(plan),))
    adaptive = privacy.adaptive_clip
    noise = SumNoise(
        plan,
        quantile=adaptive.quantile if adaptive else None,
        lr=adaptive.lr if adaptive else 0.0,
    )
    return AggregationChain(client_stages=(ClipUpdates(plan),), post_stages=(noise,))


register_chain_builder(privacy_chain)


@dataclasses.dataclass
class Ledger:
    """What ran, as numbers (saved in the checkpoint): rounds, and per client the rounds it
    took part in and the DP-SGD steps it ran."""

    rounds: int = 0
    participations: dict[int, int] = dataclasses.field(default_factory=dict)
    steps: dict[int, int] = dataclasses.field(default_factory=dict)
    released: dict[int, float] = dataclasses.field(default_factory=dict)
    """Per client, the pure epsilon of its own epsilon-DP releases (noised counts, votes)."""
    sent: list[str] = dataclasses.field(default_factory=list)
    sent_outside: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Ledger:
        if not data:
            return cls()
        ledger = cls(**data)
        ledger.participations = {int(k): int(v) for k, v in ledger.participations.items()}
        ledger.steps = {int(k): int(v) for k, v in ledger.steps.items()}
        ledger.released = {int(k): float(v) for k, v in ledger.released.items()}
        return ledger


def plan_privacy(config: Any, algorithm: Algorithm) -> PrivateRun | None:
    """The run's privacy (None without a ``privacy`` section); ConfigErrors for an
    aggregation the sensitivity analysis does not cover."""
    privacy: PrivacyConfig | None = getattr(config, "privacy", None)
    if privacy is None:
        return None
    chain = algorithm.aggregation
    plans = [s.plan for s in (*chain.client_stages, *chain.post_stages) if hasattr(s, "plan")]
    if privacy.level != "sample":
        if not isinstance(chain.reducer, WeightedMeanReducer):
            raise ConfigError(
                f"privacy: the aggregation rule {chain.reducer.name!r} breaks the sensitivity "
                "bound of the Gaussian noise (one client can move it by more than clip / "
                "cohort); use the weighted mean with privacy"
            )
        if not plans:  # pragma: no cover - the builder always adds its stages
            raise ConfigError("privacy: the aggregation chain has no privacy stages")
    return PrivateRun(config, privacy, plans[0] if plans else None)


class PrivateRun:
    """Calibration, ledger and reports of a private run (see the module docstring)."""

    def __init__(self, config: Any, privacy: PrivacyConfig, plan: NoisePlan | None) -> None:
        self.config = config
        self.privacy = privacy
        self.plan = plan
        self.ledger = Ledger()
        self.noise_multiplier = privacy.noise_multiplier or 0.0
        self.delta = privacy.delta or 0.0
        self.rate = 1.0
        self.sizes: dict[int, int] = {}
        self.parameters: list[str] = []

    # ---- before training -----------------------------------------------------------------

    def start(
        self, num_clients: int, train_sizes: Sequence[int], parameters: Sequence[str] = ()
    ) -> None:
        """Check delta and the sampling against the federation, calibrate the noise."""
        privacy, cfg = self.privacy, self.config
        self.parameters = list(parameters)
        self.sizes = dict(enumerate(int(n) for n in train_sizes))
        self.rate = self._client_rate(num_clients)
        units = num_clients if privacy.level != "sample" else max(1, min(train_sizes))
        what = "clients" if privacy.level != "sample" else "examples of the smallest client"
        self.delta = privacy.delta if privacy.delta is not None else units**-1.1
        if self.delta >= 1.0 / units:
            raise ConfigError(
                f"privacy.delta: {self.delta} must be below 1/n = {1.0 / units:.3g}, n = {units} "
                f"{what}: a larger delta allows publishing one of them outright"
            )
        if privacy.epsilon is not None:
            self.noise_multiplier = self._calibrate(privacy.epsilon, cfg.rounds)
        if self.plan is not None:
            assert privacy.clip is not None
            self.plan.noise_multiplier = self.noise_multiplier
            expected = self.rate * num_clients  # each cluster's share: GROUP_SHARE
            self.plan.denominator = max(expected, 1.0)
            if privacy.adaptive_clip is not None:
                chosen = privacy.adaptive_clip.count_noise
                self.plan.count_noise = chosen if chosen else max(expected / 20, 1e-12)
                if 2 * self.plan.count_noise <= self.noise_multiplier:
                    raise ConfigError(
                        f"privacy.adaptive_clip.count_noise: {self.plan.count_noise:.3g} is too "
                        f"small for noise_multiplier {self.noise_multiplier:.3g}: it must "
                        "exceed half of it (Andrew et al. 2021); raise count_noise"
                    )

    def _client_rate(self, num_clients: int) -> float:
        sampling = self.config.sampling
        if sampling.poisson:
            return float(sampling.fraction)
        if self.privacy.level == "client" and (sampling.count or num_clients) < num_clients:
            raise ConfigError(
                f"privacy: sampling.count {sampling.count} of {num_clients} clients is a "
                "fixed-size cohort, which is not accounted; set sampling: {fraction: ..., "
                "poisson: true}"
            )
        return 1.0

    def _calibrate(self, target: float, rounds: int) -> float:
        privacy = self.privacy
        if privacy.level == "client":
            return accountant.calibrate(target, self.delta, self.rate, rounds, privacy.accountant)
        if privacy.level == "local":  # sensitivity 2 clip (replace one client's data)
            return 2 * accountant.calibrate(target, self.delta, 1.0, rounds, privacy.accountant)
        smallest = min(self.sizes.values())
        rate, steps = self._example_rate(smallest), rounds * self._steps_per_round(smallest)
        return accountant.calibrate(target, self.delta, rate, steps, privacy.accountant)

    def _example_rate(self, size: int) -> float:
        return min(1.0, self.config.train.batch_size / max(size, 1))

    def _steps_per_round(self, size: int) -> int:
        train = self.config.train
        if train.local_steps is not None:
            return int(train.local_steps)
        return train.local_epochs * max(1, -(-size // train.batch_size))

    def train_config(self, train: Any) -> Any:
        """The trainer's settings: DP-SGD's for level sample, ``train`` otherwise."""
        if self.privacy.level != "sample":
            return train
        assert self.privacy.clip is not None
        return PrivateTrainConfig.of(train, self.noise_multiplier, self.privacy.clip)

    # ---- as it runs ----------------------------------------------------------------------

    def restore(self, saved: Mapping[str, Any] | None) -> None:
        self.ledger = Ledger.from_dict(saved)

    def after_round(
        self,
        fits: Mapping[int, Any],
        steps: Mapping[int, int],
        released: Mapping[int, float],
    ) -> dict[str, Any]:
        """Count the round, its clients' work and their own epsilon-DP releases; the
        diagnostics record of the round."""
        ledger = self.ledger
        for cid, eps in released.items():
            ledger.released[cid] = ledger.released.get(cid, 0.0) + float(eps)
        ledger.rounds += 1
        for cid in fits:
            ledger.participations[cid] = ledger.participations.get(cid, 0) + 1
        for cid, count in steps.items():
            if count:
                ledger.steps[cid] = ledger.steps.get(cid, 0) + int(count)
        for fit in fits.values():  # the engine's FitRecord: names of what each update sent
            if not ledger.sent and fit.sent:
                ledger.sent = sorted(fit.sent)
            for key in fit.sent_outside:
                if key not in ledger.sent_outside:
                    ledger.sent_outside.append(key)
        return {"epsilon": self.epsilon()}

    # ---- what it reports -----------------------------------------------------------------

    def epsilon(self) -> float:
        """Epsilon of the run so far: of every client (level client: the noised aggregates'
        epsilon plus the largest of the clients' own releases), of the client that spent the
        most (levels local and sample)."""
        level = self.privacy.level
        if level == "client":
            aggregate = self._eps(self.noise_multiplier, self.rate, self.ledger.rounds)
            return aggregate + max(self.ledger.released.values(), default=0.0)
        per_client = self.client_epsilons()
        return max(per_client.values(), default=0.0)

    def client_epsilons(self) -> dict[int, float]:
        """Each client's epsilon (levels sample and local): that of its noised uploads or
        DP-SGD steps, plus the pure epsilon of its own releases (noised counts, private
        votes), by basic composition ((e1, d) then e2-DP is (e1 + e2, d)-DP; dp-accounting
        0.6 has no event for randomized response, so the two are not composed tighter)."""
        level, ledger = self.privacy.level, self.ledger
        if level == "local":
            half = self.noise_multiplier / 2
            spent = {c: self._eps(half, 1.0, k) for c, k in ledger.participations.items()}
        elif level == "sample":
            spent = {
                c: self._eps(self.noise_multiplier, self._example_rate(self.sizes.get(c, 1)), k)
                for c, k in ledger.steps.items()
            }
        else:
            return {}
        for client, eps in ledger.released.items():
            spent[client] = spent.get(client, 0.0) + eps
        return spent

    def _eps(self, noise: float, rate: float, count: int) -> float:
        return _cached_epsilon(noise, rate, count, self.delta, self.privacy.accountant)

    def summary(self) -> dict[str, Any]:
        """The ``privacy`` block of ``summary.json``."""
        privacy = self.privacy
        eps = self.epsilon()
        out: dict[str, Any] = {
            "epsilon": eps if math.isfinite(eps) else "inf",
            "delta": self.delta,
            "accountant": privacy.accountant,
            "noise_multiplier": self.noise_multiplier,
            "clip": privacy.clip,
            "level": privacy.level,
            "privatized_parameters": self.privatized(),
            "rounds_accounted": self.ledger.rounds,
            "client_sampling_rate": self.rate,
        }
        if privacy.epsilon is not None:
            out["epsilon_target"] = privacy.epsilon
        if privacy.level == "client" and self.plan is not None:
            out["denominator"] = self.plan.denominator
        if privacy.level == "sample":
            out["steps_accounted"] = sum(self.ledger.steps.values())
        if self.ledger.released:
            out["released_epsilon"] = max(self.ledger.released.values())
        if privacy.level in ("sample", "local"):
            out["client_epsilon"] = {str(c): e for c, e in sorted(self.client_epsilons().items())}
        name = aggregating_algorithm(self.config)
        unprotected = list(self.ledger.sent_outside)
        if name in NOT_PRIVATIZED:
            unprotected.append(NOT_PRIVATIZED[name])
        if unprotected and privacy.level != "sample":
            out["not_privatized"] = unprotected
        out["covers_all_messages"] = privacy.level == "sample" or not unprotected
        return out

    def privatized(self) -> list[str]:
        """The parameters the guarantee covers: every trained one under DP-SGD, else those
        the clients sent (personal parts never leave the client)."""
        if self.privacy.level == "sample":
            return list(self.parameters)
        return list(self.ledger.sent)


@functools.lru_cache(maxsize=4096)
def _cached_epsilon(noise: float, rate: float, count: int, delta: float, kind: str) -> float:
    return accountant.epsilon([(noise, rate, count)], delta, kind)
