from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from plural.core.params import clone, max_abs_difference, state_of
from plural.core.rng import torch_generator
from plural.core.trainer import LocalTrainer, TrainConfig


def make(batch_size: int = 4, **kwargs) -> tuple[LocalTrainer, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return LocalTrainer(model, TrainConfig(batch_size=batch_size, **kwargs)), state_of(model)


def data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def test_fit_returns_new_params_and_leaves_inputs_alone() -> None:
    trainer, params = make()
    before = clone(params)
    x, y = data()
    result = trainer.fit(params, x, y, rng=torch_generator(0, "t"))
    assert max_abs_difference(params, before) == 0.0
    assert max_abs_difference(result.params, before) > 0.0
    assert result.steps == math.ceil(10 / 4) and result.samples_seen == 10


def test_same_generator_same_result_other_generator_differs() -> None:
    trainer, params = make()
    x, y = data()
    a = trainer.fit(params, x, y, rng=torch_generator(0, "t"))
    b = trainer.fit(params, x, y, rng=torch_generator(0, "t"))
    c = trainer.fit(params, x, y, rng=torch_generator(1, "t"))
    assert max_abs_difference(a.params, b.params) == 0.0
    assert max_abs_difference(a.params, c.params) > 0.0


def test_epochs_and_steps_budget() -> None:
    trainer, params = make(local_epochs=3)
    x, y = data(10)
    assert trainer.fit(params, x, y, rng=torch_generator(0)).steps == 9
    assert trainer.fit(params, x, y, rng=torch_generator(0), steps=5).steps == 5
    assert trainer.fit(params, x, y, rng=torch_generator(0), epochs=0).steps == 0
    stepped, _ = make(local_steps=7)
    assert stepped.fit(params, x, y, rng=torch_generator(0)).steps == 7
    # a method's own epochs (fine-tuning, head epochs) stay epochs under local_steps
    per_epoch = -(-len(y) // stepped.config.batch_size)
    assert stepped.fit(params, x, y, rng=torch_generator(0), epochs=2).steps == 2 * per_epoch
    assert stepped.fit(params, x, y, rng=torch_generator(0), epochs=2, steps=3).steps == 3


def test_zero_epochs_returns_the_start() -> None:
    trainer, params = make()
    x, y = data()
    result = trainer.fit(params, x, y, rng=torch_generator(0), epochs=0)
    assert max_abs_difference(result.params, params) == 0.0


def test_frozen_parameters_do_not_change() -> None:
    trainer, params = make(weight_decay=0.1, momentum=0.9)
    x, y = data()
    result = trainer.fit(
        params, x, y, rng=torch_generator(0), trainable=lambda n: n.startswith("2.")
    )
    for name in ("0.weight", "0.bias"):
        assert torch.equal(result.params[name], params[name])
    assert not torch.equal(result.params["2.weight"], params["2.weight"])
    # the template model is left trainable for the next client
    assert all(p.requires_grad for p in trainer.model.parameters())


def test_linear_loss_term_shifts_plain_sgd_by_lr_times_constant() -> None:
    lr, c = 0.1, 0.5
    trainer, params = make(batch_size=10, lr=lr)
    x, y = data(10)
    plain = trainer.fit(params, x, y, rng=torch_generator(0))

    def linear(named):
        return c * sum(p.sum() for p in named.values())

    shifted = trainer.fit(params, x, y, rng=torch_generator(0), loss_terms=[linear])
    for name in params:
        torch.testing.assert_close(shifted.params[name], plain.params[name] - lr * c)


def test_evaluate_matches_a_direct_computation() -> None:
    trainer, params = make()
    x, y = data(9)
    result = trainer.evaluate(params, x, y, batch_size=4)
    logits = trainer.model(x)
    expected_loss = nn.functional.cross_entropy(logits, y, reduction="sum").item()
    assert result.count == 9
    assert result.correct == int((logits.argmax(1) == y).sum())
    assert result.loss == pytest.approx(expected_loss / 9, rel=1e-6)


def test_empty_split_evaluates_to_nan_and_fit_is_a_no_op() -> None:
    trainer, params = make()
    x, y = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    assert math.isnan(trainer.evaluate(params, x, y).accuracy)
    assert trainer.fit(params, x, y, rng=torch_generator(0)).steps == 0


def test_gradient_matches_autograd_on_the_whole_split() -> None:
    trainer, params = make()
    x, y = data(9)
    grads = trainer.gradient(params, x, y, batch_size=4)  # three uneven batches
    model = trainer.model
    model.load_state_dict(params)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


def test_mse_loss_trains_regression_and_has_no_accuracy() -> None:
    model = nn.Linear(3, 1)
    trainer = LocalTrainer(model, TrainConfig(loss="mse", lr=0.1, batch_size=16, local_epochs=50))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    params = state_of(model)
    fitted = trainer.fit(params, x, y, rng=torch_generator(0))
    before, after = trainer.evaluate(params, x, y), trainer.evaluate(fitted.params, x, y)
    assert after.loss < 0.01 * before.loss
    assert math.isnan(after.accuracy)


def test_early_stopping_returns_the_best_epoch_on_validation() -> None:
    trainer, params = make(batch_size=4, lr=0.5, local_epochs=30)
    x, y = data(12)
    gen = torch.Generator().manual_seed(5)
    val_x, val_y = torch.randn(12, 3, generator=gen), torch.randint(0, 2, (12,), generator=gen)
    result = trainer.fit(
        params, x, y, rng=torch_generator(0), validation=(val_x, val_y), patience=2
    )
    assert result.best_epoch is not None and result.steps < 30 * 3  # it stopped early
    losses = []
    for epochs in range(0, result.best_epoch + 3):
        fitted = trainer.fit(params, x, y, rng=torch_generator(0), epochs=epochs).params
        losses.append(trainer.evaluate(fitted, val_x, val_y).loss)
    # the returned parameters are those of the best epoch seen, and the next two were worse
    assert trainer.evaluate(result.params, val_x, val_y).loss == pytest.approx(
        min(losses), rel=1e-5
    )
    assert losses.index(min(losses)) == result.best_epoch


def test_no_validation_data_means_no_early_stopping() -> None:
    trainer, params = make(local_epochs=3)
    x, y = data(10)
    empty = (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    plain = trainer.fit(params, x, y, rng=torch_generator(0))
    guarded = trainer.fit(params, x, y, rng=torch_generator(0), validation=empty, patience=1)
    assert guarded.best_epoch is None and max_abs_difference(plain.params, guarded.params) == 0.0


def test_nothing_trainable_returns_the_start() -> None:
    trainer, params = make()
    x, y = data()
    result = trainer.fit(params, x, y, rng=torch_generator(0), trainable=lambda name: False)
    assert result.steps == 0 and max_abs_difference(result.params, params) == 0.0
    assert all(p.requires_grad for p in trainer.model.parameters())


@pytest.mark.parametrize(
    ("trained", "per_sample"),
    [
        # forward 2*(3*5 + 5*2) = 50; backward: weight gradients 2*3*5 = 30 and 2*5*2 = 20,
        # and the gradient into layer 2's input (20) only when layer 1 trains
        (None, 50 + 30 + 20 + 20),
        ("2.", 50 + 20),
        ("0.", 50 + 30 + 20),
    ],
)
def test_training_flops_are_counted_from_the_layer_shapes(
    trained: str | None, per_sample: int
) -> None:
    trainer, params = make(batch_size=4)
    x, y = data(10)
    only = None if trained is None else (lambda name: name.startswith(trained))
    trainer.fit(params, x, y, rng=torch_generator(0, "t"), trainable=only, epochs=2)
    assert trainer.meter.flops == 2 * 10 * per_sample
    trainer.meter.reset()
    assert trainer.meter.flops == 0.0
