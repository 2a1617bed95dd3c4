"""Attacks by malicious clients: model poisoning of their replies, data poisoning of their
training data.

The malicious clients are drawn once per run from the seed (``attack.fraction``) or named
(``attack.clients``); ``federation.json`` lists them.

Model poisoning acts in the dispatcher on the ``client_update`` replies of a round's
malicious clients, in update space (``delta = sent model - model received``):

* ``sign_flip``: ``-delta``; ``scale``: ``scale * delta``; ``gaussian``: N(0, std^2) noise
  in place of the update;
* ``alie`` (Baruch et al. 2019, "A Little Is Enough"): ``mu - z * sigma`` per coordinate,
  from the mean and std of the benign updates, with the paper's ``z_max`` by default;
* ``ipm`` (Xie et al. 2020, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
  Product Manipulation"): ``-epsilon * mu``;
* ``min_max`` (Shejwalkar & Houmansadr 2021, "Manipulating the Byzantine: Optimizing Model
  Poisoning Attacks and Defenses for Federated Learning"): ``mu - gamma * sigma / |sigma|``
  with the largest ``gamma`` that keeps it no farther from any benign update than the
  benign updates are from each other.

ALIE, IPM and min-max are **omniscient**: they see the round's benign updates (those of one
dispatch, i.e. the whole cohort of a round). With fewer than two benign updates in a
dispatch they use every honest update, the attackers' own included.

Data poisoning changes the malicious clients' training split when the federation is built:
``label_flip`` (``y -> classes - 1 - y``) and ``backdoor`` (Bagdasaryan et al. 2020, "How To
Backdoor Federated Learning": a share of the samples gets a square trigger of the data's
largest value in the image's bottom-right corner and the target label). Both use the
federation's own client-transform machinery (:meth:`ClientData.map_splits`, and a
:class:`~plural.data.federated.Drift` switching at ``start_round`` when the attack starts
later).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from plural.config import ConfigError
from plural.core.algorithm import Update
from plural.core.rng import numpy_rng, torch_generator
from plural.data.federated import ClientData, Drift, FederatedDataset, TensorSplit
from plural.robust.config import MODEL_ATTACKS, AttackConfig

Delta = torch.Tensor  # one client's update, flattened (float64)


def choose_malicious(config: AttackConfig, num_clients: int, seed: int) -> list[int]:
    """The malicious clients: ``clients`` as given, or ``round(fraction * n)`` (at least one)
    drawn from (seed, "attack")."""
    if not config.active:
        return []
    if config.clients is not None:
        bad = [c for c in config.clients if c >= num_clients]
        if bad:
            raise ConfigError(
                f"attack.clients: {bad} are not clients of this federation "
                f"(ids 0..{num_clients - 1})"
            )
        return sorted(set(config.clients))
    assert config.fraction is not None
    count = max(1, math.floor(config.fraction * num_clients + 0.5))
    rng = numpy_rng(seed, "attack")
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


# ---------------------------------------------------------------------------------------------
# model poisoning on flattened updates
# ---------------------------------------------------------------------------------------------


def alie_z(num_clients: int, num_malicious: int) -> float:
    """ALIE's ``z_max`` (Baruch et al. 2019): with ``s = floor(n/2 + 1) - m`` supporters
    needed, ``z = Phi^{-1}((n - s) / n)`` (0 when that is not positive)."""
    s = math.floor(num_clients / 2 + 1) - num_malicious
    p = (num_clients - s) / num_clients
    return max(0.0, float(norm.ppf(p))) if 0 < p < 1 else 0.0


def min_max_update(benign: torch.Tensor) -> Delta:
    """Min-max (Shejwalkar & Houmansadr 2021, std perturbation): ``mu - gamma * sigma/|sigma|``
    with the largest gamma whose farthest distance to a benign update is at most the largest
    distance between two benign updates (found by doubling, then bisection)."""
    mu = benign.mean(0)
    sigma = benign.std(0, unbiased=False) if len(benign) > 1 else torch.zeros_like(mu)
    length = float(sigma.norm())
    if length == 0:
        return mu
    direction = -sigma / length
    limit = float(torch.cdist(benign, benign).max())

    def fits(gamma: float) -> bool:
        return float((benign - (mu + gamma * direction)).norm(dim=1).max()) <= limit

    low, high = 0.0, max(limit, 1e-12)
    while fits(high) and high < 1e12:
        low, high = high, high * 2
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return mu + low * direction


@dataclasses.dataclass(frozen=True)
class ModelAttack:
    """Rewrites the malicious clients' updates of one dispatch (see the module docstring)."""

    config: AttackConfig
    malicious: frozenset[int]
    seed: int

    def poisoned(
        self, round_index: int, clients: Sequence[int], deltas: Sequence[Delta]
    ) -> dict[int, Delta]:
        """The malicious clients' new updates (by position in ``clients``)."""
        positions = [i for i, c in enumerate(clients) if c in self.malicious]
        if not positions or round_index < self.config.start_round:
            return {}
        honest = torch.stack(list(deltas))
        benign_rows = [i for i in range(len(clients)) if i not in positions]
        benign = honest[benign_rows] if len(benign_rows) >= 2 else honest
        out = {}
        for i in positions:
            out[i] = self.attack(
                deltas[i], benign, len(clients), len(positions), round_index, clients[i]
            )
        return out

    def attack(
        self,
        delta: Delta,
        benign: torch.Tensor,
        num_clients: int,
        num_malicious: int,
        round_index: int,
        client: int,
    ) -> Delta:
        cfg = self.config
        if cfg.name == "sign_flip":
            return -delta
        if cfg.name == "scale":
            return cfg.scale * delta
        if cfg.name == "gaussian":
            gen = torch_generator(self.seed, round_index, client, "attack")
            return torch.randn(delta.shape, generator=gen, dtype=torch.float64) * cfg.std
        if cfg.name == "alie":
            z = cfg.z if cfg.z is not None else alie_z(num_clients, num_malicious)
            sigma = benign.std(0, unbiased=False) if len(benign) > 1 else torch.zeros_like(delta)
            return benign.mean(0) - z * sigma
        if cfg.name == "ipm":
            return -cfg.epsilon * benign.mean(0)
        if cfg.name == "min_max":
            return min_max_update(benign)
        raise ValueError(f"{cfg.name!r} is not a model-poisoning attack")


def reference_of(message: Any, reply: Update) -> Mapping[str, torch.Tensor] | None:
    """The model a client's update is relative to: the message's ``params``, or, for messages
    with several models (IFCA), the one the client reports in ``extra['cluster']``."""
    params = getattr(message, "params", None)
    if isinstance(params, Mapping):
        return params
    models = getattr(message, "models", None)
    cluster = reply.extra.get("cluster") if isinstance(reply.extra, Mapping) else None
    if models is not None and cluster is not None:
        return models[int(cluster)]
    return None


def poison_replies(
    attack: ModelAttack,
    round_index: int,
    cohort: Sequence[int],
    replies: list[Any],
    messages: Callable[[int], Any],
) -> tuple[list[Any], int]:
    """``replies`` with the malicious clients' updates rewritten, and how many were."""
    clients, deltas, entries, positions = [], [], [], []
    for index, (cid, reply) in enumerate(zip(cohort, replies, strict=True)):
        if not isinstance(reply, Update) or reply.params is None:
            continue
        reference = reference_of(messages(cid), reply)
        if reference is None:
            continue
        names = [k for k, v in reply.params.items() if v.is_floating_point() and k in reference]
        if not names:
            continue
        clients.append(cid)
        positions.append(index)
        entries.append((names, reference))
        deltas.append(
            torch.cat(
                [(reply.params[k].double() - reference[k].double()).reshape(-1) for k in names]
            )
        )
    if not deltas or len({d.numel() for d in deltas}) > 1:
        return replies, 0
    new = attack.poisoned(round_index, clients, deltas)
    out = list(replies)
    for i, delta in new.items():
        names, reference = entries[i]
        reply = replies[positions[i]]
        params = dict(reply.params)
        offset = 0
        for k in names:
            size = reference[k].numel()
            piece = delta[offset : offset + size].reshape(reference[k].shape)
            params[k] = (reference[k].double() + piece).to(reply.params[k].dtype)
            offset += size
        out[positions[i]] = dataclasses.replace(reply, params=params)
    return out, len(new)


# ---------------------------------------------------------------------------------------------
# data poisoning
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trigger:
    """A square of ``value`` in the bottom-right corner of every channel (Bagdasaryan et al.
    2020's pixel pattern, simplified to a solid patch)."""

    size: int
    value: float
    target: int

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[..., -self.size :, -self.size :] = self.value
        return out


def make_trigger(config: AttackConfig, federation: FederatedDataset) -> Trigger:
    """The backdoor's trigger; ConfigError for data that are not images."""
    shape = federation.input_shape
    sample = next((c.train.x for c in federation.clients if len(c.train)), None)
    if len(shape) != 3 or sample is None or not sample.is_floating_point():
        raise ConfigError(
            f"attack.name: 'backdoor' stamps a pixel trigger on images (inputs of shape "
            f"channels x height x width); dataset {federation.name!r} has inputs of shape "
            f"{tuple(shape)}. Use an image dataset (digits, mnist, fashion_mnist, cifar10) or "
            "another attack"
        )
    if config.trigger_size > min(shape[1:]):
        raise ConfigError(
            f"attack.trigger_size: {config.trigger_size} pixels does not fit images of "
            f"{shape[1]}x{shape[2]}"
        )
    if config.target >= federation.num_classes:
        raise ConfigError(
            f"attack.target: label {config.target} does not exist; the data has "
            f"{federation.num_classes} classes (0..{federation.num_classes - 1})"
        )
    value = max(float(c.train.x.max()) for c in federation.clients if len(c.train))
    return Trigger(config.trigger_size, value, config.target)


SplitFn = Callable[[str, TensorSplit], TensorSplit]


def _label_flip(num_classes: int) -> SplitFn:
    def flip(name: str, split: TensorSplit) -> TensorSplit:
        if name != "train":
            return split
        return TensorSplit(split.x, num_classes - 1 - split.y)

    return flip


def _backdoor(trigger: Trigger, share: float, rng: np.random.Generator) -> SplitFn:
    def poison(name: str, split: TensorSplit) -> TensorSplit:
        if name != "train" or len(split) == 0:
            return split
        count = max(1, math.ceil(share * len(split)))
        chosen = torch.from_numpy(rng.permutation(len(split))[:count])
        x, y = split.x.clone(), split.y.clone()
        x[chosen] = trigger.stamp(x[chosen])
        y[chosen] = trigger.target
        return TensorSplit(x, y)

    return poison


def _poison_client(client: ClientData, fn: SplitFn, start_round: int) -> ClientData:
    if start_round <= 1:
        return client.map_splits(fn)  # type: ignore[arg-type]
    if client.drift is not None:
        raise ConfigError(
            "attack.start_round: data poisoning that starts after round 1 cannot be combined "
            "with a drift transform on the same client; use start_round: 1"
        )
    switch = {
        name: torch.full((len(client.split(name)),), start_round, dtype=torch.int64)
        for name in ("train", "val", "test")
    }
    return dataclasses.replace(client, drift=Drift(client.map_splits(fn), switch))  # type: ignore[arg-type]


def poison_data(
    config: AttackConfig,
    federation: FederatedDataset,
    malicious: Sequence[int],
    seed: int,
    trigger: Trigger | None,
) -> FederatedDataset:
    """The federation with the malicious clients' training data poisoned (``label_flip``,
    ``backdoor``); unchanged for model-poisoning attacks."""
    if config.name in MODEL_ATTACKS or not config.active:
        return federation
    if not federation.is_classification:
        raise ConfigError(f"attack.name: {config.name!r} needs classification data (labels)")
    bad = set(malicious)
    clients = []
    for client in federation.clients:
        if client.client_id not in bad:
            clients.append(client)
            continue
        if config.name == "label_flip":
            fn = _label_flip(federation.num_classes)
        else:
            assert trigger is not None
            rng = numpy_rng(seed, "attack", "backdoor", client.client_id)
            fn = _backdoor(trigger, config.poison_share, rng)
        clients.append(_poison_client(client, fn, config.start_round))
    return federation.with_clients(clients)


def triggered_test(client: ClientData, trigger: Trigger) -> TensorSplit | None:
    """A clean client's test inputs whose label is not the target, with the trigger, all
    labelled with the target (accuracy on them is the attack success rate)."""
    test = client.test
    keep = test.y != trigger.target
    if not bool(keep.any()):
        return None
    x = trigger.stamp(test.x[keep])
    return TensorSplit(x, torch.full((len(x),), trigger.target, dtype=test.y.dtype))
