"""The ``privacy:`` section of a run config (absent: no differential privacy)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from plural.config import setting

Level = Literal["client", "sample", "local"]
AccountantKind = Literal["rdp", "pld"]


@dataclasses.dataclass(frozen=True)
class AdaptiveClipConfig:
    """Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
    Clipping"): the clip follows a quantile of the clients' update norms, estimated privately
    from how many updates were clipped."""

    quantile: float = setting(0.5, help="target share of updates left unclipped", gt=0, lt=1)
    lr: float = setting(0.2, help="geometric learning rate of the clip", gt=0)
    count_noise: float | None = setting(
        None,
        help="std of the Gaussian noise on the count of unclipped updates (default: the "
        "expected cohort size / 20, the paper's choice)",
        gt=0,
    )


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy of a run: what is protected, how, and the budget."""

    level: Level = setting(
        "client",
        help="'client': user-level central DP (DP-FedAvg, McMahan et al. 2018): each client's "
        "update is clipped, the server adds Gaussian noise to their sum; 'sample': DP-SGD on "
        "each client (Abadi et al. 2016), every example protected; 'local': each client noises "
        "its own clipped upload (no trusted server)",
    )
    clip: float | None = setting(
        None,
        help="L2 norm bound: of each client's update (client, local) or of each example's "
        "gradient (sample); required; with adaptive_clip, its starting value",
        gt=0,
    )
    noise_multiplier: float | None = setting(
        None, help="Gaussian noise std as a multiple of clip (give this or epsilon)", ge=0
    )
    epsilon: float | None = setting(
        None,
        help="target epsilon for the configured rounds and sampling: the noise multiplier is "
        "calibrated before the run (give this or noise_multiplier)",
        gt=0,
    )
    delta: float | None = setting(
        None,
        help="delta of (epsilon, delta)-DP; must be below 1/n, n the number of protected units "
        "(clients, or the smallest client's examples for level sample); default: 1/n^1.1",
        gt=0,
        lt=1,
    )
    adaptive_clip: AdaptiveClipConfig | None = setting(
        None, help="level client: let the clip follow a quantile of update norms {quantile, lr}"
    )
    accountant: AccountantKind = setting(
        "rdp",
        help="privacy accountant (Google's dp-accounting): 'rdp' (Renyi DP, Mironov 2017) or "
        "'pld' (privacy loss distributions, tighter)",
    )

    def __post_init__(self) -> None:
        if self.clip is None:
            raise ValueError(
                "clip: required; the L2 bound of each client's update (level client/local) or of "
                "each example's gradient (level sample), e.g. clip: 1.0"
            )
        if (self.noise_multiplier is None) == (self.epsilon is None):
            raise ValueError(
                "give exactly one of noise_multiplier (the noise) or epsilon (the target budget, "
                f"calibrated before the run); got noise_multiplier={self.noise_multiplier}, "
                f"epsilon={self.epsilon}"
            )
        if self.adaptive_clip is not None and self.level != "client":
            raise ValueError(f"adaptive_clip: applies to level client only, not {self.level!r}")
