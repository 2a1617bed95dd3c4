"""The vectorized backend: batched fits equal one-by-one fits, unbatchable work runs alone,
``auto`` batches only where it pays, and client errors surface."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

import plural
from plural.config import ConfigError
from plural.core.params import state_of
from plural.core.rng import torch_generator
from plural.core.trainer import FitRequest, LocalTrainer, TrainConfig
from plural.engine.backends import resolve_device, to_device
from plural.engine.vectorized import (
    VectorizedBackend,
    batched_evaluate,
    batched_fit,
    can_batch,
    worth_batching,
)
from plural.runner import session


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def client_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def requests_for(
    trainer: LocalTrainer,
    sizes: list[int],
    *,
    live: tuple[str, ...] = ("0.weight", "0.bias", "2.weight", "2.bias"),
    steps: list[int | None] | None = None,
    loss_terms: list[Any] | None = None,
) -> list[FitRequest]:
    start = state_of(trainer.model)
    out = []
    for c, n in enumerate(sizes):
        x, y = client_data(n, c)
        params = {k: v + 0.01 * c for k, v in start.items()}  # clients start apart
        out.append(
            FitRequest(
                trainer,
                params,
                x,
                y,
                torch_generator(0, 1, c, "fit"),
                tuple(loss_terms[c]) if loss_terms else (),
                live,
                None,
                steps[c] if steps else None,
                trainer.config.lr,
            )
        )
    return out


def one_by_one(requests: list[FitRequest]) -> list[Any]:
    results = []
    for c, r in enumerate(requests):
        results.append(
            r.trainer.fit(
                r.params,
                r.x,
                r.y,
                rng=torch_generator(0, 1, c, "fit"),
                loss_terms=r.loss_terms,
                trainable=set(r.live).__contains__,
                steps=r.steps,
            )
        )
    return results


def assert_fits_close(batched: list[Any], alone: list[Any]) -> None:
    for b, a in zip(batched, alone, strict=True):
        assert (b.steps, b.samples_seen) == (a.steps, a.samples_seen)
        assert b.mean_loss == pytest.approx(a.mean_loss, abs=1e-5)
        for name in a.params:
            torch.testing.assert_close(b.params[name], a.params[name], atol=1e-5, rtol=1e-5)


SETTINGS = [
    {},
    {"momentum": 0.9, "weight_decay": 0.01},
    {"max_grad_norm": 0.05, "momentum": 0.5},
    {"local_epochs": 3, "batch_size": 4},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "plain")
def test_uneven_clients_padded_and_masked_match_one_by_one(settings: dict[str, Any]) -> None:
    config = dataclasses.replace(TrainConfig(lr=0.1, batch_size=7), **settings)
    trainer = LocalTrainer(mlp(), config)
    sizes = [3, 7, 20, 31, 0]  # a partial last batch, exactly one batch, none at all
    assert_fits_close(
        batched_fit(requests_for(trainer, sizes)), one_by_one(requests_for(trainer, sizes))
    )


def test_step_caps_head_only_training_and_loss_terms_match_one_by_one() -> None:
    trainer = LocalTrainer(mlp(), TrainConfig(lr=0.1, batch_size=4, momentum=0.5))
    anchor = {k: torch.zeros_like(v) for k, v in state_of(trainer.model).items()}

    def proximal(mu: float) -> Any:
        return lambda live: mu / 2 * sum(((p - anchor[n]) ** 2).sum() for n, p in live.items())

    kwargs: dict[str, Any] = {
        "live": ("2.weight", "2.bias"),
        "steps": [2, 9, None],
        "loss_terms": [[proximal(0.5)], [], [proximal(2.0)]],
    }
    requests = requests_for(trainer, [10, 12, 25], **kwargs)
    batched = batched_fit(requests)
    alone = one_by_one(requests_for(trainer, [10, 12, 25], **kwargs))
    assert_fits_close(batched, alone)
    assert [r.steps for r in batched] == [2, 9, 7]  # a cap, a cap over 3 epochs, one epoch
    assert torch.equal(batched[0].params["0.weight"], requests[0].params["0.weight"])  # frozen


def test_flops_are_counted_as_one_by_one() -> None:
    trainer = LocalTrainer(mlp(), TrainConfig(batch_size=8))
    for r in requests_for(trainer, [9, 16]):
        batched_fit([r])
    batched_flops = trainer.meter.flops
    trainer.meter.reset()
    one_by_one(requests_for(trainer, [9, 16]))
    assert batched_flops == trainer.meter.flops > 0


def test_models_with_dropout_batch_norm_or_recurrence_are_not_batched() -> None:
    assert can_batch(mlp())
    assert not can_batch(nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Linear(8, 3)))
    assert can_batch(nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.0), nn.Linear(8, 3)))
    assert not can_batch(nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8)))
    assert not can_batch(nn.GRU(4, 4))


def test_auto_batches_dense_models_and_head_only_training_on_cpu() -> None:
    cpu = torch.device("cpu")
    cnn = nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.Conv2d(64, 64, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    cnn.append(nn.Linear(64, 10))
    everything = [n for n, _ in cnn.named_parameters()]
    assert worth_batching(mlp(), ["0.weight"], cpu)
    wide = nn.Sequential(nn.Linear(784, 200), nn.Linear(200, 200), nn.Linear(200, 10))
    assert not worth_batching(wide, [n for n, _ in wide.named_parameters()], cpu)
    assert worth_batching(wide, ["2.weight", "2.bias"], cpu)
    assert not worth_batching(cnn, everything, cpu)
    assert worth_batching(cnn, ["4.weight", "4.bias"], cpu)
    assert worth_batching(cnn, everything, torch.device("cuda"))


def test_auto_runs_a_convolutional_model_one_by_one_and_always_batches_it(
    tiny_config: dict[str, Any], built_backends: list[Any]
) -> None:
    tiny_config["model"] = {"name": "lenet"}
    tiny_config["dataset"] = {"name": "digits"}
    vectorized = ["backend.name=vectorized"]
    plural.run(tiny_config, overrides=vectorized)
    auto = built_backends[-1]
    assert isinstance(auto, VectorizedBackend)
    assert auto.stats.batched == 0 and auto.stats.alone > 0
    plural.run(tiny_config, overrides=[*vectorized, "backend.vectorize=always"])
    always = built_backends[-1]
    assert always.stats.batched > 0 and always.stats.alone == 0


def test_a_dropout_model_runs_alone_and_equals_sequential(
    tiny_config: dict[str, Any], built_backends: list[Any]
) -> None:
    tiny_config["model"] = {"name": "mlp", "hidden": [16], "dropout": 0.3}
    sequential = plural.run(tiny_config)
    results = plural.run(tiny_config, overrides=["backend.name=vectorized"])
    backend = built_backends[-1]
    assert backend.stats.batched == 0 and backend.stats.alone > 0
    assert results.metrics.drop(columns="seconds").equals(
        sequential.metrics.drop(columns="seconds")
    )


def test_an_error_in_one_client_surfaces_and_stops_the_wave(
    tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plural.algorithms.fedavg import FedAvg

    calls: list[int] = []
    update = FedAvg.client_update

    def failing(self: Any, message: Any, state: Any, client: Any, *args: Any) -> Any:
        calls.append(client.client_id)
        if len(calls) == 2:
            raise ValueError("client data is corrupt")
        return update(self, message, state, client, *args)

    monkeypatch.setattr(FedAvg, "client_update", failing)
    with pytest.raises(ValueError, match="client data is corrupt"):
        plural.run(tiny_config, overrides=["backend.name=vectorized"])


def test_vectorized_runs_are_reproducible(tiny_config: dict[str, Any]) -> None:
    overrides = ["backend.name=vectorized", "backend.max_batch_clients=2"]
    first = plural.run(tiny_config, overrides=overrides)
    second = plural.run(copy.deepcopy(tiny_config), overrides=overrides)
    assert first.metrics.drop(columns="seconds").equals(second.metrics.drop(columns="seconds"))


def test_an_unavailable_device_is_refused_before_any_work(
    tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the federation was built before the device was checked")

    monkeypatch.setattr(session, "build_federation", forbidden)
    with pytest.raises(ConfigError, match=r"backend.device: 'cuda' is not available.*cpu"):
        plural.run(tiny_config, overrides=["backend.device=cuda"])
    with pytest.raises(ConfigError, match=r"backend\.device"):
        plural.run(tiny_config, overrides=["backend.device=tpu"])


def test_auto_device_is_the_cpu_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_to_device_moves_tensors_inside_messages_and_leaves_the_rest() -> None:
    @dataclasses.dataclass(frozen=True)
    class Message:
        params: dict[str, torch.Tensor]
        extra: list[Any]
        note: str

    message = Message({"w": torch.ones(2)}, [torch.zeros(1), 3], "hi")
    moved = to_device(message, torch.device("meta"))
    assert moved.params["w"].device.type == "meta" and moved.extra[0].device.type == "meta"
    assert moved.extra[1] == 3 and moved.note == "hi"
    assert message.params["w"].device.type == "cpu"  # the original is untouched


def test_explicit_cpu_device_gives_the_default_run(tiny_config: dict[str, Any]) -> None:
    default = plural.run(tiny_config)
    on_cpu = plural.run(tiny_config, overrides=["backend.device=cpu"])
    assert default.metrics.drop(columns="seconds").equals(on_cpu.metrics.drop(columns="seconds"))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("sizes", [[3, 40, 0, 17], [1, 1], [250, 9, 64]])
def test_batched_evaluation_equals_one_by_one(loss: str, sizes: list[int]) -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3 if loss != "mse" else 1))
    trainer = LocalTrainer(model, TrainConfig(loss=loss))  # type: ignore[arg-type]
    start = state_of(model)
    own = [{k: v + 0.05 * c for k, v in start.items()} for c in range(len(sizes))]
    head_only = [{**start, "2.weight": p["2.weight"]} for p in own]  # a shared body
    data = []
    for c, n in enumerate(sizes):
        x, y = client_data(n, 10 + c)
        data.append((x, y.float() if loss == "mse" else y))
    for params in (own, head_only, [start] * len(sizes)):  # per client, personal head, global
        batched = batched_evaluate(trainer, params, data)
        for b, p, (x, y) in zip(batched, params, data, strict=True):
            alone = trainer.evaluate(p, x, y, batch_size=16)
            assert (b.count, b.correct) == (alone.count, alone.correct)
            assert b.loss_sum == pytest.approx(alone.loss_sum, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("algorithm", ["local", "fedper", "ifca", "fedavg"])
def test_engine_evaluation_is_batched_and_agrees_with_sequential(
    algorithm: str, tiny_config: dict[str, Any], built_backends: list[Any]
) -> None:
    """Per-client models, personal heads, cluster models and a global model."""
    tiny_config["algorithm"] = {"name": algorithm}
    tiny_config["eval"] = {"splits": ["val", "test"]}
    sequential = plural.run(tiny_config).metrics
    vectorized = plural.run(tiny_config, overrides=["backend.name=vectorized"]).metrics
    backend = built_backends[-1]
    assert backend.eval_stats.batched == 12 and backend.eval_stats.alone == 0  # 6 clients x 2
    evaluated = sequential["split"] != "fit"
    assert evaluated.sum() > 0
    for column in ("loss", "accuracy", "samples"):
        torch.testing.assert_close(
            torch.tensor(vectorized.loc[evaluated, column].to_numpy()),
            torch.tensor(sequential.loc[evaluated, column].to_numpy()),
            atol=1e-5,
            rtol=1e-5,
        )


def test_unbatchable_models_and_mixtures_evaluate_alone(
    tiny_config: dict[str, Any], built_backends: list[Any]
) -> None:
    tiny_config["algorithm"] = {"name": "fedem"}
    plural.run(tiny_config, overrides=["backend.name=vectorized"])
    assert built_backends[-1].eval_stats.batched == 0 and built_backends[-1].eval_stats.alone > 0
    tiny_config["algorithm"] = {"name": "local"}
    tiny_config["model"] = {"name": "mlp", "hidden": [16], "dropout": 0.3}
    plural.run(tiny_config, overrides=["backend.name=vectorized"])
    assert built_backends[-1].eval_stats.batched == 0 and built_backends[-1].eval_stats.alone > 0


class _PerPosition(nn.Module):
    """Scores at every position of a sequence: (batch, classes, positions), like a language
    model laid out for cross-entropy over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3 * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).reshape(len(x), 3, 4)


@pytest.mark.parametrize("kind", ["cross_entropy", "mse", "positions"])
def test_stacked_evaluation_of_many_models_equals_one_by_one(kind: str) -> None:
    """pFedLIA's lazy phase (:func:`plural.core.batched_eval.evaluate_stacked`): the loss
    of every model in one call, summed per model, as each model's own evaluation."""
    from plural.core.batched_eval import evaluate_stacked, stack_params

    torch.manual_seed(0)
    model: nn.Module = _PerPosition() if kind == "positions" else mlp()
    loss = "mse" if kind == "mse" else "cross_entropy"
    trainer = LocalTrainer(model, TrainConfig(loss=loss))  # type: ignore[arg-type]
    x = torch.randn(13, 5)
    if kind == "mse":
        y = torch.randn(13, 3)
    else:
        y = torch.randint(0, 3, (13, 4) if kind == "positions" else (13,))
    start = state_of(model)
    models = [{k: v + 0.1 * torch.randn_like(v) for k, v in start.items()} for _ in range(70)]
    stacked = evaluate_stacked(trainer, stack_params(models), x, y, chunk=32)
    for result, params in zip(stacked, models, strict=True):
        alone = trainer.evaluate(params, x, y)
        assert (result.count, result.correct) == (alone.count, alone.correct)
        assert result.loss_sum == pytest.approx(alone.loss_sum, rel=1e-5, abs=1e-6)


def _offsets_trainer(kind: str) -> tuple[LocalTrainer, Any]:
    torch.manual_seed(0)
    model: nn.Module = {"positions": _PerPosition, "branching": _ParameterBranch}.get(kind, mlp)()
    loss = "mse" if kind == "mse" else "cross_entropy"
    return LocalTrainer(model, TrainConfig(loss=loss)), state_of(model)  # type: ignore[arg-type]


def _targets(kind: str, n: int) -> torch.Tensor:
    if kind == "mse":
        return torch.randn(n, 3)
    return torch.randint(0, 3, (n, 4) if kind == "positions" else (n,))


class _ParameterBranch(nn.Module):
    """A forward pass that branches on a parameter's value, which ``vmap`` over stacked
    parameters refuses (data-dependent control flow)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if bool(self.linear.bias.sum() > -1e9) else -out


@pytest.mark.parametrize(
    ("kind", "share_passes"),
    [
        ("cross_entropy", True),
        ("cross_entropy", False),
        ("mse", True),
        ("positions", True),
        ("branching", True),
    ],
)
def test_lazy_models_evaluated_together_equal_each_client_alone(
    kind: str, share_passes: bool
) -> None:
    """pFedLIA's scoring in the vectorized backend
    (:func:`plural.core.batched_eval.evaluate_offsets_together`): each shared delta's model
    runs once on the data of all clients that hold it, and every client gets the loss sum and
    correct count of its own data only. Covered: deltas every client holds (run on all data),
    a client's own delta (a distinct object: run on its data only), clients of very different
    sizes (one without data), a pass size that cuts through clients, models sharing passes
    or not, and a model ``vmap`` refuses (evaluated model by model)."""
    from plural.core.batched_eval import OffsetsRequest, evaluate_offsets_together, with_offset
    from plural.core.compression import compress, decompress

    trainer, base = _offsets_trainer(kind)

    def delta(scale: float) -> Any:
        return compress({k: scale * torch.randn_like(v) for k, v in base.items()}, "none")

    shared = [delta(0.2) for _ in range(6)]
    sizes = [1, 9, 30, 0, 4, 17]
    requests = []
    for c, n in enumerate(sizes):
        x, y = torch.randn(n, 5), _targets(kind, n)
        held = [d for j, d in enumerate(shared) if j != c] + [delta(0.2)]  # the others + own
        requests.append(OffsetsRequest(trainer, base, held, x, y))
    together = evaluate_offsets_together(requests, model_rows=7, share_passes=share_passes)
    for request, results in zip(requests, together, strict=True):
        assert len(results) == len(request.deltas)
        for compressed, result in zip(request.deltas, results, strict=True):
            alone = trainer.evaluate(
                with_offset(base, decompress(compressed)), request.x, request.y
            )
            assert (result.count, result.correct) == (alone.count, alone.correct)
            assert result.loss_sum == pytest.approx(alone.loss_sum, rel=1e-5, abs=1e-6)


def test_lazy_models_with_different_bases_are_evaluated_client_by_client() -> None:
    from plural.core.batched_eval import OffsetsRequest, evaluate_offsets_together, with_offset
    from plural.core.compression import compress, decompress

    trainer, base = _offsets_trainer("cross_entropy")
    other = {k: v + 1.0 for k, v in base.items()}
    deltas = [compress({k: torch.randn_like(v) for k, v in base.items()}, "none")]
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    requests = [OffsetsRequest(trainer, b, deltas, x, y) for b in (base, other)]
    first, second = evaluate_offsets_together(requests)
    for start, (result,) in ((base, first), (other, second)):
        alone = trainer.evaluate(with_offset(start, decompress(deltas[0])), x, y)
        assert result.loss_sum == pytest.approx(alone.loss_sum, rel=1e-5)
    assert first[0].loss_sum != pytest.approx(second[0].loss_sum)


@pytest.mark.parametrize("peers_scored", [1.0, 3])
def test_pfedlia_scoring_runs_together_and_agrees_with_sequential(
    peers_scored: float, tiny_config: dict[str, Any], built_backends: list[Any]
) -> None:
    """The lazy phase's score rows in the vectorized backend are the sequential ones (up to
    float rounding), every client's scoring run together with the others'."""
    from plural.algorithms.pfedlia.messages import lia_records

    tiny_config["algorithm"] = {
        "name": "pfedlia",
        "warmup_rounds": 1,
        "peers_scored": peers_scored,
    }
    sequential = lia_records(plural.run(tiny_config).server)[-1]["scores"]
    vectorized = lia_records(plural.run(tiny_config, overrides=["backend.name=vectorized"]).server)[
        -1
    ]["scores"]
    assert built_backends[-1].stats.offsets == 6  # every client's scoring, one group
    assert torch.isfinite(torch.as_tensor(sequential)).sum() >= 6 * 3
    torch.testing.assert_close(
        torch.as_tensor(vectorized),
        torch.as_tensor(sequential),
        atol=1e-5,
        rtol=1e-5,
        equal_nan=True,
    )


def test_pfedlia_scoring_of_a_batch_norm_model_runs_client_by_client(
    tiny_config: dict[str, Any], built_backends: list[Any]
) -> None:
    """Batch statistics would mix clients' rows in one pass: such models' lazy models are
    scored client by client, as in the sequential backend."""
    from plural.algorithms.pfedlia.messages import lia_records

    tiny_config["algorithm"] = {"name": "pfedlia", "warmup_rounds": 1}
    tiny_config["model"] = {"name": "mlp", "hidden": [16], "batch_norm": True}
    sequential = lia_records(plural.run(tiny_config).server)[-1]["scores"]
    vectorized = lia_records(plural.run(tiny_config, overrides=["backend.name=vectorized"]).server)[
        -1
    ]["scores"]
    assert built_backends[-1].stats.offsets == 0
    torch.testing.assert_close(
        torch.as_tensor(vectorized), torch.as_tensor(sequential), atol=1e-5, rtol=1e-5
    )


def test_a_large_model_is_scored_one_model_at_a_time_on_a_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stacking a client's lazy models pays on a CPU only for small models (measured: 2.9x
    faster at 25k parameters, 2.3x slower at 199k): above the limit they are evaluated one
    by one, with the same results."""
    from plural.core import batched_eval
    from plural.core.compression import compress, decompress

    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 3))
    assert sum(p.numel() for p in big.parameters()) > batched_eval.STACKED_PARAMETERS_ON_CPU
    trainer, base = LocalTrainer(big, TrainConfig()), state_of(big)
    deltas = [compress({k: 0.1 * torch.randn_like(v) for k, v in base.items()}, "none")]
    x, y = torch.randn(6, 400), torch.randint(0, 3, (6,))

    def refuse(*args: Any) -> Any:
        raise AssertionError("stacked")

    monkeypatch.setattr(batched_eval, "stack_offsets", refuse)
    request = batched_eval.OffsetsRequest(trainer, base, deltas, x, y)
    (result,) = batched_eval.evaluate_offsets_alone(request)
    alone = trainer.evaluate(batched_eval.with_offset(base, decompress(deltas[0])), x, y)
    assert result == alone
