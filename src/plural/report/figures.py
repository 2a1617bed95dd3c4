"""Figures of the comparison report: curves over rounds, final distributions, costs, clusters.

Every function returns a matplotlib :class:`~matplotlib.figure.Figure` on its own Agg canvas,
without pyplot (as :mod:`plural.diagnostics.plots`, whose heatmaps are reused here), and
:func:`save_figure` writes it as PNG and reproducible SVG. A method keeps the color that
:func:`method_colors` gave it in every figure. matplotlib is imported inside the functions,
so importing plural never loads it.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
import threading
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from plural.diagnostics.plots import (
    client_labels,
    client_order,
    figure_length,
    group_lines,
    label_histogram_figure,
    new_figure,
    similarity_figure,
    sizes_figure,
    tick_labels,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ari_figure",
    "assignment_figure",
    "cdf_figure",
    "cost_figure",
    "distribution_figure",
    "label_histogram_figure",
    "matrix_figure",
    "method_colors",
    "round_curves_figure",
    "save_figure",
    "sizes_figure",
]

Colors = Mapping[str, Any]

PANEL_WIDTH = 5.0  # inches per panel of the figures with panels side by side
PANEL_HEIGHT = 3.6
SMALL_PANEL_COLUMNS = 5  # small multiples per row
LEGEND_INSIDE = 6  # methods listed inside the panel up to this many, below the figure beyond
LEGEND_ROW = 0.22  # inches added to a figure per row of a legend below it
MARK_POINTS = 15  # dot every point of a line that has at most this many
RASTERIZE_POINTS = 2000  # draw lines with more points as pixels in an SVG
FEW_VALUES = 5  # a method with fewer values gets a box with its points instead of a violin
LOG_RATIO = 50.0  # log x axis when the largest positive cost exceeds the smallest this much
MAX_CLUSTER_LEGEND = 12  # cluster ids listed in the assignment legend
UNASSIGNED_COLOR = "#dcdcdc"
BOX_COLOR = "#333333"  # box outlines, dark to read over any method color
UNKNOWN_COLOR = "#000000"  # a method missing from the colors given
LINE_STYLES = ("-", "--", ":", "-.")  # told apart methods whose colors repeat
SVG_SALT = "plural"
BAND_NOTE = "line: mean over clients; band: worst 10% to best 10%"


# --- colors and styles ----------------------------------------------------------------


def _palette(count: int, *, skip_grey: bool = False) -> list[str]:
    """Qualitative colors (hex), enough for ``count`` if possible: tab10, else tab20 (dark
    shades first), else tab20, tab20b and tab20c (60 colors)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    choices = ((("tab10", 1),), (("tab20", 2),), (("tab20", 2), ("tab20b", 4), ("tab20c", 4)))
    colors: list[str] = []
    for choice in choices:
        colors = []
        for name, shades in choice:
            listed = [to_hex(c) for c in colormaps[name].colors]
            colors += [c for shade in range(shades) for c in listed[shade::shades]]
        if skip_grey:
            colors = [c for c in colors if len({c[1:3], c[3:5], c[5:7]}) > 1]
        if len(colors) >= count:
            break
    return colors


def method_colors(labels: Sequence[str]) -> dict[str, Any]:
    """A color (hex) per method label, by position among the distinct labels: tab10 up to 10
    methods, tab20 up to 20, 60 qualitative colors beyond (then repeated, with other line
    styles). Compute it once per report and pass it to every figure."""
    distinct = list(dict.fromkeys(labels))
    palette = _palette(len(distinct))
    return {label: palette[i % len(palette)] for i, label in enumerate(distinct)}


def _style(colors: Colors, label: str) -> dict[str, Any]:
    """Color and line style of a method: solid unless an earlier method has its color. With
    more than 10 methods each block of 10 also gets its own style, so that the lighter shades
    of tab20 and beyond are told apart from their darker partners by more than their hue."""
    color = colors.get(label, UNKNOWN_COLOR)
    order = list(colors)
    earlier = order[: order.index(label)] if label in colors else order
    repeats = sum(1 for other in earlier if colors[other] == color)
    block = (len(earlier) % 60) // 10 if len(colors) > 10 else 0
    return {"color": color, "linestyle": LINE_STYLES[(repeats + block) % len(LINE_STYLES)]}


def _methods(frame: pd.DataFrame, colors: Colors) -> list[str]:
    """The methods of ``frame``: in the order of ``colors``, then unknown ones as they come."""
    present = list(dict.fromkeys(frame["method"])) if "method" in frame else []
    return [m for m in colors if m in present] + [m for m in present if m not in colors]


# --- layout, legends, labels --------------------------------------------------------------


def _legend_shape(labels: Sequence[str], width: float) -> tuple[int, int]:
    """Columns and rows of a legend below a figure ``width`` inches wide (0 rows: inside)."""
    if len(labels) <= LEGEND_INSIDE:
        return 1, 0
    longest = max(len(label) for label in labels)
    columns = int(np.clip(width * 12 // (longest + 6), 1, len(labels)))
    return columns, -(-len(labels) // columns)


def _panels(
    count: int, labels: Sequence[str], width: float | None = None
) -> tuple[Figure, list[Axes]]:
    """A figure of ``count`` panels side by side, with room for the legend of ``labels``."""
    width = width or PANEL_WIDTH * max(count, 1)
    rows = _legend_shape(labels, width)[1]
    figure = new_figure(width, PANEL_HEIGHT + LEGEND_ROW * rows)
    return figure, [figure.add_subplot(1, max(count, 1), i + 1) for i in range(max(count, 1))]


def _legend(figure: Figure, axes: Axes, labels: Sequence[str], colors: Colors) -> None:
    """A legend of the methods: inside ``axes`` if they are few, below the figure if not."""
    from matplotlib.lines import Line2D

    if not labels:
        return
    handles = [Line2D([], [], linewidth=2, label=m, **_style(colors, m)) for m in labels]
    columns, rows = _legend_shape(labels, figure.get_figwidth())
    if rows == 0:
        axes.legend(handles=handles, fontsize=8)
    else:
        figure.legend(
            handles=handles, loc="outside lower center", ncols=columns, fontsize=8, frameon=False
        )


def _decorate(axes: Axes, *, xlabel: str, ylabel: str, title: str, integer_x: bool = False) -> None:
    """Axis labels, title and a light grid, in the sizes every figure uses."""
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel(xlabel, fontsize=9)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if integer_x:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _note(axes: Axes, text: str) -> None:
    """A message in the middle of an empty panel."""
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="grey")


def _seeds_note(seeds: int) -> str:
    return f"; averaged over {seeds} seeds" if seeds > 1 else ""


def _line(axes: Axes, x: Any, y: Any, label: str, colors: Colors, **options: Any) -> None:
    """A method's line; dots on its points when they are few."""
    points = len(x)
    marker = "o" if points <= MARK_POINTS else None
    options = {"marker": marker, "markersize": 3.5, **_style(colors, label), **options}
    axes.plot(x, y, label=label, rasterized=points > RASTERIZE_POINTS, **options)


def _rows(frame: pd.DataFrame, label: str, *columns: str) -> pd.DataFrame:
    """``frame``'s rows of a method, by round, without missing ``columns``."""
    rows = frame[frame["method"] == label].dropna(subset=list(columns))
    return rows.sort_values("round") if "round" in rows else rows


# --- curves over rounds -----------------------------------------------------------------


def round_curves_figure(
    curves: Mapping[str, pd.DataFrame], colors: Colors, *, split: str = "test"
) -> Figure:
    """One panel per metric (``curves``: metric -> :func:`plural.report.compare.round_curves`):
    the mean over clients per round as a line, a band from the worst to the best 10%."""
    frames = [f for f in curves.values() if len(f)]
    every = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["method"])
    labels = _methods(every, colors)
    figure, panels = _panels(len(curves), labels)
    banded = len(labels) <= LEGEND_INSIDE  # more bands overlap into one smear
    for axes, (metric, frame) in zip(panels, curves.items(), strict=False):
        for label in labels:
            rows = _rows(frame, label, "mean")
            if rows.empty:
                continue
            _line(axes, rows["round"], rows["mean"], label, colors)
            if banded:
                _band(axes, rows, label, colors)
        if frame.empty:
            _note(axes, "not evaluated")
        _decorate(
            axes, xlabel="round", ylabel=metric, title=f"{split} {metric} per round", integer_x=True
        )
    seeds = int(every["seeds"].max()) if "seeds" in every and len(every) else 1
    note = BAND_NOTE if banded else "line: mean over clients; bands: one panel per method below"
    figure.suptitle(f"({note} of clients{_seeds_note(seeds)})", fontsize=9)
    _legend(figure, panels[-1], labels, colors)
    return figure


def _band(axes: Axes, rows: pd.DataFrame, label: str, colors: Colors, alpha: float = 0.2) -> None:
    """The worst-10% to best-10% band of a method's rows."""
    color = _style(colors, label)["color"]
    axes.fill_between(
        rows["round"], rows["worst10"], rows["best10"], color=color, alpha=alpha, linewidth=0
    )


def band_panels_figure(
    curves: pd.DataFrame, colors: Colors, *, metric: str = "accuracy", split: str = "test"
) -> Figure:
    """One small panel per method (shared axes): its mean ``metric`` per round and the band
    from its worst to its best 10% of clients, for comparisons with too many methods to
    overlay their bands."""
    labels = _methods(curves, colors)
    columns = min(SMALL_PANEL_COLUMNS, max(len(labels), 1))
    rows = -(-len(labels) // columns)
    figure = new_figure(2.6 * columns, 2.0 * rows + 0.5)
    grid = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    from matplotlib.ticker import MaxNLocator

    for index, (axes, label) in enumerate(zip(grid, labels, strict=False)):
        frame = _rows(curves, label, "mean")
        _line(axes, frame["round"], frame["mean"], label, colors)
        _band(axes, frame, label, colors, alpha=0.3)
        axes.set_title(label, fontsize=8)
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if index + columns >= len(labels):  # nothing drawn below: show its round ticks
            axes.tick_params(labelbottom=True)
    for axes in grid[len(labels) :]:
        axes.set_visible(False)
    figure.suptitle(f"{split} {metric} per round per method ({BAND_NOTE} of clients)", fontsize=9)
    figure.supxlabel("round", fontsize=9)
    figure.supylabel(metric, fontsize=9)
    return figure


# --- final per-client distributions -------------------------------------------------------


def _horizontal() -> dict[str, Any]:
    """The keyword that lays boxes and violins flat (``orientation`` since matplotlib 3.10)."""
    import matplotlib

    version = tuple(int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if version >= (3, 10) else {"vert": False}


def _violin(axes: Axes, position: int, data: np.ndarray, color: str) -> None:
    parts = axes.violinplot(
        [data], positions=[position], widths=0.8, showextrema=False, **_horizontal()
    )
    for body in parts["bodies"]:
        body.set(facecolor=color, edgecolor=color, alpha=0.35, rasterized=True)


def _points(axes: Axes, position: int, data: np.ndarray, color: str) -> None:
    jitter = np.random.default_rng(position).uniform(-0.15, 0.15, len(data))
    many = len(data) > RASTERIZE_POINTS
    axes.scatter(data, position + jitter, s=14, color=color, zorder=3, rasterized=many)


def _box(axes: Axes, position: int, data: np.ndarray, fill: str, width: float) -> None:
    line = {"color": BOX_COLOR, "linewidth": 1.0}
    axes.boxplot(
        [data],
        positions=[position],
        widths=width,
        showfliers=False,
        patch_artist=True,
        boxprops={"facecolor": fill, "edgecolor": BOX_COLOR, "linewidth": 1.0},
        medianprops=line,
        whiskerprops=line,
        capprops=line,
        **_horizontal(),
    )


def distribution_figure(
    values: pd.DataFrame,
    order: Sequence[str],
    colors: Colors,
    *,
    metric: str = "accuracy",
    split: str = "test",
) -> Figure:
    """Final per-client ``metric`` of each method in ``order`` (top to bottom), pooled over
    seeds (``values``: :func:`plural.report.compare.final_values`): a violin with a box, or a
    box with the points when a method has fewer than :data:`FEW_VALUES`; ``n`` on the right."""
    figure = new_figure(7.5, figure_length(len(order), 0.45, 2.5, 14.0))
    axes = figure.add_subplot()
    pooled = False
    for position, label in enumerate(order):
        rows = _rows(values, label, "value")
        data = rows["value"].to_numpy(dtype=np.float64)
        color = _style(colors, label)["color"]
        seeds = rows["seed"].nunique() if "seed" in rows else 1
        pooled |= seeds > 1
        if len(data) >= FEW_VALUES and np.ptp(data) > 0:
            _violin(axes, position, data, color)
            _box(axes, position, data, color, 0.18)
        elif len(data):
            _points(axes, position, data, color)
            _box(axes, position, data, "white", 0.5)
        count = f"n={len(data)}" + (f" ({seeds} seeds)" if seeds > 1 else "")
        axes.annotate(
            count,
            xy=(1.0, position),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    axes.set_yticks(range(len(order)), list(order))
    axes.set_ylim(len(order) - 0.5, -0.5)
    title = f"final {split} {metric} per client" + (", pooled over seeds" if pooled else "")
    _decorate(axes, xlabel=metric, ylabel="", title=title)
    return figure


def cdf_figure(
    values: pd.DataFrame,
    order: Sequence[str],
    colors: Colors,
    *,
    metric: str = "accuracy",
    split: str = "test",
) -> Figure:
    """Empirical CDF of the final per-client ``metric`` per method (a step per value, from 0
    before the smallest to 1 at the largest), pooled over seeds."""
    labels = [m for m in order if (values["method"] == m).any()]
    figure, (axes,) = _panels(1, labels, width=6.5)
    for label in labels:
        data = np.sort(_rows(values, label, "value")["value"].to_numpy(dtype=np.float64))
        if not len(data):
            continue
        x = np.concatenate([data[:1], data])
        y = np.arange(len(data) + 1) / len(data)
        _line(axes, x, y, label, colors, drawstyle="steps-post", marker=None)
    axes.set_ylim(-0.02, 1.02)
    title = f"empirical CDF of final {split} {metric} per client"
    _decorate(axes, xlabel=metric, ylabel=f"share of clients with {metric} ≤ x", title=title)
    _legend(figure, axes, labels, colors)
    return figure


# --- costs ------------------------------------------------------------------------------


def _wrapped(prefix: str, labels: Sequence[str]) -> str:
    return textwrap.fill(f"{prefix}: {', '.join(labels)}", 70)


def _cost_panel(
    axes: Axes,
    costs: pd.DataFrame,
    labels: Sequence[str],
    colors: Colors,
    *,
    column: str,
    xlabel: str,
    missing: str,
) -> None:
    """Accuracy against a cumulative cost ``column``, log x when positive costs span more than
    :data:`LOG_RATIO`; methods that spent nothing sit at the left edge (named in the label),
    methods without the cost (NaN) are named in a note."""
    spent = costs[column].to_numpy(dtype=np.float64)
    positive = spent[np.isfinite(spent) & (spent > 0)]
    log = positive.size > 0 and positive.max() / positive.min() > LOG_RATIO
    edge = positive.min() / 2 if log else 0.0
    free, absent = [], []
    for label in labels:
        rows = _rows(costs, label, column, "accuracy")
        x = rows[column].to_numpy(dtype=np.float64)
        if not len(x):
            absent.append(label)
            continue
        if (x <= 0).all():
            free.append(label)
        _line(axes, np.where(x > 0, x, edge), rows["accuracy"], label, colors)
    if log:
        axes.set_xscale("log")
    notes = [xlabel]
    if free:
        notes.append(_wrapped("at the left edge, nothing spent", free))
    if absent and len(absent) < len(labels):
        notes.append(_wrapped(missing, absent))
    elif absent:
        _note(axes, missing)
    axes.set_xlabel("\n".join(notes), fontsize=9)


def cost_figure(costs: pd.DataFrame, colors: Colors, *, split: str = "test") -> Figure:
    """Mean accuracy per evaluated round against cumulative MB communicated (left) and
    wall-clock seconds (right) (``costs``: :func:`plural.report.compare.cost_curves`)."""
    labels = _methods(costs, colors)
    figure, (sent, clock) = _panels(2, labels)
    megabytes = costs.assign(megabytes=costs["bytes"] / 1e6)
    ylabel = f"mean {split} accuracy"
    _decorate(sent, xlabel="", ylabel=ylabel, title="accuracy vs communication")
    _decorate(clock, xlabel="", ylabel=ylabel, title="accuracy vs wall-clock time")
    xlabel = "MB communicated (up + down, all clients, cumulative)"
    _cost_panel(
        sent,
        megabytes,
        labels,
        colors,
        column="megabytes",
        xlabel=xlabel,
        missing="no bytes recorded",
    )
    xlabel = "wall-clock seconds (cumulative)"
    _cost_panel(
        clock, costs, labels, colors, column="wall_time_s", xlabel=xlabel, missing="no timeline"
    )
    _legend(figure, clock, labels, colors)
    return figure


# --- clusters ---------------------------------------------------------------------------


def _group_axis(axes: Axes, ordered: np.ndarray, starts: Sequence[int]) -> None:
    """Group names on the right of a heatmap whose rows are grouped (``ordered``: row groups)."""
    bounds = [0, *starts, len(ordered)]
    middles = [(low + high - 1) / 2 for low, high in pairwise(bounds)]
    names = [f"group {ordered[low]}" for low in bounds[:-1]]
    step = max(1, -(-len(names) // 40))
    right = axes.secondary_yaxis("right")
    right.set_yticks(middles[::step], names[::step], fontsize=8)
    right.tick_params(length=0)


def _cluster_legend(figure: Figure, grid: np.ndarray, palette: Sequence[str]) -> None:
    """Patches of the most frequent cluster ids (at most :data:`MAX_CLUSTER_LEGEND`)."""
    from matplotlib.patches import Patch

    ids, counts = np.unique(grid[grid >= 0], return_counts=True)
    shown = sorted(ids[np.argsort(-counts, kind="stable")][:MAX_CLUSTER_LEGEND])
    handles = [Patch(color=palette[i + 1], label=str(i)) for i in shown]
    if len(ids) > len(shown):
        handles.append(Patch(color="white", label=f"+{len(ids) - len(shown)} more"))
    if (grid < 0).any():
        handles.append(Patch(color=UNASSIGNED_COLOR, label="none yet"))
    if handles:
        figure.legend(handles=handles, loc="outside right upper", fontsize=8, title="cluster")


def assignment_figure(
    rounds: Sequence[int],
    assignment: np.ndarray,
    groups: Sequence[int] | None,
    *,
    title: str,
) -> Figure:
    """Each client's cluster (``assignment``: rounds x clients, -1: none yet) as a heatmap of
    clients (rows, ordered by true group when ``groups`` are given) by rounds."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    ids = np.asarray(assignment, dtype=np.int64).reshape(len(rounds), -1)
    order, starts = client_order(ids.shape[1], groups)
    grid = np.where(ids < 0, -1, ids).T[order]
    top = int(grid.max(initial=-1))
    colors = _palette(top + 1, skip_grey=True)
    palette = [UNASSIGNED_COLOR] + [colors[i % len(colors)] for i in range(top + 1)]
    norm = BoundaryNorm(np.arange(-1.5, top + 1.0), len(palette))
    figure = new_figure(
        figure_length(len(rounds), 0.3, 4.5, 12.0) + 1.2, figure_length(len(grid), 0.2, 3.0, 12.0)
    )
    axes = figure.add_subplot()
    axes.imshow(
        grid,
        aspect="auto",
        cmap=ListedColormap(palette),
        norm=norm,
        interpolation="nearest",
        rasterized=True,
    )
    tick_labels(axes, "x", [str(r) for r in rounds])
    tick_labels(axes, "y", client_labels(order, None, None))
    group_lines(axes, starts, "black", horizontal=True, vertical=False)
    if groups is not None:
        _group_axis(axes, np.asarray(groups)[order], starts)
    _cluster_legend(figure, grid, palette)
    ylabel = "client" + (" (ordered by true group)" if groups is not None else "")
    _decorate(axes, xlabel="round", ylabel=ylabel, title=title)
    axes.grid(False)
    return figure


def ari_figure(frame: pd.DataFrame, colors: Colors) -> Figure:
    """Number of clusters per round (left) and, when true groups are known, the adjusted Rand
    index of the clustering against them (right); averaged over seeds (``frame``: method,
    round, clusters, ari)."""
    data = frame if "ari" in frame else frame.assign(ari=np.nan)
    mean = data.groupby(["method", "round"], sort=False)[["clusters", "ari"]].mean()
    seeds = int(data.groupby(["method", "round"]).size().max()) if len(data) else 1
    curves = mean.reset_index()
    scored = bool(curves["ari"].notna().any())
    labels = _methods(curves, colors)
    figure, panels = _panels(2 if scored else 1, labels)
    for label in labels:
        rows = _rows(curves, label, "clusters")
        _line(panels[0], rows["round"], rows["clusters"], label, colors, drawstyle="steps-post")
        if scored:
            rows = _rows(curves, label, "ari")
            _line(panels[1], rows["round"], rows["ari"], label, colors)
    title = f"clusters per round{_seeds_note(seeds)}"
    _decorate(panels[0], xlabel="round", ylabel="clusters", title=title, integer_x=True)
    panels[0].yaxis.get_major_locator().set_params(integer=True)
    if scored:
        title = f"ARI against the true groups{_seeds_note(seeds)}"
        _decorate(
            panels[1], xlabel="round", ylabel="adjusted Rand index", title=title, integer_x=True
        )
        panels[1].set_ylim(min(0.0, float(curves["ari"].min())) - 0.05, 1.05)
    _legend(figure, panels[-1], labels, colors)
    return figure


def matrix_figure(
    matrix: np.ndarray,
    *,
    groups: Sequence[int] | None = None,
    title: str,
    limit: float | None = None,
    label: str = "value",
) -> Figure:
    """Heatmap of a client-by-client matrix (influence, similarity), ordered by group if given,
    on a symmetric color scale ([-limit, limit]; None: the largest absolute entry)."""
    return similarity_figure(matrix, groups, None, title, limit, label)


# --- files ------------------------------------------------------------------------------


def _write(figure: Figure, path: Path, **options: Any) -> None:
    """Save through a temporary file renamed into place, so no reader sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with temporary.open("wb") as stream:
            figure.savefig(stream, **options)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _freeze_layout(figure: Figure) -> None:
    """Lay the figure out once and keep that layout. Constrained layout can alternate between
    two solutions a hair apart on successive draws, which renames the SVG's clip paths."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    engine = figure.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        figure.draw_without_rendering()
        figure.set_layout_engine("none")


def save_figure(figure: Figure, folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``folder/name.png`` (150 dpi) and ``folder/name.svg`` (byte-identical when the
    same figure is saved again, or drawn again by another process), creating ``folder``;
    return both paths. The figure's layout is fixed from then on."""
    import matplotlib

    _freeze_layout(figure)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    _write(figure, png, format="png", dpi=150)
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT}):
        _write(figure, svg, format="svg", metadata={"Date": None})
    return png, svg


def privacy_figure(frame: pd.DataFrame, colors: Colors, *, metric: str = "accuracy") -> Figure:
    """Mean (left) and worst-10% (right) final ``metric`` against the privacy budget epsilon,
    one line per algorithm (``frame``: method = algorithm, epsilon, mean, worst10; runs
    without privacy at epsilon = inf, drawn at the right end)."""
    from matplotlib.ticker import NullLocator

    finite = frame.loc[np.isfinite(frame["epsilon"]), "epsilon"]
    top = float(finite.max()) * 2 if len(finite) else 1.0
    data = frame.assign(x=frame["epsilon"].where(np.isfinite(frame["epsilon"]), top))
    labels = _methods(data, colors)
    figure, panels = _panels(2, labels)
    for panel, column, name in ((panels[0], "mean", "mean"), (panels[1], "worst10", "worst 10%")):
        for label in labels:
            rows = data[data["method"] == label].dropna(subset=[column]).sort_values("x")
            _line(panel, rows["x"], rows[column], label, colors)
        panel.set_xscale("log")
        ticks = sorted(set(finite.tolist())) + (
            [top] if (~np.isfinite(frame["epsilon"])).any() else []
        )
        panel.set_xticks(ticks, [f"{t:.2g}" if t != top else "no DP" for t in ticks])
        panel.xaxis.set_minor_locator(NullLocator())
        _decorate(
            panel,
            xlabel="epsilon",
            ylabel=f"{name} {metric}",
            title=f"{name} {metric} against epsilon",
        )
    _legend(figure, panels[-1], labels, colors)
    return figure


# --- per client -------------------------------------------------------------------------


def personal_vs_global_figure(
    points: pd.DataFrame, colors: Colors, *, split: str = "test"
) -> Figure:
    """Each client's final personalized against global-model accuracy (columns method,
    personal, global), one color per method; above the diagonal personalization helped."""
    labels = _methods(points, colors)
    figure, (axes,) = _panels(1, labels, width=6.0)
    for label in labels:
        rows = points[points["method"] == label]
        axes.scatter(
            rows["global"],
            rows["personal"],
            s=12,
            alpha=0.75,
            label=label,
            color=colors.get(label, UNKNOWN_COLOR),
        )
    low = float(np.nanmin(points[["global", "personal"]].to_numpy())) if len(points) else 0.0
    high = float(np.nanmax(points[["global", "personal"]].to_numpy())) if len(points) else 1.0
    axes.plot([low, high], [low, high], color=BOX_COLOR, linewidth=0.8, linestyle=":")
    title = f"final {split} accuracy per client: personalized vs global model"
    _decorate(axes, xlabel="global model", ylabel="personalized model", title=title)
    _legend(figure, axes, labels, colors)
    return figure
