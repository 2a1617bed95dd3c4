"""Splits that come from the data or the config rather than from fractions.

- Fixed per-client splits: user data marks every sample ``train``, ``val``, ``test`` or
  ``server`` (or 0, 1, 2, 3); each client's samples are then used exactly as marked.
- The server set: samples no client holds, scored with the global model each evaluated
  round (McMahan et al. 2017 score FedAvg on MNIST's official test set this way). It is the
  dataset's official test set (``split: {server: official}``), a random share of the pool
  held out before partitioning (``split: {server: 0.1}``), or the samples marked ``server``.
- Unseen clients (``split: {unseen_clients: 0.2}``): a share of the clients that never
  train and are served as newcomers at each evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plural.config import ConfigError
from plural.data.types import ArrayDataset

SPLIT_NAMES = ("train", "val", "test", "server")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}
"""Per-sample split marks: train 0, val 1, test 2, server 3."""
SERVER_CODE = SPLIT_CODES["server"]
OFFICIAL_TEST_DATASETS = ("mnist", "fashion_mnist", "cifar10")


class SplitError(ConfigError):
    """Split marks that cannot be used (unknown values, a client without training data)."""


def parse_split_marks(
    values: Any, what: str, n: int, client_names: Sequence[str] | None = None
) -> np.ndarray:
    """Per-sample split marks as int8 codes 0..3, from names or integers; a SplitError
    naming the offending values otherwise, and the clients holding them when
    ``client_names`` (each sample's client, as the user names it) is given."""
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise SplitError(f"{what}: expected one split mark per sample ({n}), got shape {arr.shape}")
    if arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0)):
        codes = arr.astype(np.int64)
        wrong = (codes < 0) | (codes > SERVER_CODE)
        allowed = ", ".join(f"{c} ({name})" for name, c in SPLIT_CODES.items())
        _refuse_unknown(what, sorted({int(v) for v in codes[wrong]}), wrong, allowed, client_names)
        return codes.astype(np.int8)
    text = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist()])
    wrong = ~np.isin(text, SPLIT_NAMES)
    allowed = f"{', '.join(SPLIT_NAMES)} (or 0, 1, 2, 3)"
    _refuse_unknown(what, sorted(set(text[wrong].tolist())), wrong, allowed, client_names)
    return np.array([SPLIT_CODES[v] for v in text.tolist()], dtype=np.int8)


def _refuse_unknown(
    what: str,
    unknown: list[Any],
    wrong: np.ndarray,
    allowed: str,
    client_names: Sequence[str] | None,
) -> None:
    if not unknown:
        return
    where = ""
    if client_names is not None:
        clients = sorted({str(client_names[i]) for i in np.flatnonzero(wrong)})
        more = f" and {len(clients) - 5} more" if len(clients) > 5 else ""
        where = f" in client{'s' if len(clients) > 1 else ''} {', '.join(clients[:5])}{more}"
    raise SplitError(f"{what}: unknown split values {unknown[:5]}{where}; allowed: {allowed}")


def subset(dataset: ArrayDataset, keep: np.ndarray) -> ArrayDataset:
    """The samples ``keep`` (a boolean mask or indices) of ``dataset``, per-sample fields too."""
    per_sample = ("client_ids", "sample_groups", "sample_splits", "official_test")
    fields = {
        name: None if getattr(dataset, name) is None else getattr(dataset, name)[keep]
        for name in per_sample
    }
    return dataclasses.replace(dataset, x=dataset.x[keep], y=dataset.y[keep], **fields)


@dataclasses.dataclass(frozen=True, eq=False)
class ServerSet:
    """The server's held-out samples (tensors, as the clients' splits are)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def _tensors(dataset: ArrayDataset, rows: np.ndarray) -> ServerSet:
    x_dtype = dataset.x.dtype if dataset.x.dtype.kind in "iu" else np.float32
    x = np.ascontiguousarray(dataset.x[rows], dtype=x_dtype)
    y = np.ascontiguousarray(dataset.y[rows], dtype=np.int64)
    return ServerSet(torch.from_numpy(x), torch.from_numpy(y))


def hold_out_server(
    dataset: ArrayDataset, server: float | str | None, rng: np.random.Generator
) -> tuple[ArrayDataset, ServerSet | None]:
    """The pool the clients share and the server set, if any (see the module docstring).

    ``rng`` is drawn from only for a fractional server set, so runs without one keep
    their federation exactly.
    """
    mask = np.zeros(len(dataset), dtype=bool)
    if dataset.sample_splits is not None:
        mask |= dataset.sample_splits == SERVER_CODE
    if server == "official":
        if dataset.official_test is None:
            raise ConfigError(
                f"split.server: dataset {dataset.name!r} has no official test set; "
                f"'official' works for {', '.join(OFFICIAL_TEST_DATASETS)} (and data whose "
                "samples are marked 'server'); use a fraction, e.g. split: {server: 0.1}"
            )
        mask |= dataset.official_test
    elif isinstance(server, float):
        candidates = np.flatnonzero(~mask)
        count = round(server * len(candidates))
        mask[rng.choice(candidates, size=count, replace=False)] = True
    if not mask.any():
        return dataset, None
    if mask.all():
        raise ConfigError(f"split.server: every sample of {dataset.name!r} is in the server set")
    return subset(dataset, ~mask), _tensors(dataset, np.flatnonzero(mask))


def fixed_client_splits(
    indices: np.ndarray, marks: np.ndarray, client: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A client's train / val / test sample indices exactly as the data marks them, in
    stored order; a SplitError naming the client if it has no training sample."""
    mine = marks[indices]
    parts = tuple(indices[mine == SPLIT_CODES[name]] for name in ("train", "val", "test"))
    if len(parts[0]) == 0:
        raise SplitError(
            f"client {client}: the data marks none of its {len(indices)} samples 'train'; "
            "every client needs training samples (mark some 'train', or drop the client)"
        )
    return parts  # type: ignore[return-value]


def choose_unseen(num_clients: int, share: float | None, rng: np.random.Generator) -> np.ndarray:
    """The sorted ids of the clients kept out of training (empty without ``share``)."""
    if share is None:
        return np.zeros(0, dtype=np.int64)
    count = round(share * num_clients)
    if count < 1 or count >= num_clients:
        raise ConfigError(
            f"split.unseen_clients: {share} of {num_clients} clients is {count}; it must leave "
            "at least one unseen and one training client"
        )
    return np.sort(rng.choice(num_clients, size=count, replace=False)).astype(np.int64)


def data_seed_of(config: Any) -> int:
    """The seed of the data side of a run (dataset, partition, split, transforms):
    ``data_seed`` when the config sets it, else ``seed``."""
    data_seed = getattr(config, "data_seed", None)
    return config.seed if data_seed is None else int(data_seed)


def record_split_source(config: Any, federation: Any) -> Any:
    """``config`` with ``split.from_data`` set when the federation's splits came from the
    data, so that ``config.yaml`` says the fractions were not used."""
    if not getattr(federation, "fixed_split", False) or config.split.from_data:
        return config
    split = dataclasses.replace(config.split, from_data=True)
    return dataclasses.replace(config, split=split)
