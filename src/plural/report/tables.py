"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plural.runner import Results


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def results_table(results: Sequence[Results], split: str = "test") -> str:
    """Per-algorithm summary of per-client accuracy on ``split`` at the last round."""
    header = [
        "algorithm",
        "mean",
        "worst10%",
        "best10%",
        "std",
        "weighted",
        "clients",
        "MB sent",
        "time s",
    ]
    clustered = any("clustering" in r.summary for r in results)
    if clustered:
        header.append("clusters (ARI)")
    rows = [header]
    for r in results:
        acc = r.summary.get(split, {}).get("accuracy", {})
        clustering = [_clustering_cell(r.summary.get("clustering"))] if clustered else []
        rows.append(
            [
                r.config.algorithm.name,
                *(
                    f"{acc.get(k, float('nan')):.3f}"
                    for k in ("mean", "worst10", "best10", "std", "weighted_mean")
                ),
                str(acc.get("clients", 0)),
                f"{r.summary['bytes']['total'] / 1e6:.2f}",
                f"{r.summary['wall_time_s']:.1f}",
                *clustering,
            ]
        )
    return format_table(rows)


def _clustering_cell(clustering: dict[str, Any] | None) -> str:
    """``"4 (1.00)"``: clusters found and their ARI against the true groups, where known."""
    if not clustering:
        return "-"
    ari = clustering.get("ari")
    return f"{clustering['clusters']}" + (f" ({ari:.2f})" if ari is not None else "")
