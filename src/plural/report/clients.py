"""Per-client views of a comparison: a table of every client (size, label count, group and
each method's final accuracy) and the personalized-against-global accuracy of each client for
methods that score both (rows ``test`` and ``test@global``)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from plural.report.runs import Method

MAX_TABLE_CLIENTS = 200
"""Clients listed in the per-client table (the rest are counted)."""


def client_facts(federation: dict[str, Any]) -> pd.DataFrame:
    """One row per client of a ``federation.json``: training samples, how many classes it
    holds (over all its splits) and its true group (NaN where unknown)."""
    clients = int(federation.get("num_clients", 0))
    train = federation.get("sizes", {}).get("train", [np.nan] * clients)
    histogram = federation.get("label_histogram")
    labels = (np.asarray(histogram) > 0).sum(axis=1) if histogram else np.full(clients, np.nan)
    groups = federation.get("groups") or [np.nan] * clients
    return pd.DataFrame(
        {"client": range(clients), "train": train, "labels": labels, "group": groups}
    )


def per_client_accuracy(methods: Sequence[Method], split: str = "test") -> pd.DataFrame:
    """Each client's final ``split`` accuracy per method (columns), averaged over seeds."""
    columns = {}
    for method in methods:
        frames = [run.final(split) for run in method.runs]
        rows = (
            pd.concat([f[f["client"] >= 0] for f in frames if len(f)], ignore_index=True)
            if any(len(f) for f in frames)
            else pd.DataFrame(columns=["client", "accuracy"])
        )
        columns[method.label] = rows.groupby("client")["accuracy"].mean()
    return pd.DataFrame(columns).rename_axis("client").reset_index()


def personal_and_global(methods: Sequence[Method], split: str = "test") -> pd.DataFrame:
    """Per method and client (pooled over seeds): final personalized and global-model
    accuracy, for methods whose runs score both."""
    frames = []
    for method in methods:
        for run in method.runs:
            personal = run.final(split)
            shared = run.final(f"{split}@global")
            if personal.empty or shared.empty:
                continue
            both = personal.merge(shared, on="client", suffixes=("", "_global"))
            frames.append(
                pd.DataFrame(
                    {
                        "method": method.label,
                        "client": both["client"],
                        "personal": both["accuracy"].astype(float),
                        "global": both["accuracy_global"].astype(float),
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=["method", "client", "personal", "global"])
    return pd.concat(frames, ignore_index=True)


def client_table_html(methods: Sequence[Method], split: str = "test") -> str:
    """The per-client table of the first federation (the first method's first run)."""
    if not methods or not methods[0].runs:
        return ""
    facts = client_facts(methods[0].runs[0].federation)
    if facts.empty:
        return ""
    table = facts.merge(per_client_accuracy(methods, split), on="client", how="left")
    labels = [m.label for m in methods]
    head = ["client", "train samples", "classes held", "group", *labels]
    body = []
    for row in table.head(MAX_TABLE_CLIENTS).itertuples(index=False):
        values = list(row)
        cells = [
            str(values[0]),
            _count(values[1]),
            _count(values[2]),
            _count(values[3]),
            *(_accuracy(v) for v in values[4:]),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    more = len(table) - MAX_TABLE_CLIENTS
    note = (
        f"Every client of {html.escape(str(methods[0].runs[0].federation.get('dataset')))}: "
        f"training samples, the classes it holds (any split), its true group, and each "
        f"method's final {split} accuracy (mean over seeds; seeds share clients only when "
        "they share data_seed)." + (f" {more} more clients are not listed." if more > 0 else "")
    )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<p>{note}</p><table class='clients'><tr>{header}</tr>{''.join(body)}</table>"


def _count(value: Any) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:g}"


def _accuracy(value: Any) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.3f}"
