"""The compare table shows clean clients' accuracy, the backdoor's success and absent clients
for runs with attackers and faults, and nothing more for runs without."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

import plural
from plural.report.compare import comparison_table, format_comparison
from plural.report.html import write_report
from plural.report.runs import discover_runs, group_methods
from plural.report.stats import paired_tests


def test_compare_table_has_robustness_columns_only_when_runs_have_them(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg["partition"]["num_clients"] = 10
    plain = plural.run(cfg, out=tmp_path / "plain")
    plain_methods = group_methods(discover_runs([tmp_path / "plain"]))
    assert "clean mean" not in format_comparison(comparison_table(plain_methods))
    attacked = {
        **cfg,
        "attack": {"name": "backdoor", "clients": [1, 2]},
        "faults": {"dropout": 0.3},
        "aggregator": {"name": "median"},
    }
    results = plural.run(attacked, out=tmp_path / "attacked")
    methods = group_methods(discover_runs([tmp_path / "plain", tmp_path / "attacked"]))
    table = comparison_table(methods)
    text = format_comparison(table)
    assert "clean mean" in text and "backdoor ASR" in text and "absent" in text
    row = table[table["algorithm"] == "fedavg"].set_index("method")
    robust = results.summary["robustness"]
    attacked_row = row[row["attack_success"].notna()].iloc[0]
    assert attacked_row["clean_mean"] == pytest.approx(robust["clean"]["test"]["mean"])
    assert attacked_row["clean_worst10"] == pytest.approx(robust["clean"]["test"]["worst10"])
    assert attacked_row["clean_worst10"] <= attacked_row["clean_mean"]
    assert "clean worst10%" in text
    assert attacked_row["attack_success"] == pytest.approx(robust["attack_success"])
    assert attacked_row["absent"] == robust["dropouts"]
    assert plain.summary.get("robustness") is None
    page = write_report(methods, tmp_path / "report.html", title="robust").read_text()
    assert "<th>clean mean</th>" in page and "<th>backdoor ASR</th>" in page
    assert "<th>clean worst10%</th>" in page and "<th>absent</th>" in page
    # With a baseline, every value sits under its own header.
    baseline = next(m.label for m in methods if "attack.name=none" in m.label)
    lines = format_comparison(table, paired=paired_tests(methods, baseline)).splitlines()
    header = next(re.split(r"\s{2,}", line) for line in lines if line.startswith("method"))
    attacked_line = next(line for line in lines if "attack.name=backdoor" in line)
    cells = re.split(r"\s{2,}", attacked_line)
    assert len(cells) == len(header)
    assert cells[header.index("absent")] == str(int(robust["dropouts"]))
    assert cells[header.index("clean mean")] == f"{robust['clean']['test']['mean']:.3f}"
