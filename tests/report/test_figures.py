from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from plural.report import figures
from plural.report.figures import (
    ari_figure,
    assignment_figure,
    cdf_figure,
    cost_figure,
    distribution_figure,
    label_histogram_figure,
    matrix_figure,
    method_colors,
    round_curves_figure,
    save_figure,
    sizes_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ["fedavg", "ditto [lam=0.1]", "local"]


def lines(axes: Any) -> dict[str, Any]:
    """The labelled lines of a panel, by label."""
    return {line.get_label(): line for line in axes.get_lines()}


def hex_color(artist: Any) -> str:
    return to_hex(artist.get_color())


@pytest.fixture
def colors() -> dict[str, Any]:
    return method_colors(METHODS)


@pytest.fixture
def curves() -> dict[str, pd.DataFrame]:
    rows = []
    for i, method in enumerate(METHODS):
        for r in (2, 4, 6):
            mean = 0.5 + 0.05 * r - 0.1 * i
            rows.append((method, r, mean, mean - 0.2, mean + 0.1, 1))
    frame = pd.DataFrame(rows, columns=["method", "round", "mean", "worst10", "best10", "seeds"])
    loss = frame.assign(mean=2 - frame["mean"], worst10=3 - frame["mean"], best10=1.0)
    return {"accuracy": frame, "loss": loss}


@pytest.fixture
def values() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [("fedavg", s, c, rng.random()) for s in (0, 1) for c in range(8)]
    rows += [("ditto [lam=0.1]", 0, c, rng.random()) for c in range(6)]
    rows += [("local", 0, c, v) for c, v in enumerate([0.2, 0.9, 0.5])]
    return pd.DataFrame(rows, columns=["method", "seed", "client", "value"])


def costs_frame(scale: float) -> pd.DataFrame:
    """fedavg and ditto send ``scale`` times apart; local sends nothing and has no timeline."""
    rows = []
    for r in (1, 2, 3):
        rows.append(("fedavg", r, 0.3 + 0.1 * r, 1e6 * r, 0.5 * r))
        rows.append(("ditto [lam=0.1]", r, 0.4 + 0.1 * r, 1e6 * r * scale, 2.0 * r))
        rows.append(("local", r, 0.35 + 0.05 * r, 0.0, np.nan))
    return pd.DataFrame(rows, columns=["method", "round", "accuracy", "bytes", "wall_time_s"])


def test_method_colors_are_stable_and_distinct() -> None:
    ten = method_colors([f"m{i}" for i in range(10)])
    assert ten["m0"] == "#1f77b4" and len(set(ten.values())) == 10  # tab10
    for count in (20, 25, 60):
        labels = [f"m{i}" for i in range(count)]
        assert len(set(method_colors(labels).values())) == count
        assert method_colors(labels) == method_colors(labels)
    assert list(method_colors(["a", "b", "a"])) == ["a", "b"]
    many = method_colors([f"m{i}" for i in range(70)])
    assert many["m60"] == many["m0"]  # repeated beyond 60 colors, told apart by line style
    styles = {figures._style(many, m)["linestyle"] for m in ("m0", "m60")}
    assert styles == {"-", "--"}


def test_round_curves_line_is_the_mean_and_band_spans_the_tails(
    curves: dict[str, pd.DataFrame], colors: dict[str, Any]
) -> None:
    figure = round_curves_figure(curves, colors, split="val")
    assert isinstance(figure, Figure)
    accuracy, loss = figure.axes[:2]
    assert accuracy.get_title() == "val accuracy per round"
    assert loss.get_title() == "val loss per round"
    assert "worst 10% to best 10%" in figure.get_suptitle()
    for axes, frame in ((accuracy, curves["accuracy"]), (loss, curves["loss"])):
        drawn = lines(axes)
        bands = axes.collections
        assert len(bands) == len(METHODS)
        for method, band in zip(METHODS, bands, strict=True):
            rows = frame[frame["method"] == method]
            line = drawn[method]
            np.testing.assert_allclose(line.get_xdata(), rows["round"])
            np.testing.assert_allclose(line.get_ydata(), rows["mean"])
            assert line.get_marker() == "o"  # few points: dotted
            assert hex_color(line) == colors[method]
            vertices = {tuple(np.round(v, 9)) for v in band.get_paths()[0].vertices}
            for r, low, high in rows[["round", "worst10", "best10"]].itertuples(index=False):
                assert (r, round(low, 9)) in vertices and (r, round(high, 9)) in vertices
            assert to_hex(band.get_facecolor()[0], keep_alpha=False) == colors[method]
    many = {"accuracy": curves["accuracy"].assign(round=lambda f: f["round"] * 10)}
    many["accuracy"] = pd.concat(
        [many["accuracy"].assign(round=many["accuracy"]["round"] + k) for k in range(6)]
    )
    line = lines(round_curves_figure(many, colors).axes[0])["fedavg"]
    assert line.get_marker() in (None, "None", "")  # 18 points: no dots


def test_many_methods_get_their_bands_in_small_panels() -> None:
    labels = [f"m{i}" for i in range(8)]
    colors = method_colors(labels)
    rows = [
        (m, r, 0.5 + 0.01 * i, 0.3, 0.7 + 0.01 * r, 1) for i, m in enumerate(labels) for r in (1, 2)
    ]
    frame = pd.DataFrame(rows, columns=["method", "round", "mean", "worst10", "best10", "seeds"])
    overlay = round_curves_figure({"accuracy": frame}, colors)
    assert not overlay.axes[0].collections  # 8 bands would overlap: lines only
    assert set(lines(overlay.axes[0])) == set(labels)
    assert "one panel per method" in overlay.get_suptitle()
    panels = [a for a in figures.band_panels_figure(frame, colors).axes if a.get_visible()]
    assert [a.get_title() for a in panels] == labels
    for axes, label in zip(panels, labels, strict=True):
        (band,) = axes.collections
        tops = band.get_paths()[0].vertices[:, 1]
        assert tops.min() == pytest.approx(0.3) and tops.max() == pytest.approx(0.72)
        np.testing.assert_allclose(
            lines(axes)[label].get_ydata(), frame.query("method == @label")["mean"]
        )


def test_many_methods_get_a_legend_below_the_figure() -> None:
    labels = [f"method {i} [train.lr={i / 100:g}]" for i in range(25)]
    colors = method_colors(labels)
    frame = pd.DataFrame(
        [(m, r, 0.5, 0.4, 0.6, 1) for m in labels for r in (1, 2)],
        columns=["method", "round", "mean", "worst10", "best10", "seeds"],
    )
    few = round_curves_figure({"accuracy": frame[frame["method"].isin(labels[:3])]}, colors)
    many = round_curves_figure({"accuracy": frame}, colors)
    assert few.axes[0].get_legend() is not None and not few.legends
    assert many.axes[0].get_legend() is None and len(many.legends) == 1
    assert [t.get_text() for t in many.legends[0].get_texts()] == labels
    assert many.get_figheight() > few.get_figheight()


def test_a_method_has_one_color_in_every_figure(
    curves: dict[str, pd.DataFrame], values: pd.DataFrame, colors: dict[str, Any]
) -> None:
    seen: dict[str, set[str]] = {m: set() for m in METHODS}
    drawn = [
        round_curves_figure(curves, colors),
        cdf_figure(values, METHODS, colors),
        cost_figure(costs_frame(3.0), colors),
    ]
    for figure in drawn:
        for axes in figure.axes:
            for label, line in lines(axes).items():
                seen[label].add(hex_color(line))
    violins = distribution_figure(values, METHODS, colors).axes[0].collections
    for method, violin in zip(METHODS[:2], violins, strict=False):  # local: points, no violin
        seen[method].add(to_hex(violin.get_facecolor()[0], keep_alpha=False))
    assert seen == {m: {colors[m]} for m in METHODS}


def test_cdf_steps_once_per_value_up_to_one(values: pd.DataFrame, colors: dict[str, Any]) -> None:
    figure = cdf_figure(values, METHODS, colors, metric="loss")
    axes = figure.axes[0]
    assert axes.get_xlabel() == "loss" and "share of clients" in axes.get_ylabel()
    for method, line in lines(axes).items():
        data = np.sort(values.loc[values["method"] == method, "value"].to_numpy())
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert line.get_drawstyle() == "steps-post"
        assert y[0] == 0 and y[-1] == 1
        np.testing.assert_allclose(np.diff(y), 1 / len(data))  # one step per value
        np.testing.assert_allclose(x[1:], data)


def test_distribution_ranks_top_down_and_counts_clients(
    values: pd.DataFrame, colors: dict[str, Any]
) -> None:
    order = ["local", "fedavg", "ditto [lam=0.1]"]
    axes = distribution_figure(values, order, colors).axes[0]
    ticks = {t.get_text(): t.get_position()[1] for t in axes.get_yticklabels()}
    assert ticks["local"] < ticks["fedavg"] < ticks["ditto [lam=0.1]"]
    assert axes.get_ylim()[0] > axes.get_ylim()[1]  # first ranked on top
    notes = [t.get_text() for t in axes.texts]
    assert notes == ["n=3", "n=16 (2 seeds)", "n=6"]
    assert "pooled over seeds" in axes.get_title()
    # local has 3 values: its points are drawn (on its row), the others get violins
    points = [c for c in axes.collections if len(c.get_offsets()) == 3]
    assert len(points) == 1
    np.testing.assert_allclose(np.sort(points[0].get_offsets()[:, 0]), [0.2, 0.5, 0.9])
    assert np.all(np.abs(points[0].get_offsets()[:, 1] - ticks["local"]) < 0.2)


def test_cost_figure_keeps_methods_that_send_nothing(colors: dict[str, Any]) -> None:
    logged = cost_figure(costs_frame(1000.0), colors)
    sent, clock = logged.axes[:2]
    assert sent.get_xscale() == "log"
    drawn = lines(sent)
    assert set(drawn) == set(METHODS)
    edge = np.asarray(drawn["local"].get_xdata())
    others = np.concatenate([drawn[m].get_xdata() for m in METHODS[:2]])
    assert np.all(edge == edge[0]) and 0 < edge[0] < others.min()
    assert "local" in sent.get_xlabel() and "nothing spent" in sent.get_xlabel()
    assert set(lines(clock)) == {"fedavg", "ditto [lam=0.1]"}
    assert "no timeline: local" in clock.get_xlabel()

    linear = cost_figure(costs_frame(3.0), colors).axes[0]
    assert linear.get_xscale() == "linear"
    np.testing.assert_allclose(lines(linear)["local"].get_xdata(), 0.0)
    np.testing.assert_allclose(lines(linear)["fedavg"].get_xdata(), [1, 2, 3])  # MB

    untimed = costs_frame(3.0).assign(wall_time_s=np.nan)
    clock = cost_figure(untimed, colors).axes[1]
    assert not clock.get_lines() and [t.get_text() for t in clock.texts] == ["no timeline"]


def test_assignment_rows_follow_the_true_groups() -> None:
    rounds = [1, 2, 3]
    assignment = np.array([[-1, -1, -1, -1, -1], [0, 1, 0, 1, 2], [0, 1, 1, 1, 2]])
    groups = [1, 0, 1, 0, 2]
    figure = assignment_figure(rounds, assignment, groups, title="ifca clusters")
    axes = figure.axes[0]
    image = axes.images[0]
    order = [1, 3, 0, 2, 4]  # group 0 first, stable within groups
    np.testing.assert_array_equal(image.get_array(), assignment.T[order])
    assert to_hex(image.cmap(image.norm(-1))) == figures.UNASSIGNED_COLOR
    assert len({to_hex(image.cmap(image.norm(i))) for i in (-1, 0, 1, 2)}) == 4
    assert len(axes.get_lines()) == 2  # separators between the three groups
    assert axes.get_title() == "ifca clusters" and "true group" in axes.get_ylabel()
    right = axes.child_axes[0]
    assert [t.get_text() for t in right.get_yticklabels()] == ["group 0", "group 1", "group 2"]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend == ["0", "1", "2", "none yet"]

    plain = assignment_figure(rounds, assignment, None, title="no groups").axes[0]
    np.testing.assert_array_equal(plain.images[0].get_array(), assignment.T)


def test_assignment_legend_is_capped_and_large_heatmaps_stay_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    assignment = rng.integers(0, 30, (30, 1000))
    assignment[:3] = -1
    figure = assignment_figure(
        list(range(30)), assignment, rng.integers(0, 8, 1000), title="1000 clients"
    )
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert len(legend) == figures.MAX_CLUSTER_LEGEND + 2
    assert legend[-2:] == ["+18 more", "none yet"]
    _, svg = save_figure(figure, tmp_path, "assignment")
    assert svg.stat().st_size < 1_000_000


def test_ari_panel_only_with_scores(colors: dict[str, Any]) -> None:
    frame = pd.DataFrame(
        {
            "method": ["fedavg"] * 4,
            "round": [1, 1, 2, 2],
            "clusters": [2, 4, 3, 3],
            "ari": np.nan,
        }
    )
    unscored = ari_figure(frame, colors)
    assert len(unscored.axes) == 1
    line = lines(unscored.axes[0])["fedavg"]
    np.testing.assert_allclose(line.get_ydata(), [3, 3])  # averaged over the two seeds
    assert "averaged over 2 seeds" in unscored.axes[0].get_title()
    assert len(ari_figure(frame.drop(columns="ari"), colors).axes) == 1
    scored = ari_figure(frame.assign(ari=[0.2, 0.4, 1.0, 0.8]), colors)
    assert len(scored.axes) == 2
    np.testing.assert_allclose(lines(scored.axes[1])["fedavg"].get_ydata(), [0.3, 0.9])


def test_matrix_and_federation_figures() -> None:
    matrix = np.arange(16.0).reshape(4, 4) - 8
    figure = matrix_figure(matrix, groups=[1, 0, 1, 0], title="influence round 3")
    image = figure.axes[0].images[0]
    np.testing.assert_array_equal(image.get_array(), matrix[np.ix_([1, 3, 0, 2], [1, 3, 0, 2])])
    assert image.get_clim() == (-8.0, 8.0)
    assert figure.axes[0].get_title() == "influence round 3"
    histogram = label_histogram_figure(np.array([[3, 0], [1, 4]]), ["cat", "dog"])
    assert [t.get_text() for t in histogram.axes[0].get_xticklabels()] == ["cat", "dog"]
    sizes = sizes_figure({"train": [5, 8], "val": [1, 2], "test": [2, 3]})
    assert [t.get_text() for t in sizes.axes[0].get_legend().get_texts()] == [
        "train",
        "val",
        "test",
    ]


def test_save_figure_writes_png_and_reproducible_svg(
    tmp_path: Path, curves: dict[str, pd.DataFrame], colors: dict[str, Any]
) -> None:
    figure = round_curves_figure(curves, colors)
    folder = tmp_path / "report" / "figures"
    png, svg = save_figure(figure, folder, "curves")
    assert (png, svg) == (folder / "curves.png", folder / "curves.svg")
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert ElementTree.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    first = svg.read_bytes()
    assert b"<dc:date>" not in first
    save_figure(figure, folder, "curves")
    assert svg.read_bytes() == first
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "curves.svg"]


def test_importing_figures_does_not_load_matplotlib() -> None:
    code = (
        "import sys, plural.report.figures; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
