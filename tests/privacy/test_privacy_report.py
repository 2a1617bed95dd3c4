"""The compare table and the report show epsilon beside accuracy, and accuracy against
epsilon for a sweep over epsilon."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from plural.report.compare import comparison_table, format_comparison
from plural.report.html import write_report
from plural.report.runs import discover_runs, group_methods
from plural.runner import run

pytest.importorskip("dp_accounting")

BASE = {
    "name": "sweep",
    "seed": 0,
    "rounds": 2,
    "dataset": {"name": "digits"},
    "partition": {"name": "dirichlet", "num_clients": 20, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedavg", "weighting": "uniform"},
    "train": {"lr": 0.1, "batch_size": 32},
    "sampling": {"fraction": 0.5, "poisson": True},
    "eval": {"every": 2, "splits": ["test"]},
}


def test_epsilon_beside_accuracy_and_against_it(tmp_path: Path) -> None:
    for epsilon in (2.0, 8.0, None):
        config = copy.deepcopy(BASE)
        if epsilon is not None:
            config["privacy"] = {"clip": 1.0, "epsilon": epsilon, "delta": 1e-3}
        run(config, out=tmp_path / f"eps-{epsilon}")
    methods = group_methods(discover_runs([tmp_path]))
    table = comparison_table(methods)
    eps = sorted(table["epsilon"].dropna())
    assert len(eps) == 2 and eps[0] <= 2.0 < eps[1] <= 8.0
    text = format_comparison(table)
    assert "epsilon" in text.splitlines()[1]
    report = write_report(methods, tmp_path / "report.html").read_text()
    assert "<th>epsilon</th>" in report
    assert 'id="fig-privacy"' in report
