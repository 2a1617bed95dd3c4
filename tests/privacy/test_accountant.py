"""The accountant against published values, and calibration of the noise to a target."""

from __future__ import annotations

import math

import pytest

from plural.config import ConfigError
from plural.privacy.accountant import calibrate, epsilon

pytest.importorskip("dp_accounting")


def test_opacus_reference_case() -> None:
    # Opacus' accountant tests: sigma 1.5, sampling rate 0.04, 2,250 steps, delta 1e-5.
    case = [(1.5, 0.04, 2250)]
    assert epsilon(case, 1e-5, "rdp") == pytest.approx(7.33, abs=0.01)
    assert epsilon(case, 1e-5, "pld") == pytest.approx(6.77, abs=0.02)


def test_tff_tutorial_case() -> None:
    # TFF's DP tutorial: 120 of 3,383 users a round, noise 1.2, 100 rounds, delta 1e-5.
    assert epsilon([(1.2, 120 / 3383, 100)], 1e-5, "rdp") == pytest.approx(2.0, abs=0.05)


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([(0.0, 0.1, 3)], 1e-5) == math.inf
    assert epsilon([(1.0, 0.1, 10)], 1e-5) < epsilon([(1.0, 0.1, 20)], 1e-5)
    assert epsilon([(2.0, 0.1, 10)], 1e-5) < epsilon([(1.0, 0.1, 10)], 1e-5)
    # composing two runs is the run of their total count
    two = epsilon([(1.0, 0.1, 10), (1.0, 0.1, 15)], 1e-5)
    assert two == pytest.approx(epsilon([(1.0, 0.1, 25)], 1e-5), rel=1e-9)


@pytest.mark.parametrize(
    ("target", "rate", "count", "kind"),
    [(1.0, 0.1, 50, "rdp"), (8.0, 0.02, 400, "rdp"), (4.0, 1.0, 20, "rdp"), (2.0, 0.1, 10, "pld")],
)
def test_calibration_finds_the_smallest_noise(
    target: float, rate: float, count: int, kind: str
) -> None:
    tolerance = 1e-3 if kind == "rdp" else 2e-2  # PLD is slower: a coarser bisection
    noise = calibrate(target, 1e-5, rate, count, kind, tolerance=tolerance)
    assert epsilon([(noise, rate, count)], 1e-5, kind) <= target
    assert epsilon([(noise * (1 - 2 * tolerance), rate, count)], 1e-5, kind) > target


def test_impossible_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot be reached"):
        calibrate(1e-4, 1e-5, 1.0, 10_000, "rdp", largest=50.0)
