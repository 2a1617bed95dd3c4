"""Methods set side by side: final per-client results, curves over rounds, costs.

Every figure of the report and every column of ``plural compare`` comes from the tidy
frames built here. Per-client statistics are computed within each run (seed) first, then
averaged over seeds, with their 95% confidence interval over seeds where there are several
(:mod:`plural.report.stats`). The reported round is each run's last evaluated round by
default, or the round of its best mean validation accuracy (``at="best_val"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from plural.config import ConfigError
from plural.core.metrics import summarize
from plural.report.runs import Method, RunRecord
from plural.report.stats import (
    ROUND_LABELS,
    RoundChoice,
    confidence_interval,
    rank_marks,
    rows_at,
)
from plural.report.tables import format_table

METRICS = ("accuracy", "loss")
STATS = ("mean", "worst10", "best10", "std", "weighted_mean")


def higher_is_better(metric: str) -> bool:
    return metric != "loss"


def check_choice(metric: str, split: str, methods: Sequence[Method]) -> None:
    """A ConfigError naming what is allowed when ``metric`` or ``split`` is not available."""
    if metric not in METRICS:
        raise ConfigError(f"--metric: {metric!r} is not a metric; allowed: {', '.join(METRICS)}")
    available = sorted(
        {str(s) for m in methods for r in m.runs for s in r.metrics["split"].unique()} - {"fit"}
    )
    if split not in available:
        raise ConfigError(
            f"--split: no run evaluated the {split!r} split; available: "
            f"{', '.join(available) or 'none (no run has evaluated yet)'}"
        )


def _summary(rows: pd.DataFrame, metric: str) -> dict[str, float]:
    return summarize(
        rows[metric].to_numpy(),
        rows["samples"].to_numpy(),
        higher_is_better=higher_is_better(metric),
    )


def seed_results(
    methods: Sequence[Method],
    metric: str = "accuracy",
    split: str = "test",
    at: RoundChoice = "last",
) -> pd.DataFrame:
    """One row per method and seed: the per-client summary of ``metric`` at the run's last
    evaluated round, with the run's cost (bytes, wall seconds, training FLOPs) and, for
    methods that cluster, the last cluster count and ARI."""
    rows = []
    for method in methods:
        for run in method.runs:
            costs = run_costs(run)
            rows.append(
                {
                    "method": method.label,
                    "algorithm": run.algorithm,
                    "seed": run.seed,
                    "rounds": int(run.config.get("rounds", 0)),
                    "complete": run.complete,
                    **run_results(run, metric, split, at),
                    **costs,
                    "bytes": costs["bytes_up"] + costs["bytes_down"],
                    **_clustering(run),
                    "epsilon": run_epsilon(run.summary),
                    **_robustness(run, split),
                    "run_dir": str(run.path),
                    **{f"setting:{k}": v for k, v in method.settings.items()},
                }
            )
    return pd.DataFrame(rows)


def run_results(
    run: RunRecord, metric: str = "accuracy", split: str = "test", at: RoundChoice = "last"
) -> dict[str, Any]:
    """The per-client summary of ``metric`` on ``split`` at the run's last evaluated round,
    or at its best validation round (``round`` 0 and NaN statistics when it has not
    evaluated yet)."""
    final = rows_at(run, split, at)
    stats = _summary(final, metric) if len(final) else summarize(np.array([]))
    return {
        "round": int(final["round"].max()) if len(final) else 0,
        **{s: stats[s] for s in STATS},
        "clients": stats["clients"],
    }


def run_costs(run: RunRecord) -> dict[str, float]:
    """What the run spent: bytes each way (all clients), training FLOPs, wall seconds."""
    fit = run.metrics[run.metrics["split"] == "fit"]
    return {
        "bytes_up": float(fit["bytes_up"].sum()),
        "bytes_down": float(fit["bytes_down"].sum()),
        "train_flops": float(fit["flops"].sum()),
        "wall_time_s": float(run.summary.get("wall_time_s", math.nan)),
    }


def _clustering(run: RunRecord) -> dict[str, float]:
    clustering = run.summary.get("clustering") or {}
    # Neighbourhood methods (decentral pFedLIA) have no clusters: purity and recall instead.
    neighbourhoods = (run.summary.get("pfedlia") or {}).get("neighbourhoods") or {}
    clusters = float(clustering.get("clusters", math.nan))
    return {
        "clusters": clusters if clusters > 0 else math.nan,  # 0: it has not clustered yet
        "ari": float(clustering["ari"]) if clustering.get("ari") is not None else math.nan,
        "purity": float(neighbourhoods.get("purity", math.nan)),
        "recall": float(neighbourhoods.get("recall", math.nan)),
    }


def run_epsilon(summary: dict[str, Any]) -> float:
    """The run's differential-privacy epsilon (``privacy.epsilon`` of its summary; NaN for a
    run without privacy, inf for one whose noise was 0)."""
    privacy = summary.get("privacy") or {}
    return float(privacy.get("epsilon", math.nan))


def _robustness(run: RunRecord, split: str) -> dict[str, float]:
    """Clean clients' mean and worst-10% accuracy and the backdoor's success (runs with
    attackers), and
    the clients that dropped, missed the deadline or failed (runs with faults)."""
    robust = run.summary.get("robustness") or {}
    clean = (robust.get("clean") or {}).get(split) or {}
    success = robust.get("attack_success")
    lost = sum(robust.get(k, 0) for k in ("dropouts", "deadline_missed", "failures"))
    return {
        "clean_mean": float(clean.get("mean", math.nan)),
        "clean_worst10": float(clean.get("worst10", math.nan)),
        "attack_success": float(success) if success is not None else math.nan,
        "absent": float(lost) if robust else math.nan,
    }


def comparison_table(
    methods: Sequence[Method],
    metric: str = "accuracy",
    split: str = "test",
    at: RoundChoice = "last",
) -> pd.DataFrame:
    """One row per method, ranked (best first): seeds, the mean over seeds of the final
    per-client mean / worst 10% / best 10% / std, the std over seeds of the mean and the
    worst 10% (NaN with one seed), the 95% confidence interval of the mean over seeds
    (``ci_low``, ``ci_high``), bytes communicated and wall seconds. ``rank`` is a rank mark
    that methods with overlapping intervals share (:func:`~plural.report.stats.rank_marks`)."""
    per_seed = seed_results(methods, metric, split, at)
    grouped = per_seed.groupby("method", sort=False)
    table = grouped.agg(
        algorithm=("algorithm", "first"),
        seeds=("seed", "count"),
        round=("round", "max"),
        mean=("mean", "mean"),
        mean_sd=("mean", "std"),
        worst10=("worst10", "mean"),
        worst10_sd=("worst10", "std"),
        best10=("best10", "mean"),
        std=("std", "mean"),
        clients=("clients", "max"),
        bytes=("bytes", "mean"),
        wall_time_s=("wall_time_s", "mean"),
        clusters=("clusters", "mean"),
        ari=("ari", "mean"),
        epsilon=("epsilon", "max"),
        clean_mean=("clean_mean", "mean"),
        clean_worst10=("clean_worst10", "mean"),
        attack_success=("attack_success", "mean"),
        absent=("absent", "mean"),
        purity=("purity", "mean"),
        recall=("recall", "mean"),
        complete=("complete", "all"),
    ).reset_index()
    intervals = per_seed.groupby("method", sort=False)["mean"].apply(confidence_interval)
    table["ci_low"] = [intervals[m][0] for m in table["method"]]
    table["ci_high"] = [intervals[m][1] for m in table["method"]]
    table = table.sort_values(
        "mean", ascending=not higher_is_better(metric), na_position="last", kind="stable"
    ).reset_index(drop=True)
    marks = rank_marks(
        table["mean"].tolist(),
        table["ci_low"].tolist(),
        table["ci_high"].tolist(),
        higher_is_better(metric),
    )
    table.insert(0, "rank", marks)
    return table


def format_comparison(
    table: pd.DataFrame,
    metric: str = "accuracy",
    split: str = "test",
    paired: pd.DataFrame | None = None,
    at: RoundChoice = "last",
) -> str:
    """The terminal table of :func:`comparison_table`, with the paired tests against a
    baseline (:func:`~plural.report.stats.paired_tests`) when given."""
    several = bool((table["seeds"] > 1).any())
    clustered = bool(table["clusters"].notna().any())
    private = "epsilon" in table and bool(table["epsilon"].notna().any())
    header = ["method (ranked)", "seeds", f"{metric} mean"] + (["epsilon"] if private else [])
    header += ["worst10%", "best10%", "std", "MB sent"]
    attacked = "clean_mean" in table and bool(table["clean_mean"].notna().any())
    faulty = "absent" in table and bool(table["absent"].notna().any())
    header += ["time s"] + (["clusters (ARI)"] if clustered else [])
    tests = {} if paired is None else {row.method: row for row in paired.itertuples()}
    if tests:
        header += ["diff vs base", "p clients", "p seeds"]
    header += ["clean mean", "clean worst10%", "backdoor ASR"] if attacked else []
    header += ["absent"] if faulty else []
    rows = [header]
    for row in table.itertuples():
        cells = [
            f"{row.rank}. {row.method}" + ("" if row.complete else " (incomplete)"),
            str(row.seeds),
            _with_ci(row.mean, row.ci_low, row.ci_high, several),
            *([_epsilon_cell(row.epsilon)] if private else []),
            _with_sd(row.worst10, row.worst10_sd, several),
            f"{row.best10:.3f}",
            f"{row.std:.3f}",
            f"{row.bytes / 1e6:.2f}",
            f"{row.wall_time_s:.1f}",
        ]
        if clustered:
            cells.append(
                _clusters_cell(row.clusters, row.ari)
                if math.isnan(row.purity)
                else f"purity {row.purity:.2f}, recall {row.recall:.2f}"
            )
        # In the header's order: the paired tests, then robustness.
        if tests:
            test = tests.get(row.method)
            cells += (
                ["-", "-", "-"]
                if test is None
                else [
                    _number(test.mean_diff, "{:+.3f}"),
                    _number(test.p_clients, "{:.3g}"),
                    _number(test.p_seeds, "{:.3g}"),
                ]
            )
        if attacked:
            cells += [
                _number(row.clean_mean),
                _number(row.clean_worst10),
                _number(row.attack_success),
            ]
        if faulty:
            cells.append(_number(row.absent, "{:.0f}"))
        rows.append(cells)
    note = (
        f"Final per-client {metric} on {split} (each run's {ROUND_LABELS[at]}); tails are the "
        "mean of the worst/best 10% of clients"
        + (
            "; the mean's +- is its 95% confidence interval over seeds (Student t), the worst "
            "10%'s the std over seeds"
            if several
            else ""
        )
        + "; methods whose intervals overlap share a rank."
        + (
            f" Paired against {paired['baseline'].iloc[0]}: mean difference, two-sided "
            "Wilcoxon signed-rank p over clients within each seed (the largest over seeds) "
            "and over seeds."
            if tests
            else ""
        )
        + (
            " 'clean mean' and 'clean worst10%' leave the malicious clients out; 'backdoor "
            "ASR' is the share of triggered test inputs classified as the target."
            if attacked
            else ""
        )
        + (
            " 'absent': sampled clients that dropped, missed the deadline or failed."
            if faulty
            else ""
        )
    )
    return note + "\n" + format_table(rows)


def _number(value: float, form: str = "{:.3f}") -> str:
    return "-" if math.isnan(value) else form.format(value)


def _with_ci(value: float, low: float, high: float, several: bool) -> str:
    if not several or math.isnan(low):
        return f"{value:.3f}"
    return f"{value:.3f} +- {(high - low) / 2:.3f}"


def _with_sd(value: float, sd: float, several: bool) -> str:
    if not several:
        return f"{value:.3f}"
    return f"{value:.3f} +- {sd:.3f}" if not math.isnan(sd) else f"{value:.3f}"


def _epsilon_cell(epsilon: float) -> str:
    """Epsilon of a private run; '-' for a run without privacy."""
    return "-" if math.isnan(epsilon) else f"{epsilon:.2f}"


def _clusters_cell(clusters: float, ari: float) -> str:
    if math.isnan(clusters):
        return "—"  # not clustered yet
    text = f"{clusters:g}"
    return text + (f" ({ari:.2f})" if not math.isnan(ari) else "")


def round_curves(
    methods: Sequence[Method], metric: str = "accuracy", split: str = "test"
) -> pd.DataFrame:
    """Per method and evaluated round: the per-client mean, worst 10% and best 10% of
    ``metric``, each averaged over seeds (``seeds``: how many runs reached the round)."""
    frames = []
    for method in methods:
        for run in method.runs:
            rows = run.evaluated(split)
            if rows.empty:
                continue
            stats = []
            for round_index, at_round in rows.groupby("round"):
                summary = _summary(at_round, metric)
                stats.append(
                    {
                        "method": method.label,
                        "round": round_index,
                        **{k: summary[k] for k in ("mean", "worst10", "best10")},
                    }
                )
            frames.append(pd.DataFrame(stats))
    if not frames:
        return pd.DataFrame(columns=["method", "round", "mean", "worst10", "best10", "seeds"])
    every = pd.concat(frames, ignore_index=True)
    curves = every.groupby(["method", "round"], sort=False).agg(
        mean=("mean", "mean"),
        worst10=("worst10", "mean"),
        best10=("best10", "mean"),
        seeds=("mean", "count"),
    )
    return curves.reset_index()


def final_values(
    methods: Sequence[Method], metric: str = "accuracy", split: str = "test"
) -> pd.DataFrame:
    """Every client's final ``metric`` per method and seed (columns method, seed, client,
    value), for distributions and CDFs."""
    frames = []
    for method in methods:
        for run in method.runs:
            final = run.final(split)
            frames.append(
                pd.DataFrame(
                    {
                        "method": method.label,
                        "seed": run.seed,
                        "client": final["client"].to_numpy(),
                        "value": final[metric].to_numpy(dtype=np.float64),
                    }
                )
            )
    if not frames:
        return pd.DataFrame(columns=["method", "seed", "client", "value"])
    return pd.concat(frames, ignore_index=True).dropna(subset=["value"])


def cost_curves(methods: Sequence[Method], split: str = "test") -> pd.DataFrame:
    """Per method and evaluated round: mean per-client accuracy against what was spent until
    then: bytes communicated (up and down, all clients) and wall seconds, averaged over seeds.
    Runs without a timeline have NaN wall seconds."""
    frames = []
    for method in methods:
        for run in method.runs:
            frame = _run_cost_curve(run, split)
            if frame is not None:
                frame.insert(0, "method", method.label)
                frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["method", "round", "accuracy", "bytes", "wall_time_s"])
    every = pd.concat(frames, ignore_index=True)
    return every.groupby(["method", "round"], sort=False).mean(numeric_only=True).reset_index()


def _run_cost_curve(run: RunRecord, split: str) -> pd.DataFrame | None:
    evaluated = run.evaluated(split)
    if evaluated.empty:
        return None
    accuracy = evaluated.groupby("round")["accuracy"].mean()
    fit = run.metrics[run.metrics["split"] == "fit"]
    sent = (fit["bytes_up"] + fit["bytes_down"]).groupby(fit["round"]).sum().cumsum()
    rounds = accuracy.index
    timeline = run.timeline
    wall = (
        timeline.set_index("round")["wall_time_s"].reindex(rounds)
        if "wall_time_s" in timeline.columns
        else pd.Series(math.nan, index=rounds)
    )
    return pd.DataFrame(
        {
            "round": rounds.to_numpy(),
            "accuracy": accuracy.to_numpy(),
            "bytes": sent.reindex(rounds, method="ffill").fillna(0).to_numpy(),
            "wall_time_s": wall.to_numpy(dtype=np.float64),
        }
    )
