"""The HTML report: one self-contained file (figures inlined as SVG, no scripts, no links
to fetch), that opens offline. Its figures are also saved as PNG and SVG files in
``<report name>_files/``.

Sections: the ranked comparison; accuracy and loss per round; the distribution of final
per-client results; results against bytes and wall time; clustering (assignments over
rounds, ARI, influence matrices) for methods that cluster; the federations' heterogeneity;
and what is needed to rerun every run (configs, seeds, package versions).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

import plural
from plural.report import clients, figures
from plural.report.compare import (
    comparison_table,
    cost_curves,
    final_values,
    round_curves,
    seed_results,
)
from plural.report.runs import Method, RunRecord, assignments
from plural.report.stats import ROUND_LABELS, RoundChoice, paired_tests

MAX_FEDERATIONS = 6
"""Distinct federations whose heterogeneity is drawn (a sweep over partitions has many)."""


@dataclasses.dataclass
class _Page:
    """The report being assembled: HTML sections and the figures saved so far."""

    folder: Path
    sections: list[str] = dataclasses.field(default_factory=list)
    contents: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(anchor, title) of each section, for the navigation bar."""
    files: list[Path] = dataclasses.field(default_factory=list)

    def figure(self, figure: Any, name: str, caption: str) -> str:
        """Save ``figure`` as PNG and SVG; the HTML that shows it (SVG inlined)."""
        png, svg = figures.save_figure(figure, self.folder, name)
        self.files += [png, svg]
        data = base64.b64encode(svg.read_bytes()).decode("ascii")
        return (
            f'<figure id="fig-{name}"><img class="plot" alt="{html.escape(caption)}" '
            f'src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{html.escape(caption)} "
            f'<a href="{html.escape(self.folder.name)}/{png.name}">PNG</a> · '
            f'<a href="{html.escape(self.folder.name)}/{svg.name}">SVG</a></figcaption></figure>'
        )

    def section(self, anchor: str, title: str, body: str) -> None:
        self.sections.append(
            f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'
        )


def write_report(
    methods: Sequence[Method],
    out: str | Path,
    *,
    metric: str = "accuracy",
    split: str = "test",
    title: str = "plural report",
    baseline: str | None = None,
    at: RoundChoice = "last",
) -> Path:
    """Write the report of ``methods`` to ``out`` (an ``.html`` path); return its path.
    ``baseline`` adds paired tests of every method against it; ``at`` picks the round results
    are read at (:mod:`plural.report.stats`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = _Page(out.with_name(f"{out.stem}_files"))
    table = comparison_table(methods, metric, split, at)
    order = list(table["method"])
    colors = figures.method_colors(order)
    summary = _summary_html(table, metric, split)
    if at != "last":
        summary = f"<p>Results at each run's {ROUND_LABELS[at]}.</p>" + summary
    if baseline:
        summary += _paired_html(paired_tests(methods, baseline, metric, split, at))
    page.section("summary", "Ranking", summary)
    _results_sections(page, methods, order, colors, metric, split)
    _clients_section(page, methods, colors, split)
    _clustering_section(page, methods, colors)
    _privacy_section(page, methods, metric, split)
    _heterogeneity_section(page, methods)
    page.section("reproduce", "Configs, seeds and versions", _reproduce_html(methods))
    document = _document(title, methods, page)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(document, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _results_sections(
    page: _Page,
    methods: Sequence[Method],
    order: list[str],
    colors: dict[str, Any],
    metric: str,
    split: str,
) -> None:
    curves = {m: round_curves(methods, m, split) for m in ("accuracy", "loss")}
    body = page.figure(
        figures.round_curves_figure(curves, colors, split=split),
        "rounds",
        f"{split} accuracy and loss per round: mean over clients, band from the worst 10% "
        "to the best 10% of clients (averaged over seeds).",
    )
    if len(methods) > figures.LEGEND_INSIDE:  # too many bands to overlay: one panel each
        body += page.figure(
            figures.band_panels_figure(curves[metric], colors, metric=metric, split=split),
            "rounds-bands",
            f"{split} {metric} per round for each method: mean over clients, band from the "
            "worst 10% to the best 10% of clients (averaged over seeds).",
        )
    page.section("rounds", "Per round", body)
    values = final_values(methods, metric, split)
    page.section(
        "distribution",
        f"Final per-client {metric}",
        page.figure(
            figures.distribution_figure(values, order, colors, metric=metric),
            "distribution",
            f"Final {split} {metric} of every client (all seeds pooled), methods ranked.",
        )
        + page.figure(
            figures.cdf_figure(values, order, colors, metric=metric),
            "cdf",
            f"Share of clients at or below each final {split} {metric}.",
        ),
    )
    page.section(
        "cost",
        "Cost",
        page.figure(
            figures.cost_figure(cost_curves(methods, split), colors),
            "cost",
            f"Mean {split} accuracy against bytes communicated (up and down, all clients) and "
            "against wall-clock time, at each evaluated round.",
        ),
    )


def _clients_section(
    page: _Page, methods: Sequence[Method], colors: dict[str, Any], split: str
) -> None:
    """The per-client table and, for methods that score both, each client's personalized
    against global-model accuracy."""
    body = clients.client_table_html(methods, split)
    points = clients.personal_and_global(methods, split)
    if not points.empty:
        body += page.figure(
            figures.personal_vs_global_figure(points, colors, split=split),
            "personal-vs-global",
            f"Final {split} accuracy of every client with its personalized model against the "
            "global model (all seeds pooled); above the diagonal, personalization helped.",
        )
    if body:
        page.section("clients", "Per client", body)


def _privacy_section(page: _Page, methods: Sequence[Method], metric: str, split: str) -> None:
    """Accuracy against epsilon, per algorithm, when some runs are differentially private
    and an algorithm was run at more than one epsilon (a sweep over the budget)."""
    runs = seed_results(methods, metric, split)
    if runs.empty or not runs["epsilon"].notna().any():
        return
    runs = runs.assign(epsilon=runs["epsilon"].fillna(np.inf))
    points = runs.groupby(["algorithm", "epsilon"], as_index=False)[["mean", "worst10"]].mean()
    if points.groupby("algorithm")["epsilon"].nunique().max() < 2:
        return
    frame = points.rename(columns={"algorithm": "method"})
    colors = figures.method_colors(list(dict.fromkeys(frame["method"])))
    page.section(
        "privacy",
        "Privacy",
        page.figure(
            figures.privacy_figure(frame, colors, metric=metric),
            "privacy",
            f"Final {split} {metric} against the differential-privacy budget epsilon (mean over "
            "clients and the worst 10% of clients, averaged over seeds); 'no DP' is the run "
            "without privacy.",
        ),
    )


def _clustering_section(page: _Page, methods: Sequence[Method], colors: dict[str, Any]) -> None:
    clustered = [m for m in methods if assignments(m.runs[0]) is not None]
    if not clustered:
        return
    parts = [
        page.figure(
            figures.ari_figure(_cluster_quality(clustered), colors),
            "clusters",
            "Clusters found and, where the true groups are known, their adjusted Rand index "
            "against them, per round (first seed of each method).",
        )
    ]
    for index, method in enumerate(clustered):
        run = method.runs[0]
        rounds, matrix = assignments(run)  # type: ignore[misc]
        parts.append(
            page.figure(
                figures.assignment_figure(
                    rounds, matrix, run.federation.get("groups"), title=method.label
                ),
                f"assignments-{index}",
                f"{method.label} (seed {run.seed}): each client's cluster per round, clients "
                "ordered by true group where known.",
            )
        )
        parts += _matrix_figures(page, method, index)
    page.section("clustering", "Clustering", "".join(parts))


def _cluster_quality(methods: Sequence[Method]) -> pd.DataFrame:
    frames = []
    for method in methods:
        diagnostics = method.runs[0].diagnostics
        rows = diagnostics.dropna(subset=["clusters"]).copy()
        if "ari" not in rows.columns:
            rows["ari"] = np.nan
        frames.append(rows.assign(method=method.label)[["method", "round", "clusters", "ari"]])
    return pd.concat(frames, ignore_index=True)


def _matrix_figures(page: _Page, method: Method, index: int) -> list[str]:
    """The latest clients x clients artifact of each kind (e.g. pFedLIA's influence)."""
    run = method.runs[0]
    n = run.federation.get("num_clients")
    latest: dict[str, Path] = {}
    for name, path in run.artifacts().items():
        if path.suffix == ".npy":
            latest[name.split("_round")[0]] = path  # sorted by name: the last round wins
    parts = []
    for kind, path in latest.items():
        matrix = np.load(path)
        if matrix.shape != (n, n):
            continue
        parts.append(
            page.figure(
                figures.matrix_figure(
                    matrix, groups=run.federation.get("groups"), title=f"{method.label}: {kind}"
                ),
                f"{kind}-{index}",
                f"{method.label} (seed {run.seed}): {kind.replace('_', ' ')} matrix "
                f"({path.stem}), clients ordered by true group where known.",
            )
        )
    return parts


def _heterogeneity_section(page: _Page, methods: Sequence[Method]) -> None:
    federations: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for method in methods:
        for run in method.runs:
            fed = run.federation
            if not fed:
                continue
            key = hashlib.sha1(json.dumps(fed, sort_keys=True).encode()).hexdigest()
            federations.setdefault(key, (fed, []))[1].append(f"{method.label} (seed {run.seed})")
    parts = []
    for index, (fed, users) in enumerate(list(federations.values())[:MAX_FEDERATIONS]):
        parts.append(_federation_html(page, fed, users, index))
    if len(federations) > MAX_FEDERATIONS:
        parts.append(f"<p>{len(federations) - MAX_FEDERATIONS} more federations are not drawn.</p>")
    if parts:
        page.section("heterogeneity", "Federations", "".join(parts))


MAX_CLIENT_NAMES = 30
"""Client id mappings longer than this are cut short in the report (all in federation.json)."""


def _federation_html(page: _Page, fed: dict[str, Any], users: list[str], index: int) -> str:
    sizes = fed.get("sizes", {})
    train = np.asarray(sizes.get("train", []))
    groups = fed.get("groups")
    facts = [
        ("dataset", fed.get("dataset")),
        ("clients", fed.get("num_clients")),
        ("classes", fed.get("num_classes")),
        (
            "training samples",
            f"{int(train.sum())} (per client {int(train.min())} to "
            f"{int(train.max())}, median {float(np.median(train)):g})"
            if train.size
            else "-",
        ),
        ("true groups", len(set(groups)) if groups else "unknown"),
        ("used by", ", ".join(users)),
    ]
    names = fed.get("client_names")
    if names:  # the user's client ids, mapped to 0..K-1
        shown = ", ".join(f"{k}: {name}" for k, name in enumerate(names[:MAX_CLIENT_NAMES]))
        more = f", ... ({len(names)} in federation.json)" if len(names) > MAX_CLIENT_NAMES else ""
        facts.append(("client ids (yours)", shown + more))
    facts += [("note", note) for note in fed.get("notes") or []]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts
    )
    parts = [f"<h3>Federation {index + 1}</h3><table class='facts'>{rows}</table>"]
    histogram = fed.get("label_histogram")
    if histogram:
        parts.append(
            page.figure(
                figures.label_histogram_figure(
                    np.asarray(histogram), fed.get("class_names"), groups
                ),
                f"labels-{index}",
                "Samples per client (rows) and class (columns), counted over all of each "
                "client's splits (train, validation and test).",
            )
        )
    if sizes:
        parts.append(
            page.figure(
                figures.sizes_figure({k: np.asarray(v) for k, v in sizes.items()}),
                f"sizes-{index}",
                "Samples per client in each split.",
            )
        )
    return "".join(parts)


def _summary_html(table: pd.DataFrame, metric: str, split: str) -> str:
    several = bool((table["seeds"] > 1).any())
    clustered = bool(table["clusters"].notna().any())
    private = "epsilon" in table and bool(table["epsilon"].notna().any())
    header = ["#", "method", "seeds", "mean"] + (["epsilon"] if private else [])
    header += ["worst 10%", "best 10%", "std", "MB sent", "time s"]
    header += ["clusters", "ARI"] if clustered else []
    attacked = "clean_mean" in table and bool(table["clean_mean"].notna().any())
    header += ["clean mean", "clean worst10%", "backdoor ASR"] if attacked else []
    faulty = "absent" in table and bool(table["absent"].notna().any())
    header += ["absent"] if faulty else []
    body = []
    for row in table.itertuples():
        cells = [
            str(row.rank),
            html.escape(row.method) + ("" if row.complete else " <em>(incomplete)</em>"),
            str(row.seeds),
            _value(row.mean, (row.ci_high - row.ci_low) / 2 if several else None),
            *([_value(row.epsilon, digits=2)] if private else []),
            _value(row.worst10, row.worst10_sd if several else None),
            _value(row.best10),
            _value(row.std),
            f"{row.bytes / 1e6:.2f}",
            f"{row.wall_time_s:.1f}",
        ]
        if clustered:
            clusters = "—" if np.isnan(row.clusters) else _value(row.clusters, digits=1)
            cells += [clusters, _value(row.ari, digits=2)]
        if attacked:
            cells += [
                _value(row.clean_mean),
                _value(row.clean_worst10),
                _value(row.attack_success),
            ]
        if faulty:
            cells.append("—" if np.isnan(row.absent) else f"{row.absent:.0f}")
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    note = (
        f"Final per-client {split} {metric} at each run's last evaluated round: mean over "
        "clients, the mean of the worst and best 10% of clients, and the std over clients"
        + (
            "; the mean's ± is its 95% confidence interval over seeds (Student t), the worst "
            "10%'s the std over seeds"
            if several
            else ""
        )
        + "; methods whose intervals overlap share a rank."
        + (
            " Clean mean leaves the malicious clients out; backdoor ASR is the share of "
            "triggered test inputs classified as the target."
            if attacked
            else ""
        )
        + (
            " Absent: sampled clients that dropped, missed the deadline or failed, over the run."
            if faulty
            else ""
        )
    )
    return (
        f"<p>{html.escape(note)}</p><table class='ranking'><tr>{head}</tr>{''.join(body)}</table>"
    )


def _paired_html(paired: pd.DataFrame) -> str:
    """The paired tests against the baseline as a table."""
    head = ["method", "seeds paired", "mean difference", "p (clients)", "p (seeds)"]
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{c}</td>"
            for c in (
                html.escape(row.method),
                str(row.seeds_paired),
                _value(row.mean_diff),
                _value(row.p_clients, digits=3),
                _value(row.p_seeds, digits=3),
            )
        )
        + "</tr>"
        for row in paired.itertuples()
    )
    note = (
        f"Paired against {paired['baseline'].iloc[0]}: mean difference in the metric, two-sided "
        "Wilcoxon signed-rank p over clients within each seed (the largest over the seeds: "
        "the level at which the difference holds in every seed) and over seeds (each "
        "seed's mean difference)."
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<p>{html.escape(note)}</p><table class='paired'><tr>{header}</tr>{body}</table>"


def _value(value: float, sd: float | None = None, digits: int = 3) -> str:
    if value is None or np.isnan(value):
        return "-"
    text = f"{value:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if sd is not None and not np.isnan(sd) else "")


def _reproduce_html(methods: Sequence[Method]) -> str:
    environments = {
        json.dumps(_versions(run), sort_keys=True): _versions(run)
        for method in methods
        for run in method.runs
    }
    parts = []
    if len(environments) == 1:
        shared = _versions_text(next(iter(environments.values())))
        parts.append(f"<p>Every run used: {html.escape(shared)}</p>")
    for method in methods:
        items = []
        for run in method.runs:
            config = yaml.safe_dump(run.config, sort_keys=False)
            command = f"plural run {run.path}/config.yaml --out <new run directory>"
            versions = (
                ""
                if len(environments) == 1
                else f"<p>{html.escape(_versions_text(_versions(run)))}</p>"
            )
            items.append(
                f"<details><summary>seed {run.seed}: <code>{html.escape(str(run.path))}</code>"
                f"</summary><p>Rerun: <code>{html.escape(command)}</code></p>{versions}"
                f"<pre>{html.escape(config)}</pre></details>"
            )
        parts.append(f"<h3>{html.escape(method.label)}</h3>{''.join(items)}")
    return "".join(parts)


def _versions(run: RunRecord) -> dict[str, Any]:
    """The run's first recorded environment: Python, packages and machine."""
    if not run.environment:
        return {}
    first = run.environment[0]
    return {
        "python": first.get("python"),
        "platform": first.get("platform"),
        "device": first.get("device"),
        **first.get("packages", {}),
    }


def _versions_text(versions: dict[str, Any]) -> str:
    if not versions:
        return "no environment recorded (the run predates environment.json)"
    return ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th:nth-child(2), td:nth-child(2), table.facts th, table.facts td { text-align: left; }
figure { margin: 1rem 0; }
img.plot { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9rem; }
pre { background: #f6f6f6; padding: 0.5rem; overflow-x: auto; font-size: 0.8rem; }
details { margin: 0.3rem 0; }
"""


def _document(title: str, methods: Sequence[Method], page: _Page) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    runs = sum(len(m.runs) for m in methods)
    nav = "".join(f'<a href="#{a}">{html.escape(t.lower())}</a>' for a, t in page.contents)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(methods)} methods, {runs} runs; written by "
        f"plural {plural.__version__} on {stamp}.</p><nav>{nav}</nav>"
        + "".join(page.sections)
        + "</body></html>\n"
    )
