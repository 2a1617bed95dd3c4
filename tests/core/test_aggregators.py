from __future__ import annotations

import pytest
import torch

from plural.core.aggregators import WeightedMean, client_weight, weighted_mean


def params(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), value), "steps": torch.tensor(int(value), dtype=torch.long)}


def test_weighted_mean_values_and_dtypes() -> None:
    mean = weighted_mean([(params(1.0), 1.0), (params(4.0), 3.0)])
    torch.testing.assert_close(mean["w"], torch.full((2, 2), 3.25))
    assert mean["w"].dtype == torch.float32
    assert mean["steps"].dtype == torch.long and int(mean["steps"]) == 3


def test_merge_equals_adding_everything_to_one() -> None:
    items = [(params(float(i)), float(i + 1)) for i in range(5)]
    left, right = WeightedMean(), WeightedMean()
    for p, w in items[:2]:
        left.add(p, w)
    for p, w in items[2:]:
        right.add(p, w)
    merged = left.merge(right).result()
    torch.testing.assert_close(merged["w"], weighted_mean(items)["w"])


def test_weights_by_samples_or_uniform() -> None:
    assert client_weight(7, "samples") == 7.0
    assert client_weight(7, "uniform") == 1.0
    with pytest.raises(ValueError, match="allowed"):
        client_weight(7, "square")  # type: ignore[arg-type]


def test_no_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="no client"):
        WeightedMean().result()
    with pytest.raises(ValueError, match=">= 0"):
        WeightedMean().add(params(1.0), -1.0)
