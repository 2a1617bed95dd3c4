"""What the six recent methods of issue 25 (part A) share: they are listed, and settings that
would silently not apply to them are refused before any work."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import plural
from plural.cli import main

NAMES = ("per_fedavg", "pfedhn", "fedrod", "fedbabu", "fedfomo", "fedpac")


def test_plural_list_shows_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "algorithms"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in NAMES)


@pytest.mark.parametrize("name", ["fedfomo", "pfedhn", "fedpac"])
def test_client_level_privacy_is_refused_where_values_bypass_the_chain(
    name: str, tiny_config: dict[str, Any]
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg.update(
        algorithm={"name": name, "weighting": "uniform"} if name == "fedpac" else {"name": name},
        privacy={"level": "client", "noise_multiplier": 1.0, "clip": 1.0},
        sampling={"fraction": 0.5, "poisson": True},
    )
    with pytest.raises(plural.ConfigError, match=f"cannot protect algorithm '{name}'"):
        plural.run(cfg)


@pytest.mark.parametrize("name", ["per_fedavg", "fedrod", "fedpac"])
def test_sample_level_privacy_is_refused_for_local_objectives(
    name: str, tiny_config: dict[str, Any]
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg.update(
        algorithm={"name": name, "weighting": "uniform"},
        privacy={"level": "sample", "noise_multiplier": 1.0, "clip": 1.0},
    )
    with pytest.raises(plural.ConfigError, match="level 'sample' cannot protect"):
        plural.run(cfg)


@pytest.mark.parametrize("name", ["fedfomo", "pfedhn"])
def test_robust_rules_are_refused_where_nothing_is_averaged(
    name: str, tiny_config: dict[str, Any]
) -> None:
    cfg = {**copy.deepcopy(tiny_config), "algorithm": {"name": name}}
    cfg["aggregator"] = {"name": "median"}
    with pytest.raises(plural.ConfigError, match=r"aggregator\.name"):
        plural.run(cfg)
