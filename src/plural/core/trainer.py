"""The one local training loop every algorithm uses.

Algorithms change what is optimised, not how: they pass extra loss terms (FedProx's
proximal term, SCAFFOLD's correction, Ditto's regulariser), a predicate saying which
parameters train (FedPer's head, an adapter), and optionally the number of epochs or steps.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from plural.config import ConfigError, setting
from plural.core.compression import CompressedDelta
from plural.core.params import Params, state_of

LossTerm = Callable[[Mapping[str, nn.Parameter]], torch.Tensor]
"""An extra loss term: receives the live named parameters being trained, returns a scalar."""

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""A minibatch loss computed from the model itself, ``objective(model, x, y)``, for methods
whose loss needs more than the model's output (representations, two branches)."""

Trainable = Callable[[str], bool]


@dataclasses.dataclass(frozen=True)
class WorkBudget:
    """How much local work a client does this round."""

    epochs: int | None = None
    steps: int | None = None
    complete: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Local optimisation settings shared by all algorithms."""

    lr: float = setting(0.05, help="local SGD learning rate", gt=0)
    momentum: float = setting(0.0, help="SGD momentum (buffer reset every round)", ge=0, lt=1)
    weight_decay: float = setting(0.0, help="L2 weight decay of local SGD", ge=0)
    batch_size: int = setting(32, help="local minibatch size", ge=1)
    local_epochs: int = setting(1, help="passes over the client's training split per round", ge=0)
    local_steps: int | None = setting(
        None,
        help="if set, exactly this many minibatch steps per round instead of local_epochs (a "
        "method's own epochs settings, e.g. fine-tuning epochs, stay epochs)",
        ge=0,
    )
    max_grad_norm: float | None = setting(None, help="clip the gradient norm to this value", gt=0)
    loss: Literal["cross_entropy", "mse"] = setting(
        "cross_entropy",
        help="'cross_entropy' for classification; 'mse' (mean squared error) for regression "
        "targets (accuracy is then not defined)",
    )
    on_nonfinite: Literal["stop", "drop"] = setting(
        "stop",
        help="when a client's training loss or parameters are not finite (divergence): "
        "'stop' the run with an error naming the round and clients, or 'drop' those clients' "
        "updates (recorded in diagnostics.jsonl as dropped_nonfinite)",
    )


def _mse(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    if output.numel() != target.numel():
        raise ConfigError(
            f"train.loss: 'mse' needs one model output per sample (regression targets); the "
            f"model gives {output.numel() // max(len(target), 1)} per sample. For class labels "
            "use train.loss: cross_entropy"
        )
    return F.mse_loss(output.reshape(target.shape), target, reduction=reduction)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"cross_entropy": F.cross_entropy, "mse": _mse}


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What one local fit returns."""

    params: Params
    mean_loss: float
    steps: int
    samples_seen: int
    best_epoch: int | None = None
    """With early stopping: the epoch (1-based; 0 = the start) whose parameters are returned."""


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Summed loss and correct predictions over a split (sums, so they add up)."""

    loss_sum: float
    correct: int
    count: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        """Fraction correct; NaN for an empty split or a regression loss (``correct < 0``)."""
        return self.correct / self.count if self.count and self.correct >= 0 else float("nan")


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A mixture of models to evaluate (FedEM, Marfoq et al. 2021): ``components[m]`` with
    mixing weight ``weights[m]`` (non-negative, summing to 1); the prediction mixes the
    components' predicted class probabilities (see :meth:`LocalTrainer.evaluate_mixture`)."""

    components: list[Params]
    weights: torch.Tensor


def mixed_prediction(
    outputs: Sequence[torch.Tensor], weights: torch.Tensor, classify: bool
) -> torch.Tensor:
    """A mixture's prediction from its components' outputs, in float64: ``sum_m w_m
    softmax(f_m(x))`` for classification, ``sum_m w_m f_m(x)`` for regression."""
    mixed = torch.zeros((), dtype=torch.float64)
    for out, weight in zip(outputs, weights.double(), strict=True):
        mixed = mixed + weight * (out.double().softmax(dim=1) if classify else out.double())
    return mixed


@dataclasses.dataclass
class WorkMeter:
    """Training work done since the last :meth:`reset`: FLOPs of the matrix products and
    convolutions of forward and backward passes (counted by torch, per sample, once for each
    set of trained parameters and objective, then multiplied by the samples seen)."""

    flops: float = 0.0
    per_sample: dict[tuple[Any, ...], float] = dataclasses.field(default_factory=dict)
    privacy_steps: int = 0
    """DP-SGD steps run (``privacy: {level: sample}``), which the privacy accountant counts."""
    released_epsilon: float = 0.0
    """Pure epsilon of what the client released through its own epsilon-DP mechanisms
    (Laplace-noised sample counts, randomized-response votes), which the privacy accountant
    composes into the client's budget."""

    def reset(self) -> None:
        self.flops = 0.0
        self.privacy_steps = 0
        self.released_epsilon = 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class FitRequest:
    """A plain local fit (no objective, sample weights or early stopping), handed to a
    :class:`FitBatcher` so that many clients' fits can run as one batched computation."""

    trainer: LocalTrainer
    params: Mapping[str, torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    rng: torch.Generator
    loss_terms: Sequence[LossTerm]
    live: tuple[str, ...]
    """The names of the parameters that train, in model order."""
    epochs: int | None
    steps: int | None
    lr: float


@dataclasses.dataclass(frozen=True, eq=False)
class OffsetsRequest:
    """One client's models ``base + delta`` (one per delta) to evaluate on its ``(x, y)``,
    handed to a :class:`FitBatcher` (:func:`plural.core.batched_eval.evaluate_offsets`) so
    that many clients' requests run together."""

    trainer: LocalTrainer
    base: Mapping[str, torch.Tensor]
    deltas: Sequence[CompressedDelta]
    x: torch.Tensor
    y: torch.Tensor


class FitBatcher(Protocol):
    def submit(self, request: FitRequest) -> FitResult:
        """Run ``request`` (now or together with other clients' requests); its result."""
        ...

    def submit_offsets(self, request: OffsetsRequest) -> list[EvalResult]:
        """Evaluate ``request``'s models (now or together with other clients' requests)."""
        ...


_BATCHER: contextvars.ContextVar[FitBatcher | None] = contextvars.ContextVar(
    "plural_fit_batcher", default=None
)


def active_batcher() -> FitBatcher | None:
    """The batcher collecting this context's work (inside :func:`batching`), or None."""
    return _BATCHER.get()


@contextlib.contextmanager
def batching(batcher: FitBatcher) -> Iterator[None]:
    """Within this block (in this context: thread or greenlet), plain
    :meth:`LocalTrainer.fit` calls go to ``batcher`` instead of running at once: how the
    vectorized backend collects the fits of a cohort without algorithms knowing."""
    token = _BATCHER.set(batcher)
    try:
        yield
    finally:
        _BATCHER.reset(token)


_PARAMETER_NAMES: weakref.WeakKeyDictionary[nn.Module, tuple[str, ...]] = (
    weakref.WeakKeyDictionary()
)


def parameter_names(model: nn.Module) -> tuple[str, ...]:
    """``model``'s parameter names in order, listed once per model (a template module's
    parameters do not change; listing them walks every submodule, about 5 us a fit for a
    small MLP, which the vectorized backend pays per client)."""
    names = _PARAMETER_NAMES.get(model)
    if names is None:
        names = _PARAMETER_NAMES[model] = tuple(n for n, _ in model.named_parameters())
    return names


def has_random_layers(model: nn.Module) -> bool:
    """Whether training ``model`` draws random numbers itself (dropout)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


@contextlib.contextmanager
def seeded_random_layers(model: nn.Module, rng: torch.Generator) -> Iterator[None]:
    """Within this block, layers that draw from torch's global generator (dropout) draw from
    a seed taken from ``rng``, so they too are derived from (seed, round, client, phase);
    the global generator is restored afterwards. Models without such layers take nothing
    from ``rng``."""
    if not has_random_layers(model):
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def epoch_batches(n: int, batch_size: int, rng: torch.Generator) -> list[torch.Tensor]:
    """One epoch's minibatches: a permutation of ``n`` samples drawn from ``rng``, cut into
    slices of ``batch_size`` (the last may be smaller). Every schedule of local steps is made
    of these: the trainer's epoch loop, the vectorized backend's batched fits and pFedMe's
    outer steps, so all draw the same batches from the same generator."""
    order = torch.randperm(n, generator=rng)
    return [order[start : start + batch_size] for start in range(0, n, batch_size)]


def minibatches(
    n: int, batch_size: int, epochs: int, step_cap: int | None, rng: torch.Generator
) -> Iterator[torch.Tensor]:
    """The schedule of a fit without early stopping: ``epochs`` of :func:`epoch_batches`,
    ending after ``step_cap`` steps (an epoch's order is drawn when the epoch starts, as the
    epoch loop draws it)."""
    done = 0
    for _ in range(epochs):
        for idx in epoch_batches(n, batch_size, rng):
            if step_cap is not None and done >= step_cap:
                return
            done += 1
            yield idx


class LocalTrainer:
    """Minibatch SGD on one client's data, starting from given parameters.

    ``model`` is a template module; parameters are loaded into it for each fit, so one
    trainer serves every client of its architecture. Nothing about a client is kept between
    calls. ``initial_params`` are the architecture's initial parameters (a model-heterogeneous
    client starts from them); ``meter`` counts the training FLOPs.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        initial_params: Params | None = None,
        meter: WorkMeter | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.loss_fn = LOSSES[config.loss]
        self.initial_params = state_of(model) if initial_params is None else initial_params
        self.meter = WorkMeter() if meter is None else meter

    def view(self, **changes: Any) -> LocalTrainer:
        """This trainer (same model, initial parameters and meter) with some of its settings
        changed, e.g. ``view(max_grad_norm=5.0)``."""
        config = dataclasses.replace(self.config, **changes)
        return LocalTrainer(self.model, config, self.initial_params, self.meter)

    def with_meter(self, meter: WorkMeter) -> LocalTrainer:
        """This trainer with its own work meter (one per client when clients interleave)."""
        return LocalTrainer(self.model, self.config, self.initial_params, meter)

    def complete(self, params: Mapping[str, torch.Tensor]) -> Params:
        """``params`` over this architecture's initial parameters (for partial models)."""
        return {**self.initial_params, **params}

    def fit(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        rng: torch.Generator,
        loss_terms: Sequence[LossTerm] = (),
        trainable: Trainable | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        validation: tuple[torch.Tensor, torch.Tensor] | None = None,
        patience: int | None = None,
        sample_weights: torch.Tensor | None = None,
        objective: Objective | None = None,
    ) -> FitResult:
        """Train from ``params`` on ``(x, y)``; returns new parameters (inputs untouched).

        ``sample_weights`` (one per row of ``x``) make each minibatch loss the weighted mean
        ``mean_i(w_i * loss_i)`` (FedEM's M-step); None keeps the plain mean loss.
        ``objective`` replaces the minibatch loss altogether (not with ``sample_weights``).

        With ``validation`` data and a ``patience``, the loss on it is checked before training
        and after every epoch; training stops once it has not improved for ``patience``
        epochs, and the parameters of the best epoch are returned (early stopping).
        """
        cfg = self.config
        batcher = _BATCHER.get()
        early_stopping = validation is not None and patience is not None
        plain = objective is None and sample_weights is None and not early_stopping
        if batcher is not None and plain:
            live_names = tuple(
                n for n in parameter_names(self.model) if trainable is None or trainable(n)
            )
            if live_names:
                return batcher.submit(
                    FitRequest(
                        self,
                        params,
                        x,
                        y,
                        rng,
                        tuple(loss_terms),
                        live_names,
                        epochs,
                        steps,
                        cfg.lr if lr is None else lr,
                    )
                )
        self.model.load_state_dict(params)
        named = dict(self.model.named_parameters())
        live = {n: p for n, p in named.items() if trainable is None or trainable(n)}
        if not live:  # nothing to train: the start is the result
            return FitResult(state_of(self.model), 0.0, 0, 0)
        frozen = [p for n, p in named.items() if n not in live]
        for p in frozen:
            p.requires_grad_(False)
        optimizer = torch.optim.SGD(
            list(live.values()),
            lr=cfg.lr if lr is None else lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        if objective is not None and sample_weights is not None:
            raise ValueError("fit: give an objective or sample weights, not both")
        stopper = None
        if validation is not None and patience is not None and len(validation[1]) > 0:
            stopper = _EarlyStopping(self, validation, patience)
        try:
            with seeded_random_layers(self.model, rng):
                total_loss, done, seen = self._run_batches(
                    x,
                    y,
                    rng,
                    optimizer,
                    live,
                    loss_terms,
                    *self.budget(len(y), epochs, steps),
                    stopper,
                    sample_weights,
                    objective,
                )
                if seen:
                    self.meter.flops += seen * self._flops_per_sample(x, y, live, objective)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        if stopper is not None:
            return FitResult(
                stopper.best, total_loss / max(done, 1), done, seen, stopper.best_epoch
            )
        return FitResult(state_of(self.model), total_loss / max(done, 1), done, seen)

    def budget(self, n: int, epochs: int | None, steps: int | None) -> tuple[int, int | None]:
        """(epochs to iterate, step cap or None): ``steps`` if given; else exactly ``epochs``
        if given (a method's own epochs setting, such as fine-tuning or head epochs, means
        epochs even when ``train.local_steps`` is set); else the trainer's ``local_steps``,
        or its ``local_epochs``."""
        if steps is None and epochs is None:
            steps = self.config.local_steps
        epochs = self.config.local_epochs if epochs is None else epochs
        if steps is not None:
            per_epoch = -(-n // self.config.batch_size) if n else 1
            return -(-steps // per_epoch), steps
        return epochs, None

    def _run_batches(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rng: torch.Generator,
        optimizer: torch.optim.Optimizer,
        live: Mapping[str, nn.Parameter],
        loss_terms: Sequence[LossTerm],
        epochs: int,
        step_cap: int | None,
        stopper: _EarlyStopping | None = None,
        sample_weights: torch.Tensor | None = None,
        objective: Objective | None = None,
    ) -> tuple[float, int, int]:
        model, batch, clip = self.model, self.config.batch_size, self.config.max_grad_norm
        model.train()
        n = len(y)
        total_loss, done, seen = torch.zeros((), device=x.device), 0, 0
        if n == 0 or not live:
            return 0.0, done, seen
        own_loop = getattr(self.config, "epoch_loop", None)  # DP-SGD's settings bring theirs
        if own_loop is not None:
            if stopper is not None or sample_weights is not None or objective is not None:
                raise ValueError("DP-SGD runs plain fits only (no objective, weights, stopping)")
            return own_loop(self, x, y, rng, optimizer, live, loss_terms, epochs, step_cap)
        for epoch in range(1, epochs + 1):
            if stopper is not None and stopper.should_stop():
                break
            for idx in epoch_batches(n, batch, rng):
                if step_cap is not None and done >= step_cap:
                    return float(total_loss), done, seen
                if objective is not None:
                    loss = objective(model, x[idx], y[idx])
                else:
                    loss = self._batch_loss(x, y, idx, sample_weights)
                for term in loss_terms:
                    loss = loss + term(live)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(list(live.values()), clip)
                optimizer.step()
                total_loss += loss.detach()
                done += 1
                seen += len(idx)
            if stopper is not None:
                stopper.check(epoch)
        return float(total_loss), done, seen

    def _batch_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        sample_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mean loss of a minibatch, or ``mean_i(w_i * loss_i)`` with sample weights."""
        output = self.model(x[idx])
        if sample_weights is None:
            return self.loss_fn(output, y[idx])
        losses = self.loss_fn(output, y[idx], reduction="none")
        weights = sample_weights[idx].to(losses.dtype)
        return (weights.reshape(len(idx), *([1] * (losses.dim() - 1))) * losses).mean()

    def _flops_per_sample(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        live: Mapping[str, nn.Parameter],
        objective: Objective | None,
    ) -> float:
        """Training FLOPs per sample with ``live`` trained, counted once per key on a copy of
        the model (so neither its buffers nor any random state move)."""
        key = (
            type(self.model).__qualname__,
            tuple((name, tuple(p.shape)) for name, p in live.items()),
            tuple(x.shape[1:]),
            None if objective is None else getattr(objective, "__qualname__", type(objective)),
        )
        if key not in self.meter.per_sample:
            self.meter.per_sample[key] = count_training_flops(
                self.model, self.loss_fn, x[:2], y[:2], set(live), objective
            ) / len(y[:2])
        return self.meter.per_sample[key]

    def outputs(
        self, params: Mapping[str, torch.Tensor], x: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """Evaluation-mode outputs of ``params`` on ``x``, batch by batch (no gradients)."""
        self.model.load_state_dict(params)
        self.model.eval()
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            yield rows, self.model(x[rows])

    @torch.no_grad()
    def sample_losses(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 1024,
    ) -> torch.Tensor:
        """The loss of every sample of ``(x, y)`` at ``params`` (evaluation mode), shape (n,)."""
        parts = []
        for rows, output in self.outputs(params, x, batch_size):
            losses = self.loss_fn(output, y[rows], reduction="none")
            parts.append(losses.reshape(len(losses), -1).mean(dim=1))
        return torch.cat(parts) if parts else torch.zeros(0)

    @torch.no_grad()
    def evaluate_mixture(
        self, mixture: Mixture, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
    ) -> EvalResult:
        """Loss and accuracy of a mixture of models (Marfoq et al. 2021, FedEM).

        Classification: the prediction is ``p(y|x) = sum_m w_m softmax(f_m(x))`` and the loss
        ``-log p(y_true|x)``. Regression (``mse``): the prediction is ``sum_m w_m f_m(x)``.
        """
        classify = self.config.loss == "cross_entropy"
        if not mixture.components or len(y) == 0:
            return EvalResult(0.0, 0 if classify else -1, len(y))
        outputs = []
        for component in mixture.components:
            outputs.append(torch.cat([out for _, out in self.outputs(component, x, batch_size)]))
        mixed = mixed_prediction(outputs, mixture.weights, classify)
        if not classify:
            return EvalResult(float(self.loss_fn(mixed, y.double(), reduction="sum")), -1, len(y))
        chosen = mixed.gather(1, y.reshape(-1, 1)).squeeze(1)
        loss_sum = float(-chosen.clamp_min(torch.finfo(torch.float64).tiny).log().sum())
        return EvalResult(loss_sum, int((mixed.argmax(dim=1) == y).sum()), len(y))

    @torch.no_grad()
    def evaluate(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 1024,
    ) -> EvalResult:
        """Cross-entropy loss sum and correct count of ``params`` on ``(x, y)``."""
        loss_sum, correct = 0.0, 0
        classify = self.config.loss == "cross_entropy"
        for rows, output in self.outputs(params, x, batch_size):
            target = y[rows]
            loss_sum += float(self.loss_fn(output, target, reduction="sum"))
            if classify:
                correct += int((output.argmax(dim=1) == target).sum())
        return EvalResult(loss_sum, correct if classify else -1, len(y))

    def gradient(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 1024,
    ) -> dict[str, torch.Tensor]:
        """Full-batch gradient of the mean loss at ``params`` (evaluation mode, no dropout)."""
        self.model.load_state_dict(params)
        self.model.eval()
        named = dict(self.model.named_parameters())
        total = {n: torch.zeros_like(p) for n, p in named.items()}
        for start in range(0, len(y), batch_size):
            target = y[start : start + batch_size]
            loss = self.loss_fn(self.model(x[start : start + batch_size]), target, reduction="sum")
            grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
            for name, grad in zip(named, grads, strict=True):
                if grad is not None:
                    total[name] += grad
        return {n: g / max(len(y), 1) for n, g in total.items()}


def count_training_flops(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    trained: set[str],
    objective: Objective | None = None,
) -> float:
    """FLOPs of one forward and backward pass on ``(x, y)`` with only ``trained`` parameters
    requiring gradients: torch's count of matrix products and convolutions (elementwise
    operations are not counted), run on a copy of ``model`` with the random state kept."""
    replica = copy.deepcopy(model)
    replica.train()
    for name, parameter in replica.named_parameters():
        parameter.requires_grad_(name in trained)
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        loss = objective(replica, x, y) if objective is not None else loss_fn(replica(x), y)
        if loss.requires_grad:
            loss.backward()
    return float(counter.get_total_flops())


class _EarlyStopping:
    """Tracks the validation loss of the model being trained and keeps its best parameters."""

    def __init__(
        self, trainer: LocalTrainer, validation: tuple[torch.Tensor, torch.Tensor], patience: int
    ) -> None:
        self.trainer, self.validation, self.patience = trainer, validation, patience
        self.best_loss = float("inf")
        self.best: Params = {}
        self.best_epoch = 0
        self.waited = 0
        self.check(0)

    @torch.no_grad()
    def _loss(self) -> float:
        model = self.trainer.model
        model.eval()
        x, y = self.validation
        loss = float(self.trainer.loss_fn(model(x), y))
        model.train()
        return loss

    def check(self, epoch: int) -> None:
        loss = self._loss()
        if loss < self.best_loss:
            self.best_loss, self.best, self.best_epoch, self.waited = (
                loss,
                state_of(self.trainer.model),
                epoch,
                0,
            )
        else:
            self.waited += 1

    def should_stop(self) -> bool:
        return self.waited >= self.patience


def proximal_term(anchor: Mapping[str, torch.Tensor], mu: float) -> LossTerm:
    """``mu/2 * sum ||w - anchor||^2`` over the parameters being trained."""

    def term(live: Mapping[str, nn.Parameter]) -> torch.Tensor:
        return 0.5 * mu * sum((p - anchor[n]).pow(2).sum() for n, p in live.items())

    return term
