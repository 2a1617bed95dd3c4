"""DP-SGD's pieces: per-example gradients, per-example clipping, and the reduction to SGD."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plural.core.trainer import LocalTrainer, TrainConfig
from plural.privacy.dpsgd import (
    PrivateTrainConfig,
    batched_clipped_sums,
    batched_per_example_gradients,
    clipped_sum,
    per_example_gradients,
)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_per_example_gradients_match_autograd_one_by_one() -> None:
    for seed, n in ((0, 4), (1, 9)):
        model, (x, y) = _model(seed), _data(n, seed)
        live = dict(model.named_parameters())
        grads, losses = per_example_gradients(model, nn.functional.cross_entropy, live, x, y)
        for i in range(n):
            one = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            assert float(losses[i]) == pytest.approx(float(one), abs=1e-6)
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
            for name, param in live.items():
                assert torch.allclose(grads[name][i], param.grad, atol=1e-6)


def test_each_example_contributes_at_most_clip() -> None:
    model, (x, y) = _model(2), _data(12, 2)
    live = dict(model.named_parameters())
    grads, _ = per_example_gradients(model, nn.functional.cross_entropy, live, x, y)
    for bound in (1e-3, 0.1, 10.0):
        for i in range(12):
            one = clipped_sum({k: g[i : i + 1] for k, g in grads.items()}, bound)
            norm = sum(float(t.double().pow(2).sum()) for t in one.values()) ** 0.5
            assert norm <= bound * (1 + 1e-6)


def test_no_noise_huge_clip_full_batch_is_plain_sgd() -> None:
    # every example is sampled (batch >= n) and nothing is clipped or noised: one step of
    # DP-SGD is one full-batch SGD step
    for n in (5, 11):
        model, (x, y) = _model(3), _data(n, 3)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        plain = TrainConfig(lr=0.1, batch_size=64, local_epochs=2)
        private = PrivateTrainConfig.of(plain, noise_multiplier=0.0, clip=1e9)
        got = LocalTrainer(model, private).fit(start, x, y, rng=torch.Generator().manual_seed(0))
        want = LocalTrainer(model, plain).fit(start, x, y, rng=torch.Generator().manual_seed(0))
        for name in want.params:
            assert torch.allclose(got.params[name], want.params[name], atol=1e-6)
        assert got.steps == want.steps == 2


def test_batched_gradients_and_clipped_sums_equal_each_clients_own() -> None:
    # three clients with their own parameters; the last client's second example is padding
    models = [_model(seed) for seed in (4, 5, 6)]
    data = [_data(4, seed) for seed in (4, 5, 6)]
    live = {
        name: torch.stack([dict(m.named_parameters())[name].detach() for m in models])
        for name, _ in models[0].named_parameters()
    }
    x = torch.stack([d[0] for d in data])
    y = torch.stack([d[1] for d in data])
    mask = torch.ones(3, 4)
    mask[2, 1] = 0.0
    grads, _ = batched_per_example_gradients(
        models[0], nn.functional.cross_entropy, live, {}, {}, x, y
    )
    sums = batched_clipped_sums(grads, 0.3, mask)
    for c, model in enumerate(models):
        own, _ = per_example_gradients(
            model, nn.functional.cross_entropy, dict(model.named_parameters()), *data[c]
        )
        keep = mask[c].bool()
        want = clipped_sum({k: g[keep] for k, g in own.items()}, 0.3)
        for name, g in own.items():
            assert torch.allclose(grads[name][c], g, atol=1e-6)
            assert torch.allclose(sums[name][c], want[name], atol=1e-6)
