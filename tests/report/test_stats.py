"""Confidence intervals over seeds, paired tests against a baseline, shared rank marks and
the round results are read at."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import plural
from plural.cli import main
from plural.config import ConfigError
from plural.report.compare import comparison_table
from plural.report.runs import discover_runs, group_methods
from plural.report.stats import (
    chosen_round,
    confidence_interval,
    paired_tests,
    rank_marks,
    rows_at,
    wilcoxon_p,
)

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fedavg and local over three seeds on one federation, plus a copy of fedavg that
    differs only in its name for the method (an identical method)."""
    root = tmp_path_factory.mktemp("stats")
    base: dict[str, Any] = {
        "rounds": 3,
        "data_seed": 0,
        "dataset": {"name": "digits"},
        "partition": {"name": "dirichlet", "num_clients": 8, "alpha": 0.3, "min_samples": 20},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"lr": 0.05, "batch_size": 16},
        "split": {"val": 0.2, "test": 0.2},
        "backend": {"threads_per_worker": 1},
    }
    for algorithm in ("fedavg", "local"):
        for seed in SEEDS:
            cfg = {**base, "seed": seed, "algorithm": {"name": algorithm}}
            plural.run(cfg, out=root / algorithm / f"seed-{seed}")
    for seed in SEEDS:  # the same results, recorded as another method (FedProx with mu = 0)
        copy = root / "twin" / f"seed-{seed}"
        shutil.copytree(root / "fedavg" / f"seed-{seed}", copy)
        config = yaml.safe_load((copy / "config.yaml").read_text())
        config["algorithm"] = {"name": "fedprox", "mu": 0.0}
        (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def test_confidence_interval_is_the_student_t_interval() -> None:
    low, high = confidence_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    low, high = confidence_interval([0.5, 0.7, 0.6, 0.8, 0.9])
    assert (low + high) / 2 == pytest.approx(0.7) and high - low == pytest.approx(
        2 * 2.7764451051977987 * np.std([0.5, 0.7, 0.6, 0.8, 0.9], ddof=1) / math.sqrt(5)
    )
    assert all(math.isnan(v) for v in confidence_interval([0.4]))


def test_rank_marks_are_shared_where_intervals_overlap() -> None:
    means = [0.90, 0.88, 0.85, 0.70]
    lows = [0.89, 0.865, 0.84, 0.69]
    highs = [0.91, 0.895, 0.87, 0.71]  # C overlaps B, not A
    assert rank_marks(means, lows, highs, higher_better=True) == [1, 1, 2, 4]
    # one seed: no interval; ties share a mark, others do not
    nan = [math.nan] * 3
    assert rank_marks([0.8, 0.8, 0.7], nan, nan, higher_better=True) == [1, 1, 3]
    assert rank_marks([0.3, 0.3, 0.5], nan, nan, higher_better=False) == [1, 1, 3]


def test_wilcoxon_p_of_all_zero_differences_is_one() -> None:
    assert wilcoxon_p(np.zeros(10)) == 1.0
    assert wilcoxon_p(np.linspace(0.1, 1.0, 12)) < 0.01
    assert math.isnan(wilcoxon_p(np.array([])))


def test_paired_test_of_two_identical_methods_gives_p_one(runs: Path) -> None:
    methods = group_methods(discover_runs([runs]))
    paired = paired_tests(methods, "fedavg").set_index("method")
    twin = next(m.label for m in methods if m.algorithm == "fedprox")
    assert paired.loc[twin, "p_clients"] == 1.0 and paired.loc[twin, "p_seeds"] == 1.0
    assert paired.loc[twin, "p_clients_by_seed"] == (1.0, 1.0, 1.0)
    assert paired.loc[twin, "mean_diff"] == 0.0 and paired.loc[twin, "seeds_paired"] == 3
    local = paired.loc["local"]
    # the paired difference is the difference of per-client means, seed by seed
    table = comparison_table(methods).set_index("method")
    assert local["mean_diff"] == pytest.approx(
        table.loc["local", "mean"] - table.loc["fedavg", "mean"]
    )
    assert 0 < local["p_clients"] <= 1 and 0 < local["p_seeds"] <= 1
    # over clients, seed by seed: the reported p is the largest of the seeds' tests
    by_seed = local["p_clients_by_seed"]
    assert len(by_seed) == 3 and local["p_clients"] == max(by_seed)
    run = next(m for m in methods if m.label == "local").runs[0]
    fedavg = next(m for m in methods if m.algorithm == "fedavg")
    base = next(r for r in fedavg.runs if r.seed == run.seed)
    rows = rows_at(run, "test").set_index("client")["accuracy"]
    base_rows = rows_at(base, "test").set_index("client")["accuracy"]
    assert by_seed[0] == wilcoxon_p((rows - base_rows).to_numpy())


def test_comparison_table_has_intervals_and_shared_marks(runs: Path) -> None:
    table = comparison_table(group_methods(discover_runs([runs]))).set_index("method")
    twin = next(m for m in table.index if m not in ("fedavg", "local"))
    assert table.loc["fedavg", "rank"] == table.loc[twin, "rank"]  # identical: same mark
    for method in table.index:
        row = table.loc[method]
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]


def test_best_val_round_is_the_round_of_best_mean_val_accuracy(runs: Path) -> None:
    run = discover_runs([runs / "local" / "seed-1"])[0]
    val = run.evaluated("val").groupby("round")["accuracy"].mean()
    assert chosen_round(run, "best_val") == int(val.idxmax())
    assert chosen_round(run, "last") == 3
    assert set(rows_at(run, "test", "best_val")["round"]) == {int(val.idxmax())}


def test_compare_cli_prints_paired_tests(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(runs), "--no-report", "--baseline", "fedavg"]) == 0
    out = capsys.readouterr().out
    assert "Paired against fedavg" in out and "p clients" in out
    lines = [line for line in out.splitlines() if re.match(r"\d\. ", line)]
    assert len(lines) == 3 and all("+-" in line for line in lines)
    assert main(["compare", str(runs), "--no-report", "--round", "best_val"]) == 0
    assert "best mean val accuracy" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no method 'scaffold'"):
        paired_tests(group_methods(discover_runs([runs])), "scaffold")
