"""Which runs may use Flower's SecAgg+ (Bell et al. 2020, secure aggregation with masks).

With SecAgg+ the server learns only the sum of the clients' masked updates, never one
client's update. That suits methods whose server step is a weighted mean of the updates; it
cannot work with anything on the server that needs the updates one by one: a robust
aggregation rule (median, trimmed mean, Krum, ...), clipping or norm bounding of each update
on the server (user-level DP-FedAvg clips every update before summing), or methods that
compare clients' updates (clustering, client graphs, peer scoring).
"""

from __future__ import annotations

from plural.config import ConfigError
from plural.core.aggregation import WeightedMeanReducer, chain_for
from plural.experiment import ExperimentConfig
from plural.registry import aggregating_algorithm, aggregating_settings
from plural.robust.config import MODEL_ATTACKS

AVERAGING_METHODS = frozenset(
    {"fedavg", "fedprox", "ditto", "fedper", "fedrep", "fedbn", "lg_fedavg", "finetune"}
)
"""Methods whose server step averages the clients' (shared parts of their) updates."""
SECURE_WEIGHTINGS = ("samples", "uniform")
"""Weightings where a client's weight is its own (integer) count: each node can weigh its
clients' updates before masking."""


def secagg_refusal(cfg: ExperimentConfig) -> str | None:
    """Why ``cfg`` cannot run with SecAgg+, or None when it can."""
    name = aggregating_algorithm(cfg)  # fine-tuning: its base
    if name not in AVERAGING_METHODS:
        return (
            f"algorithm {name!r} does not average the clients' updates, so its server needs "
            f"them one by one; SecAgg+ works with {', '.join(sorted(AVERAGING_METHODS))}"
        )
    weighting = getattr(aggregating_settings(cfg), "weighting", "samples")
    if weighting not in SECURE_WEIGHTINGS:
        return (
            f"algorithm.weighting {weighting!r} needs more than each client's own count to "
            f"weigh it; SecAgg+ works with weighting {' or '.join(SECURE_WEIGHTINGS)}"
        )
    if cfg.attack.name in MODEL_ATTACKS:
        return (
            f"attack {cfg.attack.name!r} is simulated by rewriting the malicious clients' "
            "updates on the server, which SecAgg+ never shows it (data poisoning, label_flip "
            "or backdoor, works with SecAgg+)"
        )
    privacy = cfg.privacy
    if privacy is not None and privacy.level == "client":
        return (
            "privacy.level 'client' (DP-FedAvg) clips each client's update on the server, which "
            "needs the updates one by one; with SecAgg+ use privacy.level 'sample' (DP-SGD on "
            "the clients)"
        )
    chain = chain_for(cfg)
    if not isinstance(chain.reducer, WeightedMeanReducer):
        return (
            f"the robust aggregation rule {chain.reducer.name!r} looks at each client's update, "
            "and SecAgg+ shows the server only their sum; turn one of them off"
        )
    if chain.client_stages:
        stages = ", ".join(type(stage).__name__ for stage in chain.client_stages)
        return (
            f"the server processes each client's update ({stages}), and SecAgg+ shows it only "
            "their sum; turn one of them off"
        )
    return None


def check_secagg(cfg: ExperimentConfig, secagg: bool) -> None:
    """A ConfigError, before Flower starts, when SecAgg+ is asked for a run that cannot use
    it (never a run that claims SecAgg+ and sends plain updates)."""
    if not secagg:
        return
    refusal = secagg_refusal(cfg)
    if refusal is not None:
        raise ConfigError(f"flower secagg: {refusal}")
