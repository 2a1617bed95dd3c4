"""FedRoD: a generic head (balanced softmax) federated with the body, a personal head on top."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch
from torch import nn

import plural
from plural.algorithms.fedrod import GenericPersonalModel, RoDObjective, log_class_counts
from plural.core.params import max_abs_difference, nbytes, state_of
from plural.experiment import load_config
from plural.report.rundir import RunDirectory, deterministic
from plural.runner import build_federation, build_model
from tiny_config import run_algorithm as run
from tiny_config import two_classes_per_client


def generic_part(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n.removeprefix("generic."): t for n, t in params.items()}


@pytest.mark.parametrize("seed", [3, 11])
def test_without_the_balanced_loss_the_generic_model_is_fedavg(
    tiny_config: dict[str, Any], seed: int
) -> None:
    tiny_config["seed"] = seed
    rod = run(tiny_config, {"name": "fedrod", "balanced": False})
    fedavg = run(tiny_config, {"name": "fedavg"})
    assert set(rod.server.params) == {"generic." + n for n in fedavg.server.params}
    assert max_abs_difference(generic_part(rod.server.params), fedavg.server.params) == 0.0
    # Its generic model is scored exactly as FedAvg's model.
    generic = deterministic(rod.metrics.query("split == 'test@global'")).reset_index(drop=True)
    plain = deterministic(fedavg.metrics.query("split == 'test'")).reset_index(drop=True)
    pd.testing.assert_series_equal(generic["accuracy"], plain["accuracy"])


def test_the_generic_model_travels_and_the_personal_head_stays(
    tiny_config: dict[str, Any], tmp_path
) -> None:
    parsed = load_config(tiny_config)
    model_bytes = nbytes(state_of(build_model(parsed, build_federation(parsed))))
    results = plural.run({**tiny_config, "algorithm": {"name": "fedrod"}}, out=tmp_path)
    fit = results.metrics.query("split == 'fit'")
    assert len(fit) == 2 * 3
    assert (fit["bytes_up"] == model_bytes).all() and (fit["bytes_down"] == model_bytes).all()
    store = RunDirectory(tmp_path).load_checkpoint()["store"]
    assert store and all(
        set(s) == {"personal_head.weight", "personal_head.bias"} for s in store.values()
    )
    assert all(float(s["personal_head.weight"].abs().sum()) > 0 for s in store.values())


def test_balanced_softmax_does_not_push_down_absent_classes() -> None:
    torch.manual_seed(0)
    model = GenericPersonalModel(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5)))
    x, y = torch.randn(12, 4), torch.tensor([0, 1] * 6)  # classes 2..4 absent
    log_prior = log_class_counts(y, 5, torch.float32)
    assert torch.isinf(log_prior[2:]).all() and torch.isfinite(log_prior[:2]).all()
    for prior, absent_moves in ((log_prior, False), (None, True)):
        model.zero_grad()
        loss = RoDObjective(prior)(model, x, y)
        assert torch.isfinite(loss)
        loss.backward()
        bias_grad = model.generic[2].bias.grad
        assert bool((bias_grad[2:].abs() > 0).any()) == absent_moves
        assert model.personal_head.weight.grad is not None
        # The personal loss never reaches the generic model: its gradients are the generic
        # loss's alone.
        shared = [p for n, p in model.named_parameters() if n.startswith("generic.")]
        together = [p.grad.clone() for p in shared]
        generic, _ = model.branches(x)
        alone = torch.autograd.grad(
            torch.nn.functional.cross_entropy(generic if prior is None else generic + prior, y),
            shared,
        )
        assert all(
            torch.allclose(a, b, atol=0, rtol=1e-6) for a, b in zip(alone, together, strict=True)
        )
    generic, personal = model.branches(x)
    assert torch.equal(model(x), generic + personal)


@pytest.mark.parametrize(("seed", "clients"), [(0, 10), (1, 16)])
def test_the_personal_head_beats_fedavg_under_label_skew(
    tiny_config: dict[str, Any], seed: int, clients: int
) -> None:
    two_classes_per_client(tiny_config, seed, clients, rounds=6)
    rod = run(tiny_config, {"name": "fedrod"})
    fedavg = run(tiny_config, {"name": "fedavg"})
    personal = rod.summary["test"]["accuracy"]["mean"]
    assert personal > rod.summary["test@global"]["accuracy"]["mean"] + 0.2
    assert personal > fedavg.summary["test"]["accuracy"]["mean"] + 0.1
