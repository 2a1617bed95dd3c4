from __future__ import annotations

from pathlib import Path

import pytest

import plural

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


SMALL_TEXT = {
    "shakespeare": ["dataset.max_samples_per_client=100", "partition.max_clients=10"],
    "fortunes": ["dataset.chars_per_client=300", "dataset.seq_len=20"],
    "fortune_topics": ["dataset.max_per_class=20", "partition.min_samples=10", "model.layers=1"],
}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid_and_start(path: Path, tmp_path) -> None:
    config = plural.load_config(path)
    # One short round on a small slice shows the whole pipeline accepts the example.
    small = ["rounds=1", "train.local_epochs=1", "eval.splits=[test]"]
    if config.dataset.name in ("mnist", "fashion_mnist"):
        small += ["dataset.max_samples=3000"]
    small += SMALL_TEXT.get(config.dataset.name, [])
    if config.algorithm.name == "pfedlia":  # its warm-up must end before the one round
        small += ["algorithm.warmup_rounds=0"]
    results = plural.run(config, overrides=small, out=tmp_path / path.stem)
    assert results.summary["test"]["accuracy"]["clients"] == results.summary["clients"]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
