"""Figures of the diagnostics: label histogram, client sizes, per-client values, similarity.

Each figure has a core that returns a :class:`~matplotlib.figure.Figure`
(``label_histogram_figure``, ...), which the report reuses, and a ``plot_*`` function that
saves it as a PNG. matplotlib is imported inside the functions, so importing plural never
loads it. Figures are drawn on matplotlib's Agg (PNG) canvas directly, without pyplot: nothing
needs a display, and the backend of an interactive session that calls these functions is left
as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_TICKS = 40  # label at most this many clients on an axis; thin out beyond
UPRIGHT_CHARACTERS = 48  # turn x tick labels upright beyond this many characters in all
MANY_BARS = 200  # beyond this many clients, sizes are drawn as filled steps, not bars
ANNOTATE_CELLS = 200  # write the count in each heatmap cell up to this many cells

Sizes = np.ndarray | Sequence[int] | Mapping[str, np.ndarray | Sequence[int]]


def new_figure(width: float, height: float) -> Figure:
    """An empty figure (inches) with constrained layout on its own Agg canvas, no pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def figure_length(count: int, per_item: float, low: float, high: float) -> float:
    """A figure side that grows with the number of items drawn along it, within limits."""
    return float(np.clip(1.5 + per_item * count, low, high))


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def client_order(
    count: int, groups: Sequence[int] | np.ndarray | None
) -> tuple[np.ndarray, list[int]]:
    """Client order (by group, stable) and the positions where a new group starts."""
    if groups is None:
        return np.arange(count), []
    groups = np.asarray(groups)
    if len(groups) != count:
        raise ValueError(f"{len(groups)} group ids for {count} clients")
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    return order, [i for i in range(1, count) if ordered[i] != ordered[i - 1]]


def tick_labels(axes: Axes, axis: str, labels: Sequence[str]) -> None:
    """Label the positions ``0..n-1`` of ``axis`` ('x' or 'y'), at most ``MAX_TICKS`` of them."""
    step = max(1, -(-len(labels) // MAX_TICKS))
    positions = list(range(0, len(labels), step))
    shown = [labels[i] for i in positions]
    if axis == "x":
        crowded = sum(len(label) + 1 for label in shown) > UPRIGHT_CHARACTERS
        axes.set_xticks(positions, shown, rotation=90 if crowded else 0)
    else:
        axes.set_yticks(positions, shown)


def client_labels(
    order: np.ndarray, clients: Sequence[int] | None, groups: np.ndarray | None
) -> list[str]:
    """Tick labels of the clients in ``order``: their ids, with ``(g<group>)`` if given."""
    ids = np.arange(len(order)) if clients is None else np.asarray(clients)
    if groups is None:
        return [str(ids[i]) for i in order]
    return [f"{ids[i]} (g{groups[i]})" for i in order]


def group_lines(
    axes: Axes, starts: Sequence[int], color: str, *, horizontal: bool, vertical: bool
) -> None:
    """Lines between groups of clients on a heatmap."""
    for start in starts:
        if horizontal:
            axes.axhline(start - 0.5, color=color, linewidth=2)
        if vertical:
            axes.axvline(start - 0.5, color=color, linewidth=2)


def _annotate(axes: Axes, values: np.ndarray, fmt: str) -> None:
    """Write each cell's value, dark on light cells and light on dark ones."""
    if values.size > ANNOTATE_CELLS:
        return
    top = values.max() if values.size else 0
    for (row, col), value in np.ndenumerate(values):
        light = top > 0 and value > 0.6 * top
        axes.text(
            col,
            row,
            format(value, fmt),
            ha="center",
            va="center",
            fontsize=7,
            color="black" if light else "white",
        )


def label_histogram_figure(
    histogram: np.ndarray,
    class_names: Sequence[str] | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
) -> Figure:
    """Heatmap of sample counts, clients (rows, ordered by group if given) by classes."""
    counts = np.asarray(histogram)
    num_clients, num_classes = counts.shape
    order, starts = client_order(num_clients, groups)
    figure = new_figure(
        figure_length(num_classes, 0.45, 4.0, 12.0), figure_length(num_clients, 0.28, 3.0, 14.0)
    )
    axes = figure.add_subplot()
    image = axes.imshow(
        counts[order], aspect="auto", cmap="viridis", interpolation="nearest", rasterized=True
    )
    figure.colorbar(image, ax=axes, label="samples")
    names = [str(c) for c in range(num_classes)] if class_names is None else list(class_names)
    tick_labels(axes, "x", names)
    group_ids = None if groups is None else np.asarray(groups)
    tick_labels(axes, "y", client_labels(order, None, group_ids))
    group_lines(axes, starts, "white", horizontal=True, vertical=False)
    _annotate(axes, counts[order], "d" if np.issubdtype(counts.dtype, np.integer) else ".2g")
    axes.set(xlabel="class", ylabel="client", title="Label histogram")
    return figure


def plot_label_histogram(
    histogram: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """:func:`label_histogram_figure` saved as a PNG at ``path``."""
    return save_png(label_histogram_figure(histogram, class_names, groups), path)


def sizes_figure(sizes: Sizes) -> Figure:
    """Bar chart of samples per client; a mapping of split name to sizes stacks the splits."""
    parts = dict(sizes) if isinstance(sizes, Mapping) else {"samples": sizes}
    columns = {name: np.asarray(values) for name, values in parts.items()}
    num_clients = len(next(iter(columns.values()))) if columns else 0
    figure = new_figure(figure_length(num_clients, 0.25, 4.0, 14.0), 3.5)
    axes = figure.add_subplot()
    positions = np.arange(num_clients)
    bottom = np.zeros(num_clients)
    for name, values in columns.items():
        top = bottom + values
        if num_clients > MANY_BARS:  # one filled step outline per split, not a bar per client
            axes.fill_between(positions, bottom, top, step="mid", label=name, linewidth=0)
        else:
            axes.bar(positions, values, bottom=bottom, label=name)
        bottom = top
    tick_labels(axes, "x", [str(c) for c in positions])
    if len(columns) > 1:
        axes.legend(fontsize=8)
    axes.set(xlabel="client", ylabel="samples", title="Samples per client")
    return figure


def plot_sizes(sizes: Sizes, path: str | Path) -> Path:
    """:func:`sizes_figure` saved as a PNG at ``path``."""
    return save_png(sizes_figure(sizes), path)


def client_values_figure(
    values: np.ndarray | Sequence[float],
    title: str,
    ylabel: str,
    groups: Sequence[int] | np.ndarray | None = None,
    clients: Sequence[int] | None = None,
) -> Figure:
    """Bar chart of one value per client (e.g. gradient deviation, drift), coloured by group.

    ``clients`` are the ids shown under the bars (default ``0 .. K-1``); a dashed line marks
    the mean.
    """
    heights = np.asarray(values, dtype=np.float64)
    figure = new_figure(figure_length(len(heights), 0.25, 4.0, 14.0), 3.5)
    axes = figure.add_subplot()
    positions = np.arange(len(heights))
    if groups is None:
        axes.bar(positions, heights)
    else:
        group_ids = np.asarray(groups)
        for group in np.unique(group_ids):
            chosen = group_ids == group
            axes.bar(positions[chosen], heights[chosen], label=f"group {group}")
        axes.legend(fontsize=8)
    if len(heights) and np.isfinite(heights).any():
        axes.axhline(np.nanmean(heights), color="grey", linestyle="--", linewidth=1)
    tick_labels(axes, "x", client_labels(positions, clients, None))
    axes.set(xlabel="client", ylabel=ylabel, title=title)
    return figure


def plot_client_values(
    values: np.ndarray | Sequence[float],
    path: str | Path,
    title: str,
    ylabel: str,
    groups: Sequence[int] | np.ndarray | None = None,
    clients: Sequence[int] | None = None,
) -> Path:
    """:func:`client_values_figure` saved as a PNG at ``path``."""
    return save_png(client_values_figure(values, title, ylabel, groups, clients), path)


def similarity_figure(
    matrix: np.ndarray,
    groups: Sequence[int] | np.ndarray | None = None,
    clients: Sequence[int] | None = None,
    title: str = "Cosine similarity of client updates",
    limit: float | None = 1.0,
    label: str = "similarity",
) -> Figure:
    """Heatmap of a client-by-client matrix, ordered by group if given. The colour scale is
    symmetric, [-limit, limit] (``limit`` None: the largest absolute finite entry); NaN
    entries stay blank."""
    values = np.asarray(matrix, dtype=np.float64)
    if limit is None:
        finite = np.abs(values[np.isfinite(values)])
        limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    order, starts = client_order(len(values), groups)
    side = figure_length(len(values), 0.28, 4.0, 12.0)
    figure = new_figure(side + 1.0, side)
    axes = figure.add_subplot()
    ordered = values[np.ix_(order, order)]
    image = axes.imshow(
        ordered, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", rasterized=True
    )
    figure.colorbar(image, ax=axes, label=label)
    labels = client_labels(order, clients, None if groups is None else np.asarray(groups))
    tick_labels(axes, "x", labels)
    tick_labels(axes, "y", labels)
    group_lines(axes, starts, "black", horizontal=True, vertical=True)
    axes.set(xlabel="client", ylabel="client", title=title)
    return figure


def plot_similarity(
    matrix: np.ndarray,
    path: str | Path,
    groups: Sequence[int] | np.ndarray | None = None,
    clients: Sequence[int] | None = None,
    title: str = "Cosine similarity of client updates",
    limit: float | None = 1.0,
    label: str = "similarity",
) -> Path:
    """:func:`similarity_figure` saved as a PNG at ``path``."""
    return save_png(similarity_figure(matrix, groups, clients, title, limit, label), path)
