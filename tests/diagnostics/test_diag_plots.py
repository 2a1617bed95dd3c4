from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plural.diagnostics.plots import (
    plot_client_values,
    plot_label_histogram,
    plot_similarity,
    plot_sizes,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000


def test_label_histogram_plot(tmp_path: Path, make_federation) -> None:
    federation = make_federation({"name": "classes_per_client", "num_clients": 6, "classes": 2})
    groups = np.array([1, 0, 1, 0, 2, 2])
    out = plot_label_histogram(
        federation.label_histogram(),
        tmp_path / "nested" / "labels.png",
        class_names=federation.class_names,
        groups=groups,
    )
    assert out == tmp_path / "nested" / "labels.png"
    assert_png(out)
    assert_png(plot_label_histogram(np.random.default_rng(0).random((80, 12)), tmp_path / "b.png"))
    with pytest.raises(ValueError, match="group ids"):
        plot_label_histogram(np.ones((3, 2)), tmp_path / "c.png", groups=[0, 1])


def test_sizes_plot_single_and_stacked(tmp_path: Path) -> None:
    assert_png(plot_sizes(np.array([30, 5, 12]), tmp_path / "sizes.png"))
    splits = {"train": [20, 3, 8], "val": [3, 1, 1], "test": [7, 1, 3]}
    assert_png(plot_sizes(splits, str(tmp_path / "splits.png")))


def test_client_values_plot(tmp_path: Path) -> None:
    values = np.array([0.3, 0.1, 0.5, 0.2])
    assert_png(plot_client_values(values, tmp_path / "v.png", "Client drift", "||w_k - w||"))
    path, ids = tmp_path / "g.png", [4, 7, 9, 11]
    assert_png(plot_client_values(values, path, "Deviation", "norm", [0, 1, 0, 1], ids))
    assert_png(plot_client_values(np.arange(60.0), tmp_path / "many.png", "Many", "value"))


def test_similarity_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    s = np.clip(rng.normal(0, 0.5, (8, 8)), -1, 1)
    s = (s + s.T) / 2
    np.fill_diagonal(s, 1.0)
    assert_png(plot_similarity(s, tmp_path / "s.png", groups=[0, 1] * 4))
    assert_png(plot_similarity(s, tmp_path / "plain.png"))


def test_importing_plural_does_not_load_matplotlib() -> None:
    code = (
        "import sys, plural, plural.diagnostics; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
