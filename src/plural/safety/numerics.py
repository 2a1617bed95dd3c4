"""Divergence is an error, not a result: a client whose training loss or parameters are not
finite (a learning rate of 1e30, an exploding objective) stops the run with a message naming
the round and the clients, or, with ``train.on_nonfinite: drop``, its update is left out and
recorded. A model whose outputs are not finite is never scored."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from plural.core.algorithm import ModelMessage, Update
from plural.core.params import field_values


class DivergedError(RuntimeError):
    """Training produced non-finite losses or parameters."""


def _tensors(value: Any) -> Iterable[torch.Tensor | float]:
    """The tensors and floats inside ``value`` (nested dataclasses, mappings, sequences)."""
    if isinstance(value, (torch.Tensor, float)):
        yield value
    elif value is None or isinstance(value, (int, str)):
        return
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in field_values(value):
            yield from _tensors(item)


def all_finite(value: Any) -> bool:
    """Whether every floating tensor and float in ``value`` (nested dicts / lists) is finite.

    Fast path: one fused norm per tensor (``torch._foreach_norm``, what ``clip_grad_norm_``
    uses). A finite norm proves every entry finite (a NaN or infinite entry makes the sum of
    squares NaN or infinite); a non-finite one may be an overflow of finite entries, so those
    tensors are checked entry by entry. Exact either way, and about 2x cheaper for a small
    MLP's update on a CPU than one ``isfinite(t).all()`` per tensor (14 against 32 us)."""
    tensors: list[torch.Tensor] = []
    for item in _tensors(value):
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif item.is_floating_point() and item.numel():
            tensors.append(item.detach())
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)
    devices = {t.device for t in tensors}
    if len(devices) == 1 and next(iter(devices)).type != "cpu":  # one transfer, not one each
        finite = torch.isfinite(torch.stack([n.to(torch.float64) for n in norms])).tolist()
    else:
        finite = [math.isfinite(float(n)) for n in norms]
    return all(
        norm_finite or bool(torch.isfinite(t).all())
        for norm_finite, t in zip(finite, tensors, strict=True)
    )


def update_is_finite(update: Update) -> bool:
    """Whether a client's update has finite tensors and a loss that is not infinite (a NaN
    loss alone may mean "not reported"; a diverged fit also leaves non-finite parameters)."""
    return not math.isinf(update.loss) and all_finite(update.params) and all_finite(update.extra)


def _advice(lr: float) -> str:
    return (
        f"lower train.lr (now {lr:g}) or set train.max_grad_norm; or set "
        "train.on_nonfinite: drop to leave such clients' updates out of the round"
    )


def diverged(round_index: int, clients: Sequence[int], lr: float) -> DivergedError:
    shown = ", ".join(map(str, clients[:10])) + (", ..." if len(clients) > 10 else "")
    return DivergedError(
        f"training diverged in round {round_index}: client(s) {shown} returned non-finite "
        f"losses or parameters; {_advice(lr)}"
    )


def dropped_update(update: Update, message: Any, round_index: int, client: int) -> Update:
    """The update that leaves a diverged client's work out: the model it received, unchanged
    (its weight stays, its step is zero)."""
    if not isinstance(message, ModelMessage) or update.params is None or update.extra:
        raise DivergedError(
            f"training diverged in round {round_index} on client {client}, and this "
            "algorithm's updates cannot be dropped (train.on_nonfinite: drop works for "
            "updates that are whole models); lower train.lr or set train.max_grad_norm"
        )
    return dataclasses.replace(
        update, params={k: v.clone() for k, v in message.params.items()}, loss=float("nan")
    )


def result_is_finite(result: tuple[Any, Any, Any]) -> bool:
    """Whether a client's (reply, state, cost) of a phase holds only finite values. Only
    model updates are checked: other phases' replies may use NaN for "not measured" (pFedLIA
    leaves the peers a client did not score as NaN), and a diverged fit shows in its update."""
    reply, state, _ = result
    return (not isinstance(reply, Update) or update_is_finite(reply)) and all_finite(state)


def dropped_result(
    round_index: int, item: Any, result: tuple[Any, Any, Any], lr: float
) -> tuple[Any, Any, Any]:
    """What replaces a non-finite result under ``on_nonfinite: drop``: an update that leaves
    the model as it was, and the client's previous state (a reply that is not an update
    cannot be dropped: DivergedError)."""
    reply, _, cost = result
    if not isinstance(reply, Update):
        raise diverged(round_index, [item.client_id], lr)
    return dropped_update(reply, item.message, round_index, item.client_id), item.state, cost


def check_server(server_params: Mapping[str, torch.Tensor], round_index: int, lr: float) -> None:
    """DivergedError if the aggregated model is not finite."""
    bad = [name for name, t in server_params.items() if t.is_floating_point() and not all_finite(t)]
    if bad:
        raise DivergedError(
            f"training diverged in round {round_index}: the aggregated model has non-finite "
            f"parameters ({', '.join(bad[:3])}); {_advice(lr)}"
        )


def check_scores(rows: Sequence[Mapping[str, Any]], round_index: int, lr: float) -> None:
    """DivergedError if a client's model gives non-finite losses on its data: never score
    NaN outputs (argmax of NaN logits is class 0, a meaningless accuracy)."""
    bad = sorted(
        {
            int(r["client"])
            for r in rows
            if r["samples"] > 0 and r["split"] != "fit" and not math.isfinite(r["loss"])
        }
    )
    if bad:
        raise DivergedError(
            f"training diverged by round {round_index}: the models of client(s) "
            f"{', '.join(map(str, bad[:10]))} give non-finite outputs, so they are not scored; "
            f"{_advice(lr)}"
        )
