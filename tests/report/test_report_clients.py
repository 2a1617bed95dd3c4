"""Report fixes: the per-client table, personalized-vs-global scatter, readable styles for
many methods, the label histogram's caption and '—' before a method has clustered."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plural
from plural.report import clients, figures
from plural.report.compare import _clustering, _clusters_cell
from plural.report.html import write_report
from plural.report.runs import discover_runs, group_methods


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clients")
    base: dict[str, Any] = {
        "rounds": 2,
        "seed": 1,
        "dataset": {"name": "digits"},
        "partition": {"name": "class_groups", "num_clients": 6, "groups": 2},
        "model": {"name": "mlp", "hidden": [16]},
        "train": {"lr": 0.05, "batch_size": 16},
        "backend": {"threads_per_worker": 1},
    }
    for algorithm in ("fedavg", "ditto"):
        plural.run({**base, "algorithm": {"name": algorithm}}, out=root / algorithm)
    return root


def test_per_client_table_lists_size_labels_group_and_accuracy(run_root: Path) -> None:
    methods = group_methods(discover_runs([run_root]))
    run = methods[0].runs[0]
    facts = clients.client_facts(run.federation)
    histogram = np.asarray(run.federation["label_histogram"])
    assert facts["train"].tolist() == run.federation["sizes"]["train"]
    assert facts["labels"].tolist() == (histogram > 0).sum(axis=1).tolist()
    assert facts["group"].tolist() == run.federation["groups"]
    accuracy = clients.per_client_accuracy(methods).set_index("client")
    for method in methods:
        final = method.runs[0].final("test").set_index("client")["accuracy"]
        assert accuracy[method.label].to_dict() == pytest.approx(final.to_dict())
    page = clients.client_table_html(methods)
    assert page.count("<tr>") == 1 + 6 and "classes held" in page


def test_personal_vs_global_points_for_methods_that_score_both(run_root: Path) -> None:
    methods = group_methods(discover_runs([run_root]))
    points = clients.personal_and_global(methods)
    assert set(points["method"]) == {"ditto"}  # fedavg has no personal model
    ditto = next(m for m in methods if m.label == "ditto").runs[0]
    personal = ditto.final("test").set_index("client")["accuracy"]
    shared = ditto.final("test@global").set_index("client")["accuracy"]
    for row in points.to_dict("records"):
        assert row["personal"] == personal[row["client"]]
        assert row["global"] == shared[row["client"]]


def test_the_report_has_the_per_client_section(run_root: Path, tmp_path: Path) -> None:
    methods = group_methods(discover_runs([run_root]))
    out = write_report(methods, tmp_path / "r.html", baseline="fedavg")
    text = out.read_text()
    assert 'id="clients"' in text and 'id="fig-personal-vs-global"' in text
    assert "counted over all of each client&#x27;s splits" in text
    assert "Training samples per client" not in text
    assert "Paired against fedavg" in text


def test_many_methods_get_distinct_color_and_style_pairs() -> None:
    for count in (19, 25, 45):
        labels = [f"method-{i}" for i in range(count)]
        colors = figures.method_colors(labels)
        pairs = {(s["color"], s["linestyle"]) for s in (figures._style(colors, m) for m in labels)}
        assert len(pairs) == count
        # the second block of ten is not drawn like the first
        assert figures._style(colors, "method-10")["linestyle"] != "-"
    few = figures.method_colors(["a", "b", "c"])
    assert {figures._style(few, m)["linestyle"] for m in few} == {"-"}


def test_no_clusters_yet_reads_as_a_dash() -> None:
    class Run:
        def __init__(self, clusters: int) -> None:
            self.summary = {"clustering": {"clusters": clusters, "ari": None}}

    assert math.isnan(_clustering(Run(0))["clusters"])  # type: ignore[arg-type]
    assert _clustering(Run(3))["clusters"] == 3  # type: ignore[arg-type]
    assert _clusters_cell(math.nan, math.nan) == "—"
    assert _clusters_cell(3.0, 0.5) == "3 (0.50)"
