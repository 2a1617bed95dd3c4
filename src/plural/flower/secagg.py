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

AVERAGING_METHODS = frozenset(
    {"fedavg", "fedprox", "ditto", "fedper", "fedrep", "fedbn", "lg_fedavg", "finetune"}
)
"""Methods whose server step averages the clients' (shared parts of their) updates."""


def secagg_refusal(cfg: ExperimentConfig) -> str | None:
    """Why ``cfg`` cannot run with SecAgg+, or None when it can."""
    name = cfg.algorithm.name
    if name not in AVERAGING_METHODS:
        return (
            f"algorithm {name!r} does not average the clients' updates, so its server needs "
            f"them one by one; SecAgg+ works with {', '.join(sorted(AVERAGING_METHODS))}"
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


NOT_WIRED = (
    "flower secagg: this run could use SecAgg+, but plural.flower does not mask updates yet "
    "(Flower's SecAgg+ workflow drives its legacy fit messages, not plural's rounds); run "
    "without --secagg, over TLS"
)


def check_secagg(cfg: ExperimentConfig, secagg: bool) -> None:
    """A ConfigError when SecAgg+ is asked for: why the run cannot use it, or, for a run
    that could, that the masking is not wired in yet (never a run that claims SecAgg+ and
    sends plain updates)."""
    if not secagg:
        return
    refusal = secagg_refusal(cfg)
    if refusal is not None:
        raise ConfigError(f"flower secagg: {refusal}")
    raise ConfigError(NOT_WIRED)
