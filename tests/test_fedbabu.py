"""FedBABU: the body federated with the head frozen at its initialisation, then fine-tuning."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch

import plural
from plural.core.masks import last_module_names
from plural.core.params import max_abs_difference, nbytes, state_of
from plural.experiment import load_config
from plural.report.rundir import RunDirectory, deterministic
from plural.runner import build_federation, build_model
from tiny_config import run_algorithm as run
from tiny_config import two_classes_per_client


def initial_params(config: dict[str, Any]) -> dict[str, torch.Tensor]:
    parsed = load_config(config)
    return state_of(build_model(parsed, build_federation(parsed)))


def test_without_finetuning_it_is_fedrep_with_a_frozen_initial_head(
    tiny_config: dict[str, Any],
) -> None:
    babu = run(tiny_config, {"name": "fedbabu", "finetune_epochs": 0})
    fedrep = run(tiny_config, {"name": "fedrep", "head_epochs": 0})
    assert max_abs_difference(babu.server.params, fedrep.server.params) == 0.0
    own = babu.metrics[~babu.metrics["split"].str.contains("@")].reset_index(drop=True)
    pd.testing.assert_frame_equal(deterministic(own), deterministic(fedrep.metrics))


def test_the_head_never_moves_and_only_the_body_travels(
    tiny_config: dict[str, Any], tmp_path
) -> None:
    initial = initial_params(tiny_config)
    head = last_module_names(list(initial))
    body_bytes = nbytes({n: t for n, t in initial.items() if n not in head})
    results = plural.run({**tiny_config, "algorithm": {"name": "fedbabu"}}, out=tmp_path)
    assert not set(head) & set(results.server.params)
    fit = results.metrics.query("split == 'fit'")
    # 3 sampled clients a round send their body; every client (6) receives the body to
    # fine-tune when the engine evaluates, and the sampled ones received it to train too.
    assert set(fit["bytes_up"]) == {0, body_bytes}
    assert fit["bytes_up"].sum() == 2 * 3 * body_bytes
    assert fit["bytes_down"].sum() == 2 * (3 + 6) * body_bytes
    store = RunDirectory(tmp_path).load_checkpoint()["store"]
    trained = [state.base for state in store.values() if state.base is not None]
    assert trained
    for personal in trained:  # the federated phase keeps every client's initial head
        assert max_abs_difference(personal, {n: initial[n] for n in head}) == 0.0


@pytest.mark.parametrize(("seed", "clients"), [(0, 10), (1, 16)])
def test_finetuning_the_frozen_head_beats_fedavg_under_label_skew(
    tiny_config: dict[str, Any], seed: int, clients: int
) -> None:
    two_classes_per_client(tiny_config, seed, clients, rounds=5)
    babu = run(tiny_config, {"name": "fedbabu"})
    fedavg = run(tiny_config, {"name": "fedavg"})
    tuned = babu.summary["test"]["accuracy"]["mean"]
    before = babu.summary["test@global"]["accuracy"]["mean"]
    assert tuned > before + 0.2, (tuned, before)
    assert tuned > fedavg.summary["test"]["accuracy"]["mean"] + 0.1
