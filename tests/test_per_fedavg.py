"""Per-FedAvg: FedAvg of a MAML meta-model (first-order and Hessian-free), one-step
personalization at evaluation."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import plural
from plural.algorithms.per_fedavg import MetaObjective
from plural.core.params import max_abs_difference, nbytes, state_of
from plural.core.trainer import LocalTrainer, TrainConfig
from plural.experiment import load_config
from plural.report.rundir import deterministic
from plural.runner import build_federation, build_model
from tiny_config import run_algorithm as run
from tiny_config import two_classes_per_client


def own_rows(results: plural.Results) -> pd.DataFrame:
    metrics = results.metrics
    return deterministic(metrics[~metrics["split"].str.contains("@")].reset_index(drop=True))


def test_zero_inner_steps_is_fedavg(tiny_config: dict[str, Any]) -> None:
    fedavg = run(tiny_config, {"name": "fedavg"})
    meta = run(tiny_config, {"name": "per_fedavg", "inner_steps": 0})
    assert max_abs_difference(fedavg.server.params, meta.server.params) == 0.0
    pd.testing.assert_frame_equal(own_rows(meta), deterministic(fedavg.metrics))


def loss_at(model: nn.Module, params: dict[str, torch.Tensor], x, y) -> torch.Tensor:
    return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)


@pytest.mark.parametrize("variant", ["fo", "hf"])
@pytest.mark.parametrize("batch", [6, 9])
def test_one_local_step_is_the_meta_gradient_step(variant: str, batch: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(batch, 4, dtype=torch.float64), torch.randint(0, 3, (batch,))
    alpha, beta, seed = 0.3, 0.2, 7
    trainer = LocalTrainer(model, TrainConfig(lr=beta, batch_size=batch))
    start = state_of(model)
    objective = MetaObjective(alpha, 1, variant == "hf", F.cross_entropy)
    fit = trainer.fit(
        start, x, y, rng=torch.Generator().manual_seed(seed), objective=objective, steps=1
    )
    # The same step written out: the trainer's minibatch order, split into parts.
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    parts = torch.tensor_split(order, 3 if variant == "hf" else 2)
    w = {n: t.clone().requires_grad_(True) for n, t in start.items()}
    names = list(w)
    (d, dd) = parts[0], parts[1]
    g = torch.autograd.grad(loss_at(model, w, x[d], y[d]), [w[n] for n in names])
    temp = {
        n: (w[n] - alpha * gi).detach().requires_grad_(True) for n, gi in zip(names, g, strict=True)
    }
    v = torch.autograd.grad(loss_at(model, temp, x[dd], y[dd]), [temp[n] for n in names])
    step = dict(zip(names, v, strict=True))
    if variant == "hf":
        ddd = parts[2]
        flat = torch.cat([w[n].reshape(-1) for n in names])
        sizes = [w[n].numel() for n in names]

        def loss_of_flat(vector: torch.Tensor) -> torch.Tensor:
            chunks = torch.split(vector, sizes)
            params = {n: c.reshape(w[n].shape) for n, c in zip(names, chunks, strict=True)}
            return loss_at(model, params, x[ddd], y[ddd])

        hessian = torch.autograd.functional.hessian(loss_of_flat, flat.detach())
        correction = hessian @ torch.cat([vi.reshape(-1) for vi in v])
        for n, c in zip(names, torch.split(correction, sizes), strict=True):
            step[n] = step[n] - alpha * c.reshape(w[n].shape)
    expected = {n: start[n] - beta * step[n] for n in names}
    assert max_abs_difference(fit.params, expected) < 1e-12


def test_hf_takes_one_inner_step(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(plural.ConfigError, match="inner_steps"):
        run(tiny_config, {"name": "per_fedavg", "variant": "hf", "inner_steps": 2})


def test_uplink_is_the_model_and_every_client_downloads_it_to_personalize(
    tiny_config: dict[str, Any],
) -> None:
    parsed = load_config(tiny_config)
    model_bytes = nbytes(state_of(build_model(parsed, build_federation(parsed))))
    fit = run(tiny_config, {"name": "per_fedavg"}).metrics.query("split == 'fit'")
    assert set(fit["bytes_up"]) == {0, model_bytes}
    assert fit["bytes_up"].sum() == 2 * 3 * model_bytes  # 3 sampled clients, 2 rounds
    assert fit["bytes_down"].sum() == 2 * (3 + 6) * model_bytes  # + all 6 personalize


@pytest.mark.parametrize(("seed", "clients", "variant"), [(0, 10, "fo"), (1, 16, "hf")])
def test_one_step_personalizes_the_meta_model_under_label_skew(
    tiny_config: dict[str, Any], seed: int, clients: int, variant: str
) -> None:
    two_classes_per_client(tiny_config, seed, clients, rounds=8)
    meta = run(tiny_config, {"name": "per_fedavg", "variant": variant})
    fedavg = run(tiny_config, {"name": "fedavg"})
    adapted = meta.summary["test"]["accuracy"]["mean"]
    assert adapted > meta.summary["test@global"]["accuracy"]["mean"] + 0.05
    assert adapted > fedavg.summary["test"]["accuracy"]["mean"] + 0.05
