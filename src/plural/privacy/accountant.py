"""Privacy accounting with Google's ``dp-accounting`` (RDP: Mironov 2017, Mironov et al.
2019; PLD: Koskela et al. 2020, Doroshenko et al. 2022).

A run's privacy is a composition of subsampled Gaussian mechanisms: one per round for
client-level DP (clients sampled by Poisson sampling with rate ``q``), one per local step for
DP-SGD (examples sampled with rate ``batch / n``). The accountant turns (noise multiplier,
sampling rate, count) into epsilon at a given delta; :func:`calibrate` inverts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from plural.config import ConfigError

try:  # an optional extra: plural[privacy]
    import dp_accounting
    from dp_accounting import pld, rdp
except ImportError:  # pragma: no cover - exercised only without the extra
    dp_accounting = None

PLD_DISCRETIZATION = 1e-4
"""Value discretization of the PLD accountant: epsilon is an upper bound that tightens as
this shrinks (1e-4 is dp-accounting's default)."""


def require_accounting() -> None:
    """ConfigError when ``dp-accounting`` is not installed."""
    if dp_accounting is None:
        raise ConfigError(
            "privacy: needs Google's dp-accounting package: pip install 'plural[privacy]'"
        )


Composition = Sequence[tuple[float, float, int]]
"""``(noise_multiplier, sampling_rate, count)`` triples composed one after the other."""


def epsilon(composition: Composition, delta: float, kind: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composed Poisson-subsampled Gaussian mechanisms
    (``inf`` when a mechanism with noise 0 ran; 0 when nothing ran)."""
    require_accounting()
    events = []
    for noise, rate, count in composition:
        if count <= 0 or rate <= 0:
            continue
        if noise <= 0:
            return math.inf
        event = dp_accounting.GaussianDpEvent(noise)
        if rate < 1:
            event = dp_accounting.PoissonSampledDpEvent(rate, event)
        events.append(dp_accounting.SelfComposedDpEvent(event, int(count)))
    if not events:
        return 0.0
    accountant = _accountant(kind)
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


RDP_ORDERS = (*range(2, 65), 80, 96, 128, 192, 256, 512)
"""Integer Renyi orders: the subsampled Gaussian's RDP has a closed form there, while
fractional orders need a series that is slow at high sampling rates (DP-SGD on a small
client samples most of its examples each step). Leaving fractional orders out can only make
epsilon larger (it is a minimum over orders): by 0.001 on Opacus' reference case."""


def _accountant(kind: str) -> dp_accounting.PrivacyAccountant:
    if kind == "rdp":
        return rdp.RdpAccountant(orders=list(RDP_ORDERS))
    if kind == "pld":
        return pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    raise ValueError(f"unknown accountant {kind!r}; allowed: 'rdp', 'pld'")


def calibrate(
    target: float,
    delta: float,
    rate: float,
    count: int,
    kind: str = "rdp",
    *,
    tolerance: float = 1e-3,
    largest: float = 100.0,
) -> float:
    """The smallest noise multiplier (to ``tolerance`` relative) whose epsilon after ``count``
    mechanisms sampled at ``rate`` is at most ``target``, by bisection (epsilon falls as the
    noise grows). ConfigError when even ``largest`` noise cannot reach the target."""
    if count <= 0:
        return 0.0

    def eps(noise: float) -> float:
        return epsilon([(noise, rate, count)], delta, kind)

    if eps(largest) > target:
        raise ConfigError(
            f"privacy.epsilon: {target} cannot be reached at delta={delta} for {count} "
            f"mechanisms sampled at rate {rate:.4g} (even noise_multiplier {largest:g} gives "
            f"epsilon {eps(largest):.3g}); raise epsilon or delta, or run fewer rounds / steps"
        )
    low, high = 0.0, 1.0
    while eps(high) > target:
        low, high = high, high * 2
    while high - low > tolerance * high:
        middle = (low + high) / 2
        if eps(middle) > target:
            low = middle
        else:
            high = middle
    return high
