from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import plural
from test_golden_metrics import assert_same_results, machine, results_fingerprint

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden" / "examples.json"
"""Each example's short run, recorded (issue 19: the examples' run directories come out the
same before and after a refactor). Regenerate as ``tests/test_golden_metrics.py`` says."""


@pytest.fixture(scope="module")
def golden() -> Any:
    mode = os.environ.get("PLURAL_REGENERATE_GOLDEN")
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else None
    if mode == "all" or recorded is None:
        recorded = {"machine": machine(), "runs": {}}
    yield recorded
    if mode:
        GOLDEN.write_text(json.dumps(recorded, indent=0, sort_keys=True) + "\n")


SMALL_TEXT = {
    "shakespeare": ["dataset.max_samples_per_client=100", "partition.max_clients=10"],
    "fortunes": ["dataset.chars_per_client=300", "dataset.seq_len=20"],
    "fortune_topics": ["dataset.max_per_class=20", "partition.min_samples=10", "model.layers=1"],
}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid_and_start(path: Path, tmp_path: Path, golden: Any) -> None:
    config = plural.load_config(path)
    # One short round on a small slice shows the whole pipeline accepts the example.
    # threads pinned: results are bit-identical only at a fixed thread count
    small = ["rounds=1", "train.local_epochs=1", "eval.splits=[test]", "backend.threads=1"]
    if config.dataset.name in ("mnist", "fashion_mnist"):
        small += ["dataset.max_samples=3000"]
    small += SMALL_TEXT.get(config.dataset.name, [])
    if config.algorithm.name == "pfedlia":  # its warm-up must end before the one round
        small += ["algorithm.warmup_rounds=0"]
    results = plural.run(config, overrides=small, out=tmp_path / path.stem)
    assert results.summary["test"]["accuracy"]["clients"] == results.summary["clients"]
    now = results_fingerprint(plural.load(tmp_path / path.stem))  # from the run directory
    if os.environ.get("PLURAL_REGENERATE_GOLDEN"):
        golden["runs"].setdefault(path.name, now)
    else:
        assert path.name in golden["runs"], "no golden run: PLURAL_REGENERATE_GOLDEN=missing"
        assert_same_results(now, golden["runs"][path.name], golden["machine"])


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
