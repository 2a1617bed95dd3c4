from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from plural.data.federated import ClientData, TensorSplit
from plural.diagnostics import gradients
from plural.diagnostics.gradients import (
    client_drift,
    dissimilarity_from_gradients,
    distance,
    drift_from_updates,
    flat,
    gradient_dissimilarity,
)

IID = {"name": "iid", "num_clients": 4}


def test_flat_keeps_floating_entries_in_order() -> None:
    params = {
        "b": torch.tensor([1.0, 2.0]),
        "count": torch.tensor(7),
        "a": torch.tensor([[3.0], [4.0]]),
    }
    assert flat(params).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert flat(params).dtype == torch.float64
    assert flat(params, ["a", "b"]).tolist() == [3.0, 4.0, 1.0, 2.0]
    assert flat({}).numel() == 0
    with pytest.raises(KeyError, match="missing"):
        flat(params, ["c"])
    assert distance(params, {**params, "a": torch.tensor([[3.0], [0.0]])}) == pytest.approx(4.0)


def test_dissimilarity_matches_a_hand_computation() -> None:
    g1 = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0])}
    g2 = {"w": torch.tensor([-1.0, 2.0]), "b": torch.tensor([0.0])}
    result = dissimilarity_from_gradients([g1, g2], weights=[1, 3], clients=[4, 7])
    v1, v2 = np.array([1.0, 0.0, 2.0]), np.array([-1.0, 2.0, 0.0])
    mean = 0.25 * v1 + 0.75 * v2
    d1, d2 = np.linalg.norm(v1 - mean), np.linalg.norm(v2 - mean)
    assert result.clients.tolist() == [4, 7]
    np.testing.assert_allclose(result.weights, [0.25, 0.75])
    np.testing.assert_allclose(result.deviation, [d1, d2])
    np.testing.assert_allclose(result.grad_norm, [np.linalg.norm(v1), np.linalg.norm(v2)])
    assert result.g2 == pytest.approx(0.25 * d1**2 + 0.75 * d2**2)
    second = 0.25 * (v1 @ v1) + 0.75 * (v2 @ v2)
    assert result.b2 == pytest.approx(second / (mean @ mean))
    assert result.global_grad_norm == pytest.approx(np.linalg.norm(mean))
    assert result.max_deviation == pytest.approx(max(d1, d2))
    # parameter sets whose names come in another order line up by name
    swapped = dissimilarity_from_gradients([g1, {"b": g2["b"], "w": g2["w"]}], [1, 3])
    assert swapped.g2 == pytest.approx(result.g2)


def test_b2_is_at_least_one_and_equals_one_plus_relative_g2() -> None:
    rng = torch.Generator().manual_seed(0)
    for trial in range(25):
        k = 2 + trial % 5
        grads = [{"g": torch.randn(6, generator=rng) + trial % 3} for _ in range(k)]
        weights = torch.rand(k, generator=rng).numpy() + 0.01
        result = dissimilarity_from_gradients(grads, weights)
        assert result.b2 >= 1.0 - 1e-12  # Jensen
        assert result.b2 == pytest.approx(1 + result.g2 / result.global_grad_norm**2)


def test_zero_global_gradient_and_bad_input() -> None:
    grads = [{"g": torch.tensor([1.0, -1.0])}, {"g": torch.tensor([-1.0, 1.0])}]
    result = dissimilarity_from_gradients(grads, [1, 1])
    assert result.b2 == float("inf") and result.g2 == pytest.approx(2.0)
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["b2"] is None
    zeros = [{"g": torch.zeros(2)}, {"g": torch.zeros(2)}]
    assert dissimilarity_from_gradients(zeros, [1, 2]).b2 == 1.0  # identical clients
    with pytest.raises(ValueError, match="at least one"):
        dissimilarity_from_gradients([], [])
    with pytest.raises(ValueError, match="weights"):
        dissimilarity_from_gradients(grads, [1])
    with pytest.raises(ValueError, match="positive sum"):
        dissimilarity_from_gradients(grads, [0, 0])


def test_g2_vanishes_for_clients_holding_the_same_data(make_federation, make_trainer) -> None:
    federation = make_federation(IID)
    same = federation.clients[0]
    twins = federation.with_clients([dataclasses.replace(same, client_id=k) for k in range(4)])
    trainer, params = make_trainer(twins)
    result = gradient_dissimilarity(trainer, params, twins)
    assert result.g2 == pytest.approx(0.0, abs=1e-12)
    assert result.b2 == pytest.approx(1.0)
    assert result.deviation.max() < 1e-6 and result.global_grad_norm > 0.01


def test_g2_grows_as_dirichlet_alpha_shrinks(make_federation, make_trainer) -> None:
    alphas = [100.0, 1.0, 0.05]
    g2 = np.zeros((3, len(alphas)))
    b2 = np.zeros_like(g2)
    for seed in range(3):
        for j, alpha in enumerate(alphas):
            partition = {"name": "dirichlet", "num_clients": 8, "alpha": alpha}
            federation = make_federation(partition, seed=seed)
            trainer, params = make_trainer(federation)  # the same model and parameters
            result = gradient_dissimilarity(trainer, params, federation)
            g2[seed, j], b2[seed, j] = result.g2, result.b2
    assert np.all(np.diff(g2.mean(axis=0)) > 0), g2
    assert np.all(np.diff(b2.mean(axis=0)) > 0), b2
    assert (b2 >= 1.0).all()


def test_high_level_gradient_dissimilarity_uses_the_low_level_one(
    make_federation, make_trainer, monkeypatch
) -> None:
    federation = make_federation(IID)
    empty = TensorSplit(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))
    clients = list(federation.clients)
    clients[2] = dataclasses.replace(clients[2], train=empty)
    federation = federation.with_clients(clients)
    trainer, params = make_trainer(federation)
    calls = []

    def spy(grads, weights, clients=None):
        calls.append((len(grads), list(weights), clients))
        return dissimilarity_from_gradients(grads, weights, clients)

    monkeypatch.setattr(gradients, "dissimilarity_from_gradients", spy)
    result = gradient_dissimilarity(trainer, params, federation)
    sizes = [len(federation.clients[k].train) for k in (0, 1, 3)]
    assert calls == [(3, sizes, [0, 1, 3])]  # the client without training data is skipped
    direct = [trainer.gradient(params, c.train.x, c.train.y) for c in clients if len(c.train)]
    expected = dissimilarity_from_gradients(direct, sizes)
    assert result.g2 == pytest.approx(expected.g2) and result.b2 == pytest.approx(expected.b2)
    subset = gradient_dissimilarity(trainer, params, federation, clients=[3, 1])
    assert subset.clients.tolist() == [3, 1]


def test_drift_from_updates_hand_computation() -> None:
    start = {"w": torch.zeros(2), "steps": torch.tensor(0)}
    ends = [
        {"w": torch.tensor([1.0, 0.0]), "steps": torch.tensor(5)},
        {"w": torch.tensor([0.0, 2.0]), "steps": torch.tensor(5)},
        {"w": torch.tensor([-1.0, 0.0]), "steps": torch.tensor(5)},
        {"w": torch.tensor([0.0, 0.0]), "steps": torch.tensor(5)},
    ]
    drift = drift_from_updates(start, ends, clients=[3, 5, 8, 9])
    assert drift.clients.tolist() == [3, 5, 8, 9]
    np.testing.assert_allclose(drift.drift, [1.0, 2.0, 1.0, 0.0])
    expected = [[1, 0, -1, 0], [0, 1, 0, 0], [-1, 0, 1, 0], [0, 0, 0, 1]]
    np.testing.assert_allclose(drift.update_cosine, expected, atol=1e-12)
    assert drift.mean_drift == pytest.approx(1.0) and drift.max_drift == pytest.approx(2.0)
    assert drift.drift_cv == pytest.approx(np.std([1, 2, 1, 0]) / 1.0)
    assert drift.mean_cosine == pytest.approx(-2 / 12) and drift.min_cosine == pytest.approx(-1)
    assert json.dumps(drift.to_dict(), allow_nan=False)


def test_client_drift_zero_without_training_and_growing_with_epochs(
    make_federation, make_trainer
) -> None:
    federation = make_federation(IID)
    means = []
    for epochs in (0, 1, 3):
        trainer, params = make_trainer(federation, local_epochs=epochs)
        drift = client_drift(trainer, params, federation, rng_seed=1)
        cosine = drift.update_cosine
        np.testing.assert_allclose(cosine, cosine.T)
        np.testing.assert_allclose(np.diag(cosine), 1.0)
        assert (np.abs(cosine) <= 1.0).all()
        means.append(drift.mean_drift)
        if epochs == 0:
            assert drift.drift.tolist() == [0.0] * 4
            assert drift.mean_cosine == 0.0 and drift.drift_cv == 0.0
        else:
            assert (drift.drift > 0).all() and drift.mean_cosine > 0.3  # IID clients agree
    assert means[0] == 0.0 < means[1] < means[2]


def test_client_drift_is_deterministic_and_order_free(make_federation, make_trainer) -> None:
    federation = make_federation(IID)
    trainer, params = make_trainer(federation)
    full = client_drift(trainer, params, federation, rng_seed=5, round_index=2)
    again = client_drift(trainer, params, federation, rng_seed=5, round_index=2)
    part = client_drift(trainer, params, federation, rng_seed=5, round_index=2, clients=[3, 1])
    np.testing.assert_array_equal(full.drift, again.drift)
    np.testing.assert_allclose(part.drift, full.drift[[3, 1]])
    assert part.update_cosine[0, 1] == pytest.approx(full.update_cosine[3, 1])
    other = client_drift(trainer, params, federation, rng_seed=6, round_index=2)
    assert not np.array_equal(full.drift, other.drift)


def test_client_without_data_is_skipped_by_drift(make_federation, make_trainer) -> None:
    federation = make_federation(IID)
    empty = ClientData(
        9,
        *[TensorSplit(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64))] * 3,
    )
    federation = dataclasses.replace(federation, clients=[*federation.clients, empty])
    trainer, params = make_trainer(federation)
    assert client_drift(trainer, params, federation, rng_seed=0).clients.tolist() == [0, 1, 2, 3]


def test_distance_equals_the_float64_distance_for_every_dtype() -> None:
    """The drift subtracts float32 entries in float32 and norms them in float64 (fused); it
    stays within 1e-7 of the distance taken wholly in float64, half-precision entries and
    entries of different dtypes go through float64, integer buffers and entries one side
    lacks are left out."""
    generator = torch.Generator().manual_seed(0)
    a = {
        "w": torch.randn(300, 200, generator=generator),
        "b": torch.randn(200, generator=generator).double(),
        "h": torch.randn(50, generator=generator).half(),
        "m": torch.randn(20, generator=generator),
        "count": torch.tensor(3),
        "only_a": torch.ones(4),
    }
    b = {
        name: t + 1e-3 * torch.randn(t.shape, generator=generator).to(t.dtype)
        for name, t in a.items()
        if t.is_floating_point() and name != "only_a"
    }
    b["m"] = b["m"].double()  # another dtype than a's
    b["count"] = torch.tensor(5)
    expected = (
        sum(float(((a[n].double() - b[n].double()) ** 2).sum()) for n in ("w", "b", "h", "m"))
        ** 0.5
    )
    assert distance(a, b) == pytest.approx(expected, rel=1e-7)
    assert distance(a, a) == 0.0
    assert distance({"count": torch.tensor(1)}, {"count": torch.tensor(2)}) == 0.0
    # A float32 difference that overflows is taken in float64 instead.
    huge = distance({"w": torch.tensor([3e38])}, {"w": torch.tensor([-3e38])})
    assert huge == pytest.approx(6e38, rel=1e-6)
