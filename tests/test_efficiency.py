"""Cost to a target accuracy, read from metrics rows."""

from __future__ import annotations

import pandas as pd
import pytest

from plural.report.efficiency import cost_ratios, cost_to_target


def metrics(
    accuracies: list[list[float]], bytes_per_fit: int, flops_per_fit: float
) -> pd.DataFrame:
    """Two clients; one fit row per client per round, then one test row per client."""
    rows = []
    for round_index, per_client in enumerate(accuracies, start=1):
        for client, accuracy in enumerate(per_client):
            fit = {"bytes_up": bytes_per_fit, "bytes_down": bytes_per_fit}
            rows.append(
                {
                    "round": round_index,
                    "client": client,
                    "split": "fit",
                    "accuracy": float("nan"),
                    "flops": flops_per_fit,
                    "seconds": 0.5,
                    **fit,
                }
            )
            rows.append(
                {
                    "round": round_index,
                    "client": client,
                    "split": "test",
                    "accuracy": accuracy,
                    "flops": 0.0,
                    "seconds": 0.0,
                    "bytes_up": 0,
                    "bytes_down": 0,
                }
            )
    return pd.DataFrame(rows)


def test_cost_is_summed_up_to_the_first_round_at_the_target() -> None:
    frame = metrics([[0.5, 0.6], [0.8, 0.7], [0.9, 0.9]], bytes_per_fit=10, flops_per_fit=100.0)
    cost = cost_to_target(frame, 0.75)
    assert cost.reached and cost.round == 2 and cost.accuracy == pytest.approx(0.75)
    assert cost.bytes == 2 * 2 * 20 and cost.flops == 2 * 2 * 100.0 and cost.seconds == 2.0
    never = cost_to_target(frame, 0.95)
    assert not never.reached and never.accuracy == pytest.approx(0.9)
    assert never.bytes == 3 * 2 * 20


def test_ratios_against_a_reference() -> None:
    cheap = cost_to_target(metrics([[0.8, 0.8]], 10, 50.0), 0.75)
    dear = cost_to_target(metrics([[0.6, 0.6], [0.8, 0.8]], 40, 100.0), 0.75)
    table = cost_ratios({"cheap": cheap, "dear": dear}, reference="dear").set_index("method")
    assert table.loc["cheap", "bytes_vs_dear"] == pytest.approx(40 / 320)
    assert table.loc["cheap", "flops_vs_dear"] == pytest.approx(100 / 400)
    assert table.loc["dear", "bytes_vs_dear"] == pytest.approx(1.0)
