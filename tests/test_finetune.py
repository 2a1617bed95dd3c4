"""Fine-tuning: any global method, then a few early-stopped local epochs per client."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

import plural
from plural.core.params import max_abs_difference
from plural.report.rundir import deterministic
from tiny_config import run_algorithm as run


def test_zero_epochs_is_the_base_method(tiny_config: dict[str, Any]) -> None:
    for base in ({"name": "fedavg"}, {"name": "scaffold"}):
        plain = run(tiny_config, base)
        tuned = run(tiny_config, {"name": "finetune", "base": base, "epochs": 0})
        assert max_abs_difference(plain.server.params, tuned.server.params) == 0.0
        own = tuned.metrics[~tuned.metrics["split"].str.contains("@")].reset_index(drop=True)
        pd.testing.assert_frame_equal(deterministic(plain.metrics), deterministic(own))


def test_global_model_is_the_base_and_before_after_are_reported(
    tiny_config: dict[str, Any],
) -> None:
    plain = run(tiny_config, {"name": "fedprox", "mu": 0.1})
    tuned = run(tiny_config, {"name": "finetune", "base": {"name": "fedprox", "mu": 0.1}})
    assert max_abs_difference(plain.server.params, tuned.server.params) == 0.0
    before = tuned.final("test@global").set_index("client")["accuracy"]
    assert before.equals(plain.final("test").set_index("client")["accuracy"])
    assert {"test", "test@global", "val", "val@global"} <= set(tuned.summary)


def test_finetuning_helps_under_label_skew(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(
        partition={"name": "classes_per_client", "num_clients": 10, "classes": 2},
        sampling={},
        rounds=5,
        model={"name": "mlp", "hidden": [32]},
        eval={"every": 5},
    )
    tuned = run(tiny_config, {"name": "finetune", "epochs": 5})
    after, before = (
        tuned.summary["test"]["accuracy"]["mean"],
        tuned.summary["test@global"]["accuracy"]["mean"],
    )
    assert after > before + 0.1, (after, before)


def test_base_settings_are_validated(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(plural.ConfigError, match="base"):
        run(tiny_config, {"name": "finetune", "base": {"name": "fedprox", "muu": 1}})
    with pytest.raises(plural.ConfigError, match="finetune"):
        run(tiny_config, {"name": "finetune", "base": {"name": "finetune"}})
