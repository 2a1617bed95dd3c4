"""Streaming aggregation: FedAvg folds each reply into the aggregate as it arrives, with the
results of aggregating the whole list bit for bit, and nothing keeps the folded replies."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.algorithms.fedavg import FedAvg
from plural.core import aggregation
from plural.core.aggregation import AggregationChain, AggregationState, ChainAccumulator
from plural.core.params import Params, max_abs_difference
from plural.report.rundir import deterministic


class _Clip:
    name = "clip"

    def apply(
        self, delta: Params, weight: float, state: AggregationState
    ) -> tuple[Params, float, Mapping[str, Any]]:
        norm = sum(float(v.pow(2).sum()) for v in delta.values()) ** 0.5
        scale = min(1.0, 0.5 / max(norm, 1e-12))
        return {k: v * scale for k, v in delta.items()}, weight, {"clipped": scale < 1}


class _Noise:
    name = "noise"

    def apply(
        self, delta: Params, summary: Any, state: AggregationState, rng: Any
    ) -> tuple[Params, AggregationState]:
        noise = {k: torch.from_numpy(rng.normal(0, 1e-3, tuple(v.shape))) for k, v in delta.items()}
        seen = state.get("clipped", 0) + sum(bool(n.get("clipped")) for n in summary.notes)
        return {k: v + noise[k] for k, v in delta.items()}, {"clipped": seen}


class _Median:
    name = "median"
    streaming = False

    def reduce(self, deltas: Any, weights: np.ndarray, rng: Any, state: Any) -> Params:
        return {k: torch.stack([d[k] for d in deltas]).median(dim=0).values for k in deltas[0]}


CHAINS = {
    "clip-noise": AggregationChain(client_stages=(_Clip(),), post_stages=(_Noise(),)),
    "median": AggregationChain(reducer=_Median()),
}

CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "plain": ({}, None),
    "uniform-momentum": (
        {"algorithm": {"name": "fedavg", "weighting": "uniform", "server_optimizer": "adam"}},
        None,
    ),
    "private-counts": (
        {"algorithm": {"name": "fedavg", "weighting": "private_samples", "count_noise": 2.0}},
        None,
    ),
    "fair": ({"algorithm": {"name": "fedavg", "weighting": "fair"}}, None),
    "dropped-stragglers": (
        {"algorithm": {"name": "fedavg", "stragglers": 0.5, "drop_stragglers": True}},
        None,
    ),
    "fedprox": ({"algorithm": {"name": "fedprox"}}, None),
    "fedper": ({"algorithm": {"name": "fedper"}}, None),
    "clip-noise": ({}, "clip-noise"),
    "median": ({}, "median"),
}


def _config(tiny_config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(tiny_config)
    config["partition"]["num_clients"] = 9
    config["sampling"] = {"fraction": 1.0}
    config["rounds"] = 3
    config.update(copy.deepcopy(changes))
    return config


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ["sequential", "vectorized"])
def test_streamed_rounds_equal_aggregating_the_list_bit_for_bit(
    case: str, backend: str, tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    changes, chain = CASES[case]
    config = _config(tiny_config, changes)
    if chain is not None:
        monkeypatch.setattr(aggregation, "_BUILDERS", [lambda cfg: CHAINS[chain]])
    folded: list[int] = []
    add = ChainAccumulator.add

    def counting(self: ChainAccumulator, params: Any, weight: float) -> ChainAccumulator:
        folded.append(1)
        return add(self, params, weight)

    monkeypatch.setattr(ChainAccumulator, "add", counting)
    streams: list[int] = []
    aggregate_stream = FedAvg.aggregate_stream

    def recording(self: FedAvg, *args: Any) -> Any:
        streams.append(1)
        return aggregate_stream(self, *args)

    monkeypatch.setattr(FedAvg, "aggregate_stream", recording)
    streamed = plural.run(config, overrides=[f"backend.name={backend}"])
    assert len(streams) == 3  # every round streamed
    listed_calls = len(folded)
    monkeypatch.setattr(FedAvg, "streams_updates", lambda self: False)
    listed = plural.run(config, overrides=[f"backend.name={backend}"])
    assert len(streams) == 3  # the list path
    assert len(folded) == 2 * listed_calls > 0  # both ways folded the same updates
    pd.testing.assert_frame_equal(deterministic(streamed.metrics), deterministic(listed.metrics))
    assert max_abs_difference(streamed.server.params, listed.server.params) == 0.0
    assert streamed.server.extra.keys() == listed.server.extra.keys()


def test_capped_weighting_and_overridden_hooks_keep_the_list() -> None:
    from plural.algorithms.fedavg import AveragingConfig
    from plural.registry import ALGORITHMS

    assert FedAvg(AveragingConfig()).streams_updates()
    assert not FedAvg(AveragingConfig(weighting="capped")).streams_updates()
    for name in ("scaffold", "qfedavg", "fedem"):
        entry = ALGORITHMS.get(name)
        assert not entry.target(entry.config_cls()).streams_updates(), name
    for name in ("fedprox", "fedper", "ditto"):
        entry = ALGORITHMS.get(name)
        assert entry.target(entry.config_cls()).streams_updates(), name


@pytest.mark.parametrize(
    ("backend", "batch", "alive"), [("sequential", 256, 0), ("vectorized", 2, 1)]
)
def test_folded_replies_are_not_kept(
    backend: str,
    batch: int,
    alive: int,
    tiny_config: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the round folds client k, no reply folded before it is alive (for the vectorized
    backend: but those of k's own batch): neither the engine nor the algorithm keeps them."""
    refs: list[weakref.ref[torch.Tensor]] = []
    most_alive: list[int] = []
    add = ChainAccumulator.add

    def watching(self: ChainAccumulator, params: Any, weight: float) -> ChainAccumulator:
        most_alive.append(sum(ref() is not None for ref in refs))
        refs.append(weakref.ref(next(iter(params.values()))))
        return add(self, params, weight)

    monkeypatch.setattr(ChainAccumulator, "add", watching)
    config = _config(tiny_config, {})
    overrides = [f"backend.name={backend}", f"backend.max_batch_clients={batch}"]
    plural.run(config, overrides=overrides)
    assert len(most_alive) == 27  # 9 clients x 3 rounds
    assert max(most_alive) <= alive
