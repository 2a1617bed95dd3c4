"""Settings of the robustness sections of a run: ``aggregator``, ``attack`` and ``faults``.

They are plain frozen dataclasses (validated by :func:`plural.config.build`) so that the
experiment config can hold them without importing the machinery that acts on them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from plural.config import setting

AggregatorName = Literal[
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "norm_bound",
    "centered_clip",
    "dnc",
]

# Which settings each rule reads; a setting given for a rule that ignores it is an error.
RULE_SETTINGS: dict[str, tuple[str, ...]] = {
    "mean": (),
    "median": ("bucket",),
    "trimmed_mean": ("trim", "bucket"),
    "krum": ("f", "bucket"),
    "multi_krum": ("f", "m", "bucket"),
    "bulyan": ("f", "bucket"),
    "geometric_median": ("iterations", "smoothing", "bucket"),
    "norm_bound": ("bound",),
    "centered_clip": ("tau", "bucket"),
    "dnc": ("f", "filter_share", "subsamples", "subsample_size", "bucket"),
}


@dataclasses.dataclass(frozen=True)
class AggregatorConfig:
    """The server's aggregation rule (applied per cluster for clustered methods, to the shared
    part for partially personalized ones)."""

    name: AggregatorName = setting(
        "mean",
        help="'mean' (FedAvg's weighted mean); 'median' (coordinate-wise, Yin et al. 2018); "
        "'trimmed_mean' (coordinate-wise, Yin et al. 2018); 'krum' / 'multi_krum' (Blanchard "
        "et al. 2017); 'bulyan' (El Mhamdi et al. 2018); 'geometric_median' (smoothed "
        "Weiszfeld, Pillutla et al. 2022); 'norm_bound' (clip each update's norm, then the "
        "mean, Sun et al. 2019); 'centered_clip' (Karimireddy et al. 2021); 'dnc' (divide and "
        "conquer: drop the updates farthest out along the top singular direction, "
        "Shejwalkar & Houmansadr 2021)",
    )
    trim: float = setting(
        0.1,
        help="'trimmed_mean': share of updates dropped at each end of every coordinate",
        ge=0,
        lt=0.5,
    )
    f: int = setting(
        1,
        help="'krum', 'multi_krum', 'bulyan', 'dnc': number of attackers assumed per round",
        ge=0,
    )
    m: int | None = setting(
        None,
        help="'multi_krum': updates averaged (the m best Krum scores; null: n - f)",
        ge=1,
    )
    iterations: int = setting(10, help="'geometric_median': Weiszfeld iterations (at most)", ge=1)
    smoothing: float = setting(
        1e-6,
        help="'geometric_median': smoothing nu, the least distance a point is weighed at",
        gt=0,
    )
    bound: float = setting(1.0, help="'norm_bound': largest L2 norm of a client update", gt=0)
    tau: float = setting(
        1.0, help="'centered_clip': clipping radius around the previous round's update", gt=0
    )
    filter_share: float = setting(
        1.0,
        help="'dnc': c, the rule drops c * f updates per coordinate subset (the paper's "
        "filtering fraction)",
        gt=0,
    )
    subsamples: int = setting(
        1,
        help="'dnc': random coordinate subsets scored; an update is kept only if no subset "
        "drops it (the paper's niters)",
        ge=1,
    )
    subsample_size: int = setting(
        10_000,
        help="'dnc': coordinates in each random subset (all of them where the update is smaller)",
        ge=1,
    )
    bucket: int = setting(
        1,
        help="rules over all updates (median, trimmed_mean, krum, multi_krum, bulyan, "
        "geometric_median, dnc) and centered_clip: average the round's updates in random "
        "buckets of this many before the rule (Karimireddy, He & Jaggi 2022, for "
        "heterogeneous clients); 1: off",
        ge=1,
    )

    def __post_init__(self) -> None:
        used = RULE_SETTINGS[self.name]
        for field in dataclasses.fields(self):
            if field.name == "name" or field.name in used:
                continue
            if getattr(self, field.name) != field.default:
                users = [k for k, v in RULE_SETTINGS.items() if field.name in v]
                raise ValueError(
                    f"{field.name!r} is not a setting of {self.name!r} (it is used by "
                    f"{', '.join(users)}); {self.name!r} takes "
                    f"{', '.join(used) if used else 'no settings'}"
                )


AttackName = Literal[
    "none",
    "sign_flip",
    "scale",
    "gaussian",
    "alie",
    "ipm",
    "min_max",
    "label_flip",
    "backdoor",
]
MODEL_ATTACKS = ("sign_flip", "scale", "gaussian", "alie", "ipm", "min_max")
OMNISCIENT_ATTACKS = ("alie", "ipm", "min_max")
DATA_ATTACKS = ("label_flip", "backdoor")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Malicious clients and what they do (absent: no attack)."""

    name: AttackName = setting(
        "none",
        help="model poisoning of the malicious clients' updates: 'sign_flip', 'scale', "
        "'gaussian', and the omniscient 'alie' (Baruch et al. 2019), 'ipm' (Xie et al. 2020), "
        "'min_max' (Shejwalkar & Houmansadr 2021), which see the round's benign updates; or "
        "data poisoning of their training data: 'label_flip', 'backdoor' (a pixel trigger "
        "and a target label, Bagdasaryan et al. 2020; image data)",
    )
    fraction: float | None = setting(
        None, help="share of clients that are malicious, drawn from the seed", gt=0, lt=1
    )
    clients: tuple[int, ...] | None = setting(
        None, help="the malicious clients' ids (instead of fraction)", ge=0
    )
    start_round: int = setting(1, help="first round in which the attack acts", ge=1)
    scale: float = setting(
        -1.0,
        help="'scale': the factor the update is multiplied by; 'sign_flip' ignores it (always -1)",
    )
    std: float = setting(1.0, help="'gaussian': std of the noise that replaces the update", gt=0)
    z: float | None = setting(
        None,
        help="'alie': how many standard deviations below the mean (null: the paper's z_max "
        "from the number of clients)",
        ge=0,
    )
    epsilon: float = setting(
        0.5, help="'ipm': the malicious update is -epsilon times the benign mean", gt=0
    )
    target: int = setting(0, help="'backdoor': the label the trigger makes the model predict", ge=0)
    poison_share: float = setting(
        0.5,
        help="'backdoor': share of a malicious client's training samples given the trigger",
        gt=0,
        le=1,
    )
    trigger_size: int = setting(
        3, help="'backdoor': side of the square trigger in the image's corner (pixels)", ge=1
    )

    def __post_init__(self) -> None:
        chosen = self.fraction is not None or self.clients is not None
        if self.name == "none":
            if chosen:
                raise ValueError("fraction/clients given but no attack name (e.g. name: alie)")
            return
        if self.fraction is not None and self.clients is not None:
            raise ValueError("give either fraction or clients, not both")
        if not chosen:
            raise ValueError(f"attack {self.name!r} needs fraction or clients (the attackers)")

    @property
    def active(self) -> bool:
        return self.name != "none"


@dataclasses.dataclass(frozen=True)
class FaultsConfig:
    """Clients that vanish, fail or are too slow."""

    dropout: float = setting(
        0.0,
        help="probability that a sampled client never replies (drawn per round and client); "
        "it downloads the model, then the round goes on without it",
        ge=0,
        lt=1,
    )
    max_failures: int | None = setting(
        None,
        help="client code that raises is isolated: the failure is recorded with its message "
        "and the round goes on without that client; the run stops once more than this many "
        "failures happened (null: not isolated, the first error stops the run)",
        ge=0,
    )
    deadline: float | None = setting(
        None,
        help="seconds of simulated time a client has to reply; a client whose training "
        "takes longer (its samples x epochs / its speed) is cut off (null: no deadline)",
        gt=0,
    )
    throughput: float = setting(
        100.0, help="deadline: training samples per second of a client of median speed", gt=0
    )
    speed_spread: float = setting(
        0.5,
        help="deadline: sigma of the log-normal speed of each client (fixed per client)",
        ge=0,
    )
    speed_jitter: float = setting(
        0.1, help="deadline: sigma of each round's log-normal slow-down of a client", ge=0
    )

    @property
    def active(self) -> bool:
        return self.dropout > 0 or self.max_failures is not None or self.deadline is not None
