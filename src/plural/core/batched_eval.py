"""Evaluate many parameter sets of one architecture on the same data in one batched call.

pFedLIA's lazy phase has every client evaluate up to N-1 lazy models on its validation split.
One model at a time, each evaluation loads a state dict into the template module and runs a
small forward pass, and the Python overhead dominates for small models. Here the models'
parameters are stacked along a new leading dimension and the forward pass is vectorised over
it with :func:`torch.func.vmap` and :func:`torch.func.functional_call`, ``chunk`` models at a
time. Results match :meth:`plural.core.trainer.LocalTrainer.evaluate` up to floating-point
summation order.

pFedLIA's models are ``theta0 + delta`` for one shared ``theta0``: :func:`evaluate_offsets`
evaluates them for one client (stacking the deltas), and inside the vectorized backend hands
every client's request over so that :func:`evaluate_offsets_together` can evaluate each lazy
model once on all the clients' validation data together: N models read once instead of N
times, and large matrix products instead of one small product per client and model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch.func import functional_call, vmap

from plural.core.compression import CompressedDelta, decompress
from plural.core.params import Params
from plural.core.trainer import EvalResult, LocalTrainer, OffsetsRequest, active_batcher

__all__ = [
    "OffsetsRequest",
    "evaluate_offsets",
    "evaluate_offsets_together",
    "evaluate_stacked",
    "stack_offsets",
    "stack_params",
    "with_offset",
]

DEFAULT_CHUNK = 64


def stack_params(params: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{name: tensor of shape (len(params), *shape)}`` from parameter sets of one model."""
    if not params:
        raise ValueError("stack_params needs at least one parameter set")
    return {name: torch.stack([p[name] for p in params]) for name in params[0]}


@torch.no_grad()
def evaluate_stacked(
    trainer: LocalTrainer,
    stacked: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> list[EvalResult]:
    """Loss sum and correct count (as :meth:`LocalTrainer.evaluate`) of each of the stacked
    parameter sets on ``(x, y)``; the model is in evaluation mode."""
    model, loss_fn = trainer.model, trainer.loss_fn
    classify = trainer.config.loss == "cross_entropy"
    model.eval()
    count = next(iter(stacked.values())).shape[0]

    def forward(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, params, (x,))

    results: list[EvalResult] = []
    for start in range(0, count, chunk):
        part = {n: t[start : start + chunk] for n, t in stacked.items()}
        outputs = vmap(forward)(part)  # (models, samples, ...)
        models = outputs.shape[0]
        # Every model's per-sample losses in one call, summed per model (a loss call per
        # model cost as much as the forward passes at 200 clients).
        losses = loss_fn(
            outputs.flatten(0, 1), y.repeat(models, *([1] * (y.dim() - 1))), reduction="none"
        )
        loss_sums = losses.reshape(models, -1).sum(dim=1).tolist()
        hits = (outputs.argmax(dim=2) == y).flatten(1).sum(dim=1) if classify else None
        corrects = hits.tolist() if hits is not None else [-1] * models
        results += [
            EvalResult(float(loss), int(correct), len(y))
            for loss, correct in zip(loss_sums, corrects, strict=True)
        ]
    return results


# ---- models given as theta0 + delta -----------------------------------------------------------

MODEL_ROWS = 65_536
"""Models times input rows of one forward pass in :func:`evaluate_offsets_together` (as the
vectorized backend's batched evaluation: clients times rows): 2,048 rows a pass, whether
``MODELS_PER_PASS`` models share it or one model runs alone."""

MODELS_PER_PASS = 32
"""Most models sharing one pass over the input rows in :func:`evaluate_offsets_together`."""


def with_offset(base: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Params:
    """``base + delta``, entry by entry, in ``base``'s dtypes."""
    return {n: (t + delta[n]).to(t.dtype) for n, t in base.items()}


def stack_offsets(
    base: Mapping[str, torch.Tensor], deltas: Sequence[CompressedDelta]
) -> dict[str, torch.Tensor]:
    """``base + delta`` of every delta, stacked (``{name: (len(deltas), *shape)}``): the
    deltas stacked first and ``base`` added once per entry, the same sums as
    :func:`with_offset` model by model (bit for bit) in a few operations instead of a few per
    model."""
    decoded = [decompress(d, copy=False) for d in deltas]  # read here, never written
    stacked = {}
    for name, t in base.items():
        entries = [delta[name] for delta in decoded]
        if any(e.dtype != entries[0].dtype for e in entries):  # stacking would promote them
            raise NotImplementedError("deltas of one entry differ in dtype")
        stacked[name] = (t.unsqueeze(0) + torch.stack(entries)).to(t.dtype)
    return stacked


def evaluate_offsets(
    trainer: LocalTrainer,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[CompressedDelta],
    x: torch.Tensor,
    y: torch.Tensor,
) -> list[EvalResult]:
    """Each model ``base + delta`` evaluated on ``(x, y)`` (as :meth:`LocalTrainer.evaluate`,
    up to float rounding). Inside a batcher (the vectorized backend) the request joins the
    other clients' (:func:`evaluate_offsets_together`); otherwise the models are stacked and
    evaluated at once, or one by one where ``torch.func.vmap`` cannot batch the model."""
    if not deltas:
        return []
    request = OffsetsRequest(trainer, base, tuple(deltas), x, y)
    batcher = active_batcher()
    if batcher is not None:
        return batcher.submit_offsets(request)
    return evaluate_offsets_alone(request)


STACKED_PARAMETERS_ON_CPU = 100_000
"""On a CPU a client stacks its models only up to this many parameters each. Measured at 200
clients (benchmarks/README.md): a 25k-parameter MLP's lazy phase 2.9x faster stacked than
one model at a time, a 199k-parameter one (784-200-200-10) 2.3x slower."""


def evaluate_offsets_alone(request: OffsetsRequest) -> list[EvalResult]:
    """:func:`evaluate_offsets` for one client: stacked for small models (see
    :data:`STACKED_PARAMETERS_ON_CPU`), or one by one."""
    trainer, base, x, y = request.trainer, request.base, request.x, request.y
    size = sum(t.numel() for t in base.values() if t.is_floating_point())
    if x.device.type != "cpu" or size <= STACKED_PARAMETERS_ON_CPU:
        try:
            return evaluate_stacked(trainer, stack_offsets(base, request.deltas), x, y)
        except (RuntimeError, NotImplementedError):  # e.g. data-dependent control flow
            pass
    return [trainer.evaluate(with_offset(base, decompress(d)), x, y) for d in request.deltas]


@torch.no_grad()
def evaluate_offsets_together(
    requests: Sequence[OffsetsRequest], model_rows: int = MODEL_ROWS, share_passes: bool = True
) -> list[list[EvalResult]]:
    """:func:`evaluate_offsets` of every request, each distinct delta's model evaluated once
    on the data of all the requests that hold it.

    The requests must share the architecture and settings (one trainer's model and config),
    and a row's output must depend on that row alone (no batch statistics: the vectorized
    backend evaluates other models client by client); a delta is the same when it is the
    same object (the relayed updates of one round are).
    Models whose holders have at least half of all the rows run on all the rows at once (the
    rest is discarded: at most twice the work), with ``share_passes`` several models sharing each
    pass over the rows (``torch.func.vmap`` over the models, the input not batched: for a
    dense first layer one wide matrix product); a rarer model runs on its requests' data
    only. Requests with different bases are evaluated one by one
    (:func:`evaluate_offsets_alone`). Each result sums its request's rows only, equal to
    one-by-one evaluation up to float rounding; no request's data enters another's result."""
    if len(requests) < 2 or not _same_base(requests):
        return [evaluate_offsets_alone(r) for r in requests]
    holders: dict[int, list[tuple[int, int]]] = {}  # id(delta) -> (request, position)
    distinct: dict[int, CompressedDelta] = {}
    for index, request in enumerate(requests):
        for position, delta in enumerate(request.deltas):
            distinct.setdefault(id(delta), delta)
            holders.setdefault(id(delta), []).append((index, position))
    wanted = {key: sorted({index for index, _ in held}) for key, held in holders.items()}
    everyone = _Rows(requests, range(len(requests)))
    rows = everyone.counts
    total = sum(rows)
    common = [key for key in distinct if 2 * sum(rows[i] for i in wanted[key]) >= total]
    per_pass = MODELS_PER_PASS if share_passes else 1
    passes = [(common[k : k + per_pass], everyone) for k in range(0, len(common), per_pass)]
    passes += [([key], _Rows(requests, wanted[key])) for key in distinct if key not in common]
    results: list[list[EvalResult | None]] = [[None] * len(r.deltas) for r in requests]
    trainer, base = requests[0].trainer, requests[0].base
    for keys, data in passes:
        models = [with_offset(base, decompress(distinct[key], copy=False)) for key in keys]
        for key, scored in zip(keys, data.evaluate(trainer, models, model_rows), strict=True):
            for index, position in holders[key]:
                results[index][position] = scored[index]
    return results  # type: ignore[return-value]


def _same_base(requests: Sequence[OffsetsRequest]) -> bool:
    first = requests[0].base
    return all(
        request.base.keys() == first.keys()
        and all(t is first[n] or torch.equal(t, first[n]) for n, t in request.base.items())
        for request in requests[1:]
    )


class _Rows:
    """Some requests' data concatenated, with the request each row belongs to."""

    def __init__(self, requests: Sequence[OffsetsRequest], indices: Sequence[int]) -> None:
        self.indices = list(indices)
        chosen = [requests[i] for i in self.indices]
        self.x = torch.cat([r.x for r in chosen])
        self.y = torch.cat([r.y for r in chosen])
        self.counts = [len(r.y) for r in chosen]
        self.owner = torch.repeat_interleave(
            torch.arange(len(chosen), device=self.x.device),
            torch.tensor(self.counts, device=self.x.device),
        )

    def evaluate(
        self, trainer: LocalTrainer, models: Sequence[Params], model_rows: int
    ) -> list[dict[int, EvalResult]]:
        """Loss sum and correct count of each of ``models`` on each request's rows (per model:
        by request index); the models share each pass over the rows where ``vmap`` can
        batch them, else run one by one."""
        trainer.model.eval()
        width = max(1, model_rows // max(len(models), MODELS_PER_PASS))  # rows a pass
        try:
            outputs = _shared_input if len(models) > 1 else _one_by_one
            loss_sums, correct = self._sums(trainer, outputs(trainer, models), len(models), width)
        except (RuntimeError, NotImplementedError):  # an operation vmap cannot batch
            by_one = _one_by_one(trainer, models)
            loss_sums, correct = self._sums(trainer, by_one, len(models), width)
        classify = trainer.config.loss == "cross_entropy"
        losses, hits = loss_sums.tolist(), correct.tolist()
        return [
            {
                index: EvalResult(losses[m][k], hits[m][k] if classify else -1, self.counts[k])
                for k, index in enumerate(self.indices)
            }
            for m in range(len(models))
        ]

    def _sums(
        self,
        trainer: LocalTrainer,
        outputs: Callable[[torch.Tensor], torch.Tensor],
        models: int,
        width: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(models, requests) loss sums and correct counts of ``outputs`` (input rows to
        ``(models, rows, ...)``), ``width`` rows a pass."""
        shape, device = (models, len(self.counts)), self.x.device
        loss_sums = torch.zeros(shape, dtype=torch.float64, device=device)
        correct = torch.zeros(shape, dtype=torch.long, device=device)
        classify = trainer.config.loss == "cross_entropy"
        for start in range(0, len(self.y), width):
            rows = slice(start, start + width)
            output = outputs(self.x[rows])
            target, owner = self.y[rows], self.owner[rows]
            flat = output.flatten(0, 1)
            repeated = target.repeat(models, *([1] * (target.dim() - 1)))
            losses = trainer.loss_fn(flat, repeated, reduction="none")
            per_row = losses.reshape(models, len(target), -1).sum(dim=2)
            loss_sums.index_add_(1, owner, per_row.double())
            if classify:
                hits = (flat.argmax(dim=1) == repeated).reshape(models, len(target), -1)
                correct.index_add_(1, owner, hits.sum(dim=2))
        return loss_sums, correct


def _shared_input(
    trainer: LocalTrainer, models: Sequence[Params]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Input rows to every model's outputs, one ``vmap`` over the stacked models."""
    stacked = stack_params(models)

    def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(trainer.model, params, (x,))

    batched = vmap(forward, in_dims=(0, None))
    return lambda x: batched(stacked, x)


def _one_by_one(
    trainer: LocalTrainer, models: Sequence[Params]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Input rows to every model's outputs, model by model."""
    return lambda x: torch.stack(
        [torch.cat([out for _, out in trainer.outputs(m, x, len(x))]) for m in models]
    )
