"""What a method spends to reach a target accuracy: rounds, bytes, training FLOPs, seconds.

The efficiency claims of model-heterogeneous FL papers (e.g. pFedLoRA's "7.41x less
communication and 11.81x less computation than the best baseline") compare the cost of
reaching a target mean accuracy. :func:`cost_to_target` reads that cost from a run's
metrics; :func:`cost_ratios` sets methods against one another.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pandas as pd


@dataclasses.dataclass(frozen=True)
class CostToTarget:
    """Totals over all clients up to and including the first round that reached the target
    (``round`` None: never reached; the totals are then those of the whole run)."""

    round: int | None
    accuracy: float
    bytes: float
    flops: float
    seconds: float

    @property
    def reached(self) -> bool:
        return self.round is not None


def cost_to_target(metrics: pd.DataFrame, target: float, split: str = "test") -> CostToTarget:
    """The first evaluated round whose mean per-client ``split`` accuracy is at least
    ``target``, with the bytes (up and down), training FLOPs and client seconds spent until
    then."""
    evaluated = metrics[metrics["split"] == split].groupby("round")["accuracy"].mean()
    reached = evaluated[evaluated >= target]
    last = int(reached.index[0]) if len(reached) else None
    fit = metrics[metrics["split"] == "fit"]
    if last is not None:
        fit = fit[fit["round"] <= last]
    accuracy = float(evaluated.loc[last]) if last is not None else float(evaluated.max())
    return CostToTarget(
        last,
        accuracy,
        float(fit["bytes_up"].sum() + fit["bytes_down"].sum()),
        float(fit["flops"].sum()),
        float(fit["seconds"].sum()),
    )


def cost_ratios(costs: Mapping[str, CostToTarget], reference: str) -> pd.DataFrame:
    """One row per method: its cost to the target and how many times the ``reference``
    method's cost it is (below 1: cheaper than the reference)."""
    base = costs[reference]
    rows = []
    for name, cost in costs.items():
        row = {"method": name, **dataclasses.asdict(cost)}
        for key in ("bytes", "flops", "seconds"):
            value = getattr(base, key)
            ratio = getattr(cost, key) / value if value and cost.reached and base.reached else None
            row[f"{key}_vs_{reference}"] = ratio
        rows.append(row)
    return pd.DataFrame(rows)
