"""Uncertainty in comparisons: confidence intervals over seeds, paired tests against a
baseline, and rank marks that do not separate methods the data cannot separate.

- The 95% confidence interval of a mean over seeds is Student's t interval,
  ``mean +- t(0.975, n - 1) * sd / sqrt(n)`` (NaN with one seed).
- The paired tests compare each method with a baseline on the same clients: the Wilcoxon
  signed-rank test (Wilcoxon 1945) over clients, on each client's difference averaged over the
  seeds both methods ran, and over seeds, on each seed's mean difference. Differences that are
  all zero (two identical methods) give p = 1.
- A method's rank mark is 1 + the number of methods whose interval lies entirely on the
  better side of its own, so methods whose intervals overlap (or one-seed ties) share a mark.
- Results are read at each run's last evaluated round (``last``), or at the round with the
  best mean validation accuracy (``best_val``), as many papers report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from plural.config import ConfigError
from plural.report.runs import Method, RunRecord

RoundChoice = Literal["last", "best_val"]
ROUND_CHOICES: tuple[RoundChoice, ...] = ("last", "best_val")
ROUND_LABELS = {"last": "last evaluated round", "best_val": "round of best mean val accuracy"}
CONFIDENCE = 0.95


def confidence_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95% Student-t interval of the mean of ``values`` (NaN, NaN for fewer than 2)."""
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if len(data) < 2:
        return math.nan, math.nan
    mean = float(data.mean())
    half = (
        float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, len(data) - 1))
        * float(data.std(ddof=1))
        / math.sqrt(len(data))
    )
    return mean - half, mean + half


def rank_marks(
    means: Sequence[float], lows: Sequence[float], highs: Sequence[float], higher_better: bool
) -> list[int]:
    """Per method, 1 + the number of methods entirely better than it (see the module
    docstring); a NaN interval stands for the mean alone."""
    lo = [m if math.isnan(a) else a for m, a in zip(means, lows, strict=True)]
    hi = [m if math.isnan(b) else b for m, b in zip(means, highs, strict=True)]
    marks = []
    for i, mean in enumerate(means):
        if math.isnan(mean):
            marks.append(len(means))
            continue
        if higher_better:
            better = sum(1 for j in range(len(means)) if lo[j] > hi[i])
        else:
            better = sum(1 for j in range(len(means)) if hi[j] < lo[i])
        marks.append(1 + better)
    return marks


def check_round_choice(choice: str) -> RoundChoice:
    if choice not in ROUND_CHOICES:
        raise ConfigError(f"--round: {choice!r} is not allowed; use {', '.join(ROUND_CHOICES)}")
    return choice  # type: ignore[return-value]


def chosen_round(run: RunRecord, choice: RoundChoice = "last", split: str = "test") -> int | None:
    """The round a run's results are read at: its last evaluated round of ``split``, or the
    evaluated round with the best mean per-client validation accuracy."""
    if choice == "best_val":
        val = run.evaluated("val")
        val = val[val["samples"] > 0]
        if val.empty:
            raise ConfigError(
                f"--round best_val: run {str(run.path)!r} has no validation rows; evaluate "
                "the val split (eval.splits) or use --round last"
            )
        means = val.groupby("round")["accuracy"].mean()
        return int(means.idxmax())
    rows = run.evaluated(split)
    return int(rows["round"].max()) if len(rows) else None


def rows_at(run: RunRecord, split: str, choice: RoundChoice = "last") -> pd.DataFrame:
    """The per-client rows of ``split`` at the chosen round, of the clients that trained
    (unseen clients are summarised apart, as in ``summary.json``)."""
    if choice == "last":
        rows = run.final(split)
    else:
        rows = run.evaluated(split)
        rows = rows[rows["round"] == chosen_round(run, choice, split)]
    rows = rows[rows["client"] >= 0]
    if "unseen" in rows.columns:
        rows = rows[~rows["unseen"].fillna(False).astype(bool)]
    return rows.reset_index(drop=True)


def _client_values(run: RunRecord, metric: str, split: str, choice: RoundChoice) -> pd.Series:
    rows = rows_at(run, split, choice)
    return rows.set_index("client")[metric].astype(np.float64)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences``; 1 when they are all
    zero (nothing separates the two), NaN without any pair."""
    d = differences[~np.isnan(differences)]
    if len(d) == 0:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(scipy_stats.wilcoxon(d, zero_method="zsplit").pvalue)


def paired_tests(
    methods: Sequence[Method],
    baseline: str,
    metric: str = "accuracy",
    split: str = "test",
    choice: RoundChoice = "last",
) -> pd.DataFrame:
    """Per method, paired against the ``baseline`` method (label or algorithm name), seed by
    seed: the mean paired difference; a Wilcoxon test over clients within each seed
    (``p_clients_by_seed``; ``p_clients`` is the largest, so a difference significant at it
    holds in every seed); and a Wilcoxon test over the seeds' mean differences."""
    base = _find(methods, baseline)
    base_runs = {run.seed: run for run in base.runs}
    rows = []
    for method in methods:
        within_seed: list[float] = []
        per_seed = []
        for run in method.runs:
            other = base_runs.get(run.seed)
            if other is None:
                continue
            mine = _client_values(run, metric, split, choice)
            theirs = _client_values(other, metric, split, choice)
            difference = (mine - theirs).dropna()
            if difference.empty:
                continue
            within_seed.append(wilcoxon_p(difference.to_numpy()))
            per_seed.append(float(difference.mean()))
        rows.append(
            {
                "method": method.label,
                "baseline": base.label,
                "seeds_paired": len(per_seed),
                "mean_diff": float(np.mean(per_seed)) if per_seed else math.nan,
                "p_clients": max(within_seed) if within_seed else math.nan,
                "p_clients_by_seed": tuple(within_seed),
                "p_seeds": wilcoxon_p(np.asarray(per_seed)) if len(per_seed) > 1 else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _find(methods: Sequence[Method], name: str) -> Method:
    for method in methods:
        if method.label == name:
            return method
    matching = [m for m in methods if m.algorithm == name]
    if len(matching) == 1:
        return matching[0]
    labels = ", ".join(m.label for m in methods)
    if matching:
        raise ConfigError(f"--baseline: {name!r} names several methods; use one of: {labels}")
    raise ConfigError(f"--baseline: no method {name!r}; methods: {labels}")
