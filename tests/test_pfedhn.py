"""pFedHN: a server hypernetwork generates every client's model from its embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from plural.algorithms.pfedhn import PFedHN, PFedHNConfig, pfedhn_state
from plural.config import build
from plural.core.algorithm import FederationInfo, ModelMessage, Update
from plural.core.params import max_abs_difference, nbytes, state_of
from plural.experiment import load_config
from plural.runner import build_federation, build_model
from tiny_config import run_algorithm as run
from tiny_config import two_classes_per_client


def small_server(settings: dict[str, Any]) -> tuple[PFedHN, Any]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    params = state_of(model)
    info = FederationInfo(5, 2, (3,), None, tuple(n for n, _ in model.named_parameters()))
    algorithm = PFedHN(build(PFedHNConfig, {"hidden": 6, "hidden_layers": 1, **settings}))
    return algorithm, algorithm.init(params, info, np.random.default_rng(0))


def test_the_server_step_is_the_chain_rule_through_the_hypernetwork() -> None:
    lr = 0.1
    algorithm, server = small_server(
        {"hnet_lr": lr, "hnet_momentum": 0.0, "hnet_weight_decay": 0.0, "max_grad_norm": None}
    )
    cohort = [1, 3]
    messages = {c: ModelMessage(algorithm.generate(server, c)) for c in cohort}
    torch.manual_seed(1)
    trained = {
        c: {n: t + 0.1 * torch.randn_like(t) for n, t in messages[c].params.items()} for c in cohort
    }
    updates = [Update(10, trained[c]) for c in cohort]
    new = pfedhn_state(algorithm.step(server, cohort, messages, updates)).hypernetwork
    # By hand: the gradient of sum_i <h(v_i; phi), theta_i - trained_i>.
    phi = {n: t.clone().requires_grad_(True) for n, t in pfedhn_state(server).hypernetwork.items()}
    total = sum(
        (algorithm.generate(server, c, phi)[n] * (messages[c].params[n] - trained[c][n])).sum()
        for c in cohort
        for n in messages[c].params
    )
    grads = torch.autograd.grad(total, list(phi.values()))
    expected = {n: t.detach() - lr * g for (n, t), g in zip(phi.items(), grads, strict=True)}
    assert max_abs_difference(new, expected) < 1e-6
    # Only the sampled clients' embeddings move.
    before = pfedhn_state(server).hypernetwork["embeddings.weight"]
    moved = (new["embeddings.weight"] - before).abs()
    assert moved[cohort].sum() > 0 and moved[[0, 2, 4]].sum() == 0
    # A client that did not move its model gives no gradient: the hypernetwork stays.
    still = algorithm.step(server, [1], messages, [Update(10, messages[1].params)])
    assert (
        max_abs_difference(pfedhn_state(still).hypernetwork, pfedhn_state(server).hypernetwork) == 0
    )


def test_bytes_are_the_generated_parameters_both_ways(tiny_config: dict[str, Any]) -> None:
    parsed = load_config(tiny_config)
    model_bytes = nbytes(state_of(build_model(parsed, build_federation(parsed))))
    fit = run(tiny_config, {"name": "pfedhn"}).metrics.query("split == 'fit'")
    assert len(fit) == 2 * 3
    assert (fit["bytes_up"] == model_bytes).all() and (fit["bytes_down"] == model_bytes).all()


@pytest.mark.parametrize(("seed", "clients"), [(0, 10), (1, 12)])
def test_distinct_generated_models_beat_fedavg_under_label_skew(
    tiny_config: dict[str, Any], seed: int, clients: int
) -> None:
    two_classes_per_client(tiny_config, seed, clients, rounds=20)
    hn = run(tiny_config, {"name": "pfedhn"})
    fedavg = run(tiny_config, {"name": "fedavg"})
    assert hn.summary["test"]["accuracy"]["mean"] > fedavg.summary["test"]["accuracy"]["mean"]
    algorithm = PFedHN(build(PFedHNConfig, {}))
    models = [algorithm.generate(hn.server, c) for c in range(clients)]
    assert all(max_abs_difference(models[0], m) > 1e-3 for m in models[1:])
