from __future__ import annotations

import pytest
import torch
from torch import nn

from plural.core.masks import check_patterns, merge, norm_layer_names, select


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 3),
    )


def test_globs_select_by_name() -> None:
    names = list(net().state_dict())
    assert select(names, ["4.*"]) == {"4.weight", "4.bias"}
    assert select(names, ["*.bias"]) >= {"0.bias", "4.bias", "6.bias"}


def test_last_is_the_classifier_and_norm_the_normalisation_layers() -> None:
    model = net()
    names = list(model.state_dict())
    assert select(names, ["@last"]) == {"6.weight", "6.bias"}
    norm = norm_layer_names(model)
    assert set(norm) == {
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "5.weight",
        "5.bias",
    }
    assert select(names, ["@norm"], norm) == set(norm)


def test_a_pattern_matching_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'head\.\*' matches no parameter"):
        check_patterns(list(net().state_dict()), ["head.*"], "algorithm.personal")
    check_patterns(list(net().state_dict()), ["@last", "@norm", "0.*"], "algorithm.personal")


def test_merge_puts_personal_entries_over_shared_ones() -> None:
    shared = {"a": torch.zeros(1), "b": torch.zeros(1)}
    merged = merge(shared, {"b": torch.ones(1)})
    assert list(merged) == ["a", "b"] and float(merged["b"]) == 1.0 and merged["a"] is shared["a"]
