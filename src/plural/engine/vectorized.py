"""The vectorized backend: a cohort's local trainings run as one batched computation.

Algorithms stay as they are. Each client's phase runs in its own greenlet (a coroutine with
its own stack), one at a time, so the phase code executes in a fixed order. When a phase
asks its trainer for a plain local fit, the fit is not run; it is handed over
(:func:`plural.core.trainer.batching`) and the greenlet waits. Once every client of the wave
is waiting or done, the collected fits are grouped by what makes them batchable (the same
architecture, trained parameters, settings and input shape), and each group is trained at
once: the clients' parameters are stacked, the forward pass is ``torch.func.vmap`` over
``functional_call``, and one backward pass gives every client its own gradient (the clients'
losses are independent, so the gradient of their sum with respect to client i's parameters
is client i's gradient).

Uneven clients are padded and masked: step t of every client runs together; a client's last
minibatch of an epoch may be smaller, and a client with fewer steps stops updating when it
runs out. Each client's minibatch order comes from its own generator, drawn exactly as the
sequential trainer draws it, so the results are those of the sequential backend up to
floating-point rounding (summation order). Extra loss terms (FedProx, SCAFFOLD, Ditto) are
evaluated per client on its slice of the stacked parameters. SGD momentum, weight decay and
gradient clipping are applied per client as ``torch.optim.SGD`` and ``clip_grad_norm_`` do.

Evaluation is batched the same way (:func:`batched_evaluate`): the clients' evaluated models
stacked (a model every client shares, such as the global one, passed once), their splits
padded and masked, one forward pass per group; the loss sums and correct counts equal
one-by-one evaluation up to float rounding. pFedLIA's scoring, where every client evaluates
models ``theta0 + delta`` that the clients share, is handed over like a fit and run by
:func:`plural.core.batched_eval.evaluate_offsets_together`: each lazy model evaluated once on
the validation data of all the clients that hold it.

Fits that cannot be batched (a custom objective, sample weights, early stopping, models with
dropout, batch normalisation or recurrent layers, whose randomness or running statistics a
batched pass would change) run one by one, exactly as in the sequential backend. With
``vectorize: auto`` only groups predicted to gain are batched: measured on a 2-core CPU,
batching pays for dense models and for head- or adapter-only training, not for full
convolutional training; on a GPU it always pays.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from typing import Any, Literal

import greenlet
import torch
from torch import nn
from torch.func import functional_call, vmap

from plural.core.algorithm import full_params
from plural.core.batched_eval import (
    OffsetsRequest,
    evaluate_offsets_alone,
    evaluate_offsets_together,
)
from plural.core.params import Params
from plural.core.trainer import (
    EvalResult,
    FitRequest,
    FitResult,
    LocalTrainer,
    Mixture,
    WorkMeter,
    batching,
    has_random_layers,
    minibatches,
    parameter_names,
)
from plural.engine.backends import (
    ClientWork,
    EvalWork,
    Item,
    PhaseCost,
    Result,
    SequentialBackend,
    WorkerEnv,
    WorkerSetup,
    evaluate_client,
    run_client_phase,
)
from plural.privacy.dpsgd import (
    batched_clipped_sums,
    batched_per_example_gradients,
    check_private_model,
    is_private,
    private_steps,
    step_draws,
)

VectorizeMode = Literal["auto", "always"]
HEAD_ONLY_FRACTION = 0.1
"""With ``auto`` on a CPU, a convolutional or recurrent model is batched only when at most
this fraction of its parameters trains (head- or adapter-only training)."""

SMALL_MODEL = 100_000
"""With ``auto`` on a CPU, a dense model is batched when at most this many parameters train."""

_UNBATCHABLE = (nn.modules.batchnorm._BatchNorm, nn.RNNBase)
_HEAVY_ON_CPU = (nn.modules.conv._ConvNd, nn.RNNBase, nn.MultiheadAttention)


def can_batch(model: nn.Module) -> bool:
    """Whether a batched pass over ``model`` computes what one-by-one passes compute: no
    running statistics, no recurrent kernels, no dropout that draws random numbers."""
    for module in model.modules():
        if isinstance(module, _UNBATCHABLE):
            return False
    return not has_random_layers(model)


def worth_batching(model: nn.Module, live: Sequence[str], device: torch.device) -> bool:
    """``vectorize: auto``'s rule: always on accelerators. On a CPU (benchmarks/vectorized.py,
    2 cores), batching pays where per-step overhead dominates: dense models with at most
    ``SMALL_MODEL`` trained parameters per client (2.6-2.8x for logistic regression and a
    32-unit MLP, 1.3x at 51k parameters, 0.75x at 200k), and head- or adapter-only training
    of convolutional, recurrent or attention models (at most ``HEAD_ONLY_FRACTION`` of the
    parameters train); full training of those runs one by one (0.6x for LeNet)."""
    if device.type != "cpu":
        return True
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    trained = sum(sizes[name] for name in live)
    if any(isinstance(m, _HEAVY_ON_CPU) for m in model.modules()):
        return trained <= HEAD_ONLY_FRACTION * sum(sizes.values())
    return trained <= SMALL_MODEL


# --------------------------------------------------------------------------- batched SGD


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """Every client's minibatches of one group, padded: ``index[t, c]`` are the rows (into
    the concatenated inputs) of client c's step t, ``mask[t, c]`` marks the real ones."""

    index: torch.Tensor  # (steps, clients, batch) long
    mask: torch.Tensor  # (steps, clients, batch) float
    steps: list[int]
    seen: list[int]


def _client_batches(request: FitRequest) -> list[torch.Tensor]:
    """The row indices of each of the client's minibatches, drawn from its generator in the
    order and number :meth:`LocalTrainer._run_batches` draws them."""
    n, size = len(request.y), request.trainer.config.batch_size
    if n == 0:
        return []
    epochs, cap = request.trainer.budget(n, request.epochs, request.steps)
    return list(minibatches(n, size, epochs, cap, request.rng))


def _schedule(requests: Sequence[FitRequest], device: torch.device) -> _Schedule:
    """Every client's minibatches placed in one padded index in a few tensor operations (one
    assignment per minibatch cost about 2 ms a round at 100 clients)."""
    size, clients = requests[0].trainer.config.batch_size, len(requests)
    per_client = [_client_batches(r) for r in requests]
    steps = max((len(b) for b in per_client), default=0)
    sizes = [r.y.shape[0] for r in requests]
    offsets = [sum(sizes[:c]) for c in range(clients)]
    index = torch.full((steps, clients, size), sum(sizes), dtype=torch.long)
    mask = torch.zeros((steps, clients, size))
    batches = [(t, c, rows) for c, b in enumerate(per_client) for t, rows in enumerate(b)]
    if batches:
        lengths = torch.tensor([rows.shape[0] for _, _, rows in batches])
        starts = torch.tensor([(t * clients + c) * size for t, c, _ in batches])
        shifts = torch.tensor([offsets[c] for _, c, _ in batches])
        first = torch.cumsum(lengths, 0) - lengths  # each minibatch's first entry, flattened
        within = torch.arange(int(lengths.sum())) - first.repeat_interleave(lengths)
        slots = starts.repeat_interleave(lengths) + within
        rows = torch.cat([rows for _, _, rows in batches]) + shifts.repeat_interleave(lengths)
        index.view(-1)[slots] = rows
        mask.view(-1)[slots] = 1.0
    return _Schedule(
        index.to(device),
        mask.to(device),
        [len(b) for b in per_client],
        [sum(rows.shape[0] for rows in b) for b in per_client],
    )


def _stack_params(
    clients: Sequence[Mapping[str, torch.Tensor]],
    template: dict[str, torch.Tensor],
    device: torch.device,
    live: Collection[str] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(batched, shared): entries that train or differ between clients stacked along a new
    first dimension; frozen entries every client holds as the same tensor passed once."""
    live = set(live)
    batched, shared = {}, {}
    for name, like in template.items():
        tensors = [params[name] for params in clients]
        if name not in live and all(t is tensors[0] for t in tensors):
            shared[name] = tensors[0].to(device=device, dtype=like.dtype)
        else:
            batched[name] = torch.stack([t.to(device=device, dtype=like.dtype) for t in tensors])
    return batched, shared


def _per_sample_loss(loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        losses = loss_fn(output, target, reduction="none")
        return losses.reshape(len(losses), -1).mean(dim=1)

    return loss


def batched_fit(requests: Sequence[FitRequest]) -> list[FitResult]:
    """Train every request's client at once (see the module docstring); the results equal
    the one-by-one fits up to floating-point rounding."""
    first = requests[0]
    trainer, cfg = first.trainer, first.trainer.config
    model, device = trainer.model, first.x.device
    live = list(first.live)
    batched, shared = _stack_params(
        [r.params for r in requests], dict(model.state_dict()), device, live
    )
    for name in live:
        batched[name].requires_grad_(True)
    schedule = _schedule(requests, device)
    inputs = torch.cat([*(r.x for r in requests), torch.zeros_like(first.x[:1])])
    targets = torch.cat([*(r.y for r in requests), torch.zeros_like(first.y[:1])])
    sample_loss = _per_sample_loss(trainer.loss_fn)

    def client_loss(
        params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        output = functional_call(model, (params, shared), (x,))
        return (sample_loss(output, y) * mask).sum() / mask.sum().clamp_min(1.0)

    forward = vmap(client_loss)
    clients = len(requests)
    lengths = torch.tensor(schedule.steps, device=device)
    totals = torch.zeros(clients, device=device)
    buffers: dict[str, torch.Tensor] = {}
    with_terms = any(r.loss_terms for r in requests)
    model.train()
    for t in range(len(schedule.index)):
        active = lengths > t
        losses = _step_losses(forward, batched, inputs, targets, schedule, t, active)
        if with_terms:
            losses = losses + _loss_terms(requests, batched, live, active)
        grads = torch.autograd.grad(losses.sum(), [batched[n] for n in live])
        totals += losses.detach()
        with torch.no_grad():
            _sgd_step(batched, live, list(grads), buffers, active, cfg, first.lr, t == 0)
    return _results(requests, batched, shared, totals.tolist(), schedule.steps, schedule.seen)


def _step_losses(
    forward: Callable[..., torch.Tensor],
    batched: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    schedule: _Schedule,
    t: int,
    active: torch.Tensor,
) -> torch.Tensor:
    """Every client's minibatch loss at step t (0 for clients that have finished); once some
    have finished, only the others are computed."""
    rows, mask = schedule.index[t], schedule.mask[t]
    if bool(active.all()):
        return forward(batched, inputs[rows], targets[rows], mask)
    ids = active.nonzero().squeeze(1)
    params = {name: tensor[ids] for name, tensor in batched.items()}
    rows = rows[ids]
    losses = forward(params, inputs[rows], targets[rows], mask[ids])
    return torch.zeros(len(active), dtype=losses.dtype, device=losses.device).index_put(
        (ids,), losses
    )


def _loss_terms(
    requests: Sequence[FitRequest],
    batched: dict[str, torch.Tensor],
    live: list[str],
    active: torch.Tensor,
) -> torch.Tensor:
    """Each active client's extra loss terms on its own slice of the stacked parameters."""
    values = []
    for c, request in enumerate(requests):
        value = active.new_zeros((), dtype=torch.float32)
        if request.loss_terms and bool(active[c]):
            own = {name: batched[name][c] for name in live}
            value = sum((term(own) for term in request.loss_terms), value)
        values.append(value)
    return torch.stack(values)


def _sgd_step(
    batched: dict[str, torch.Tensor],
    live: list[str],
    grads: list[torch.Tensor],
    buffers: dict[str, torch.Tensor],
    active: torch.Tensor,
    cfg: Any,
    lr: float,
    first_step: bool,
) -> None:
    """One step of ``torch.optim.SGD`` (weight decay, momentum without dampening) per
    client, after ``clip_grad_norm_`` per client; clients that are not active stay put."""
    if cfg.max_grad_norm is not None:
        norms = torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
        coef = (cfg.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        grads = [g * coef.view(-1, *([1] * (g.dim() - 1))) for g in grads]
    for name, grad in zip(live, grads, strict=True):
        param = batched[name]
        if cfg.weight_decay:
            grad = grad + cfg.weight_decay * param
        if cfg.momentum:
            if first_step:
                buffers[name] = grad.clone()
            else:
                buffers[name].mul_(cfg.momentum).add_(grad)
            grad = buffers[name]
        if bool(active.all()):
            param.add_(grad, alpha=-lr)
        else:
            param.addcmul_(
                grad, active.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1))), value=-lr
            )


def _results(
    requests: Sequence[FitRequest],
    batched: dict[str, torch.Tensor],
    shared: dict[str, torch.Tensor],
    totals: Sequence[float],
    steps: Sequence[int],
    seen: Sequence[int],
) -> list[FitResult]:
    """Every client's trained parameters (its own copy) and fit statistics; each client's
    meter counts its training FLOPs, the per-sample count taken once for the group (one
    model, trained entries and input shape)."""
    first = requests[0]
    per_sample = 0.0
    if any(seen):
        named = dict(first.trainer.model.named_parameters())
        live = {name: named[name] for name in first.live}
        sample = next(r for r, n in zip(requests, seen, strict=True) if n)
        per_sample = first.trainer._flops_per_sample(sample.x, sample.y, live, None)
    results = []
    for c, request in enumerate(requests):
        params = {
            name: (batched[name][c] if name in batched else shared[name]).detach().clone()
            for name in request.params
        }
        request.trainer.meter.flops += seen[c] * per_sample
        results.append(FitResult(params, float(totals[c]) / max(steps[c], 1), steps[c], seen[c]))
    return results


# --------------------------------------------------------------------------- batched DP-SGD


def batched_private_fit(requests: Sequence[FitRequest]) -> list[FitResult]:
    """DP-SGD (:mod:`plural.privacy.dpsgd`, Abadi et al. 2016) of every request's client at
    once. Each step, every client still training draws its Poisson sample and its noise from
    its own generator (:func:`~plural.privacy.dpsgd.step_draws`, as one-by-one DP-SGD draws
    them); per-example gradients come from a ``vmap`` over clients of a ``vmap`` over
    examples, are clipped per example and summed per client, noised and divided by the
    expected batch, and take the SGD step of :func:`batched_fit` (without gradient-norm
    clipping, which DP-SGD replaces). Equal to the one-by-one fits up to rounding."""
    first = requests[0]
    trainer, cfg = first.trainer, first.trainer.config
    model, device = trainer.model, first.x.device
    check_private_model(model)
    live = list(first.live)
    batched, shared = _stack_params(
        [r.params for r in requests], dict(model.state_dict()), device, live
    )
    if any(r.loss_terms for r in requests):
        for name in live:
            batched[name].requires_grad_(True)
    sizes = [len(r.y) for r in requests]
    steps = [
        private_steps(n, cfg.batch_size, *trainer.budget(n, r.epochs, r.steps))
        for n, r in zip(sizes, requests, strict=True)
    ]
    run = _PrivateWave(requests, batched, shared, live, sizes)
    sgd = dataclasses.replace(cfg, max_grad_norm=None)
    buffers: dict[str, torch.Tensor] = {}
    model.train()
    for t in range(max(steps, default=0)):
        active = torch.tensor([s > t for s in steps], device=device)
        grads = run.step(active)
        with torch.no_grad():
            _sgd_step(batched, live, grads, buffers, active, sgd, first.lr, t == 0)
    for request, count in zip(requests, steps, strict=True):
        request.trainer.meter.privacy_steps += count
    return _results(requests, batched, shared, run.totals, steps, run.seen)


class _PrivateWave:
    """The per-step work of :func:`batched_private_fit`: draws, clipped sums, noised means."""

    def __init__(
        self,
        requests: Sequence[FitRequest],
        batched: dict[str, torch.Tensor],
        shared: dict[str, torch.Tensor],
        live: list[str],
        sizes: list[int],
    ) -> None:
        first = requests[0]
        self.requests, self.batched, self.shared, self.live = requests, batched, shared, live
        self.trainer, self.cfg = first.trainer, first.trainer.config
        self.sizes = sizes
        self.rates = [min(1.0, self.cfg.batch_size / n) if n else 0.0 for n in sizes]
        self.expected = torch.tensor([n * r for n, r in zip(sizes, self.rates, strict=True)])
        self.offsets = [0, *itertools.accumulate(sizes)][:-1]
        self.inputs = torch.cat([*(r.x for r in requests), torch.zeros_like(first.x[:1])])
        self.targets = torch.cat([*(r.y for r in requests), torch.zeros_like(first.y[:1])])
        self.totals = [0.0] * len(requests)
        self.seen = [0] * len(requests)
        self.std = self.cfg.dp_noise_multiplier * self.cfg.dp_clip

    def step(self, active: torch.Tensor) -> list[torch.Tensor]:
        """Every client's gradient for this step (zero for clients that have finished)."""
        ids = active.nonzero().squeeze(1)
        rows = ids.tolist()
        shapes = {name: self.batched[name][0] for name in self.live}
        draws = [
            step_draws(self.requests[c].rng, self.sizes[c], self.rates[c], shapes, self.std)
            for c in rows
        ]
        summed = self._clipped_sums(ids, [chosen for chosen, _ in draws])
        expected = self.expected[ids.cpu()].to(ids.device)
        grads = []
        for name in self.live:
            noise = torch.stack([noise[name] for _, noise in draws])
            private = (summed[name] + noise) / expected.to(noise.dtype).reshape(
                -1, *([1] * (noise.dim() - 1))
            )
            full = torch.zeros_like(self.batched[name]).index_put((ids,), private)
            grads.append(full)
        return self._with_loss_terms(grads, active)

    def _clipped_sums(
        self, ids: torch.Tensor, chosen: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Each active client's sum of clipped per-example gradients over its sampled
        examples (padded and masked to the largest sample); adds each client's mean loss
        over its sampled batch (0 for an empty one) to its total."""
        rows = ids.tolist()
        width = max((len(c) for c in chosen), default=0)
        live = {name: self.batched[name][ids] for name in self.live}
        if width == 0:
            return {name: torch.zeros_like(t) for name, t in live.items()}
        index = torch.full((len(rows), width), len(self.targets) - 1, dtype=torch.long)
        mask = torch.zeros((len(rows), width))
        for row, (c, sample) in enumerate(zip(rows, chosen, strict=True)):
            index[row, : len(sample)] = sample.cpu() + self.offsets[c]
            mask[row, : len(sample)] = 1.0
            self.seen[c] += len(sample)
        index, mask = index.to(ids.device), mask.to(ids.device)
        others = {n: t[ids] for n, t in self.batched.items() if n not in self.live}
        x, y = self.inputs[index], self.targets[index]
        model, loss_fn = self.trainer.model, self.trainer.loss_fn
        grads, losses = batched_per_example_gradients(
            model, loss_fn, live, others, self.shared, x, y
        )
        batch_losses = (losses.detach() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        for row, c in enumerate(rows):
            self.totals[c] += float(batch_losses[row])
        return batched_clipped_sums(grads, self.cfg.dp_clip, mask)

    def _with_loss_terms(
        self, grads: list[torch.Tensor], active: torch.Tensor
    ) -> list[torch.Tensor]:
        """Add the gradient of each client's extra loss terms (FedProx, Ditto) to its own."""
        if not any(r.loss_terms for r in self.requests):
            return grads
        values = _loss_terms(self.requests, self.batched, self.live, active)
        terms = torch.autograd.grad(values.sum(), [self.batched[n] for n in self.live])
        return [term + grad for term, grad in zip(terms, grads, strict=True)]


# --------------------------------------------------------------------------- batched evaluation

EVAL_ROWS = 65_536
"""Input rows (summed over the clients of a group) of one batched evaluation pass."""


@torch.no_grad()
def batched_evaluate(
    trainer: LocalTrainer,
    params: Sequence[Mapping[str, torch.Tensor]],
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> list[EvalResult]:
    """:meth:`LocalTrainer.evaluate` of ``params[c]`` on ``data[c]`` for every client c at
    once: the clients' parameters stacked (entries every client holds as the same tensor,
    e.g. a global model, passed once), their inputs padded to the longest client and masked,
    the forward pass ``vmap`` over ``functional_call``. Equal to one-by-one evaluation up to
    float rounding (summation order)."""
    model = trainer.model
    x0, y0 = data[0]
    device = x0.device
    batched, shared = _stack_params(params, dict(model.state_dict()), device)
    counts = [len(y) for _, y in data]
    longest, clients = max(counts), len(data)
    classify = trainer.config.loss == "cross_entropy"
    loss_sums = torch.zeros(clients, dtype=torch.float64, device=device)
    correct = torch.zeros(clients, dtype=torch.long, device=device)
    inputs = torch.cat([*(x for x, _ in data), torch.zeros_like(x0[:1])])
    targets = torch.cat([*(y for _, y in data), torch.zeros_like(y0[:1])])
    index = torch.full((clients, longest), len(targets) - 1, dtype=torch.long)
    offset = 0
    for c, n in enumerate(counts):
        index[c, :n] = torch.arange(offset, offset + n)
        offset += n
    index = index.to(device)
    mask = torch.arange(longest, device=device) < torch.tensor(counts, device=device)[:, None]

    def forward(entries: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (entries, shared), (x,))

    outputs = vmap(forward)
    model.eval()
    width = max(1, min(longest, EVAL_ROWS // clients))
    for start in range(0, longest, width):
        rows, real = index[:, start : start + width], mask[:, start : start + width]
        output = outputs(batched, inputs[rows])  # (clients, width, ...)
        flat, target = output.flatten(0, 1), targets[rows].flatten(0, 1)
        losses = trainer.loss_fn(flat, target, reduction="none").reshape(len(target), -1)
        per_row = losses.sum(dim=1).view(clients, -1) * real
        loss_sums += per_row.sum(dim=1).double()
        if classify:
            hits = (flat.argmax(dim=-1) == target).view(clients, -1) & real
            correct += hits.sum(dim=1)
    return [
        EvalResult(float(loss_sums[c]), int(correct[c]) if classify else -1, counts[c])
        for c in range(clients)
    ]


def _evaluate_group(
    env: WorkerEnv, trainer: LocalTrainer, items: Sequence[EvalWork], params: Sequence[Params]
) -> list[dict[str, EvalResult]]:
    """Every item's splits, each split evaluated for the whole group at once."""
    clients = [env.federation.client(w.client_id, w.round) for w in items]
    results: list[dict[str, EvalResult]] = [{} for _ in items]
    for split in items[0].splits:
        data = [(s.x, s.y) for s in (client.split(split) for client in clients)]
        if not any(len(y) for _, y in data):
            scored = [trainer.evaluate(p, x, y) for p, (x, y) in zip(params, data, strict=True)]
        else:
            scored = batched_evaluate(trainer, params, data)
        for out, result in zip(results, scored, strict=True):
            out[split] = result
    return results


# --------------------------------------------------------------------------- interleaving


@dataclasses.dataclass
class FitStats:
    """How the vectorized backend ran the local fits it was given."""

    batched: int = 0
    """Fits trained as part of a batch."""
    batches: int = 0
    """Batched computations run."""
    alone: int = 0
    """Fits run one by one (not batchable, or not worth it under ``vectorize: auto``)."""
    offsets: int = 0
    """Clients' evaluations of models ``base + delta`` (pFedLIA's lazy models) handed to
    :func:`plural.core.batched_eval.evaluate_offsets_together` (which evaluates requests
    with different bases client by client)."""


@dataclasses.dataclass(eq=False)
class _Client:
    """One client's phase, running in its own greenlet."""

    greenlet: greenlet.greenlet
    request: FitRequest | OffsetsRequest | None = None
    answer: FitResult | list[EvalResult] | None = None
    result: Any = None
    done: bool = False
    own_seconds: float = 0.0
    shared_seconds: float = 0.0

    def resume(self) -> None:
        """Run the phase until it submits a fit or finishes (its errors propagate)."""
        started = time.perf_counter()
        answer, self.answer = self.answer, None
        kind, value = self.greenlet.switch(answer)
        self.own_seconds += time.perf_counter() - started
        if kind == "submit":
            self.request = value
        else:
            self.result, self.done = value, True


class _Interleaver:
    """Runs a wave of client phases, each in a greenlet, batching their plain fits (see the
    module docstring). Switching between greenlets costs about a microsecond, so the
    machinery adds little even when each client does one minibatch step."""

    def __init__(self, mode: VectorizeMode, refused: set[Hashable], stats: FitStats) -> None:
        self.mode = mode
        self.refused = refused  # group keys whose batched pass failed once: run one by one
        self.stats = stats
        self._parent = greenlet.getcurrent()

    def submit(self, request: FitRequest) -> FitResult:
        """(In a client's greenlet) hand the fit over and wait for its result."""
        return self._parent.switch(("submit", request))

    def submit_offsets(self, request: OffsetsRequest) -> list[EvalResult]:
        """(In a client's greenlet) hand the evaluation over and wait for its results."""
        return self._parent.switch(("submit", request))

    def run(self, bodies: Sequence[Callable[[], Any]]) -> list[_Client]:
        clients = [_Client(greenlet.greenlet(self._in_context(body))) for body in bodies]
        waiting = list(clients)
        try:
            while waiting:
                for client in waiting:
                    client.resume()
                waiting = [c for c in waiting if not c.done]
                self._answer(waiting)
        finally:
            for client in clients:
                if client.greenlet:  # started and not finished: after another client's error
                    client.greenlet.throw(greenlet.GreenletExit)
        return clients

    def _in_context(self, body: Callable[[], Any]) -> Callable[[Any], tuple[str, Any]]:
        def run(_: Any) -> tuple[str, Any]:
            with batching(self):
                return ("done", body())

        return run

    def _answer(self, waiting: Sequence[_Client]) -> None:
        groups: dict[Hashable, list[_Client]] = defaultdict(list)
        for client in waiting:
            assert client.request is not None
            groups[_group_key(client.request)].append(client)
        for key, members in groups.items():
            requests = [c.request for c in members if c.request is not None]
            started = time.perf_counter()
            if isinstance(requests[0], OffsetsRequest):
                answers: Sequence[Any] = self._evaluate_offsets(requests)  # type: ignore[arg-type]
            else:
                answers = self._fit_group(key, requests)  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
            samples = [max(len(r.y), 1) for r in requests]
            for client, answer, n in zip(members, answers, samples, strict=True):
                client.answer, client.request = answer, None
                client.shared_seconds += seconds * n / sum(samples)

    def _evaluate_offsets(self, requests: list[OffsetsRequest]) -> list[list[EvalResult]]:
        """The clients' evaluations of models ``theta0 + delta``: together where a row's
        output depends on that row alone (``can_batch``: no batch statistics, recurrence or
        dropout), the models sharing passes over the rows under the rules batched training
        follows (every parameter differs between models); else client by client."""
        model = requests[0].trainer.model
        if not can_batch(model):  # e.g. batch norm without running statistics mixes rows
            return [evaluate_offsets_alone(r) for r in requests]
        shared = self.mode == "always" or worth_batching(
            model, parameter_names(model), requests[0].x.device
        )
        self.stats.offsets += len(requests)
        return evaluate_offsets_together(requests, share_passes=shared)

    def _fit_group(self, key: Hashable, requests: list[FitRequest]) -> list[FitResult]:
        first = requests[0]
        model = first.trainer.model
        batch = (
            len(requests) > 1
            and key not in self.refused
            and can_batch(model)
            and (self.mode == "always" or worth_batching(model, first.live, first.x.device))
        )
        if batch:
            states = [r.rng.get_state() for r in requests]
            try:
                fit = batched_private_fit if is_private(first.trainer.config) else batched_fit
                results = fit(requests)
                self.stats.batched += len(requests)
                self.stats.batches += 1
                return results
            except (RuntimeError, NotImplementedError):  # an operation vmap cannot batch
                self.refused.add(key)
                for request, state in zip(requests, states, strict=True):
                    request.rng.set_state(state)
        self.stats.alone += len(requests)
        return [_fit_alone(r) for r in requests]


def _fit_alone(request: FitRequest) -> FitResult:
    """The request run by the ordinary trainer (the main greenlet collects nothing)."""
    live = set(request.live)
    return request.trainer.fit(
        request.params,
        request.x,
        request.y,
        rng=request.rng,
        loss_terms=request.loss_terms,
        trainable=live.__contains__,
        epochs=request.epochs,
        steps=request.steps,
        lr=request.lr,
    )


def _group_key(request: FitRequest | OffsetsRequest) -> Hashable:
    trainer = request.trainer
    if isinstance(request, OffsetsRequest):  # evaluated together if the models are the same
        return ("offsets", id(trainer.model), trainer.config, *_input_kind(request.x, request.y))
    return (
        id(trainer.model),
        trainer.config,
        request.lr,
        request.live,
        tuple(request.params),
        *_input_kind(request.x, request.y),
    )


def _input_kind(x: torch.Tensor, y: torch.Tensor) -> tuple[Hashable, ...]:
    """What inputs must share to be concatenated: row shape, dtypes and device."""
    return (tuple(x.shape[1:]), tuple(y.shape[1:]), x.dtype, y.dtype, str(x.device))


# --------------------------------------------------------------------------- backend


class VectorizedBackend(SequentialBackend):
    """Clients in this process, their plain local fits batched with ``torch.func``.

    Evaluation is batched too (:func:`batched_evaluate`): the evaluated models of clients
    with the same architecture and entries are stacked, under the same rules as training
    (``can_batch``; with ``auto``, ``worth_batching`` of the entries that differ between
    clients, so a global model is always batched). FedEM's mixtures and other tasks
    (gradients) run one client after another, as in the sequential backend.
    ``max_batch_clients`` bounds how many clients run as one wave or one evaluation batch.
    """

    def __init__(
        self,
        setup: WorkerSetup,
        mode: VectorizeMode = "auto",
        threads: int | None = None,
        max_batch_clients: int = 256,
        adapt: bool = False,
    ) -> None:
        super().__init__(setup, threads, adapt)
        self.mode = mode
        self.max_batch_clients = max_batch_clients
        self._refused: set[Hashable] = set()
        self.stats = FitStats()
        self.eval_stats = FitStats()
        """How evaluations ran: ``batched`` items in ``batches`` batches, ``alone`` items."""

    def imap(
        self, task: Callable[[WorkerEnv, Item], Result], items: Sequence[Item]
    ) -> Iterator[Result]:
        """Results in order: a client phase wave by wave (of ``max_batch_clients``),
        evaluation chunk by chunk, other tasks one by one."""
        if task is evaluate_client:
            for start in range(0, len(items), self.max_batch_clients):
                self.tick()
                yield from self._evaluate(items[start : start + self.max_batch_clients])  # type: ignore[arg-type,misc]
            return
        if task is not run_client_phase:
            yield from super().imap(task, items)
            return
        for start in range(0, len(items), self.max_batch_clients):
            self.tick()
            yield from self._wave(items[start : start + self.max_batch_clients])  # type: ignore[arg-type,misc]

    def _evaluate(self, items: Sequence[EvalWork]) -> list[dict[str, EvalResult]]:
        """``evaluate_client`` of every item, batched per group of clients whose models have
        the same architecture, entries and splits; in the items' order."""
        results: list[dict[str, EvalResult] | None] = [None] * len(items)
        models: list[Params | Mixture] = []
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for position, work in enumerate(items):
            trainer = self.env.trainer_for(work.client_id)
            params = work.params
            if not isinstance(params, Mixture):
                params = full_params(params, trainer)
            models.append(params)
            key = None if isinstance(params, Mixture) else (id(trainer), tuple(params), work.splits)
            groups[key].append(position)
        for key, positions in groups.items():
            for start in range(0, len(positions), self.max_batch_clients):
                chunk = positions[start : start + self.max_batch_clients]
                group = [items[p] for p in chunk]
                scored = self._evaluate_chunk(key, group, [models[p] for p in chunk])
                for position, result in zip(chunk, scored, strict=True):
                    results[position] = result
        return results  # type: ignore[return-value]

    def _evaluate_chunk(
        self, key: Hashable, items: list[EvalWork], models: list[Any]
    ) -> list[dict[str, EvalResult]]:
        trainer = self.env.trainer_for(items[0].client_id)
        if key is not None and len(items) > 1 and key not in self._refused:
            differing = [n for n in models[0] if any(m[n] is not models[0][n] for m in models)]
            model, device = trainer.model, self.env.device
            if can_batch(model) and (
                self.mode == "always" or worth_batching(model, differing, device)
            ):
                try:
                    results = _evaluate_group(self.env, trainer, items, models)
                    self.eval_stats.batched += len(items)
                    self.eval_stats.batches += 1
                    return results
                except (RuntimeError, NotImplementedError):  # an operation vmap cannot batch
                    self._refused.add(key)
        self.eval_stats.alone += len(items)
        return [evaluate_client(self.env, work) for work in items]

    def _wave(self, items: Sequence[ClientWork]) -> list[tuple[Any, Any, PhaseCost]]:
        shared_counts = self.env.trainer.meter.per_sample
        trainers = [
            self.env.trainer_for(work.client_id).with_meter(WorkMeter(per_sample=shared_counts))
            for work in items
        ]
        bodies = [
            _bind(self.env, work, trainer) for work, trainer in zip(items, trainers, strict=True)
        ]
        clients = _Interleaver(self.mode, self._refused, self.stats).run(bodies)
        out = []
        for client in clients:
            reply, state, cost = client.result
            seconds = client.own_seconds + client.shared_seconds
            out.append((reply, state, dataclasses.replace(cost, seconds=seconds)))
        return out


def _bind(env: WorkerEnv, work: ClientWork, trainer: Any) -> Callable[[], Any]:
    return lambda: run_client_phase(env, work, trainer)
