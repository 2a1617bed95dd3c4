"""A federation: per-client train / validation / test tensors and known group ids.

Clients may drift over time (temporal skew): a drifting client holds the data it has once
drifted and, per sample, the round from which that sample is drifted. ``client(cid, round)``
gives the data of that round, so the engine hands every client its current data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
import torch

from plural.data.partitioners import sequential_split, train_val_test_split
from plural.data.splits import ServerSet, fixed_client_splits
from plural.data.types import ArrayDataset, Partition

SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class TensorSplit:
    """Inputs and labels of one split of one client."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True, eq=False)
class Drift:
    """How a client's data changes over rounds.

    ``after`` holds the same samples as the client, transformed the way they are once
    drifted; ``switch_round[split][i]`` is the first round in which sample ``i`` of that
    split is drifted (an abrupt switch uses one round for all samples, a gradual one spreads
    them over an interval).
    """

    after: ClientData
    switch_round: Mapping[SplitName, torch.Tensor]

    def first_round(self) -> int:
        rounds = [int(r.min()) for r in self.switch_round.values() if len(r)]
        return min(rounds) if rounds else 0


@dataclasses.dataclass(frozen=True, eq=False)
class ClientData:
    """Everything one client holds. It never leaves the client's worker."""

    client_id: int
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    drift: Drift | None = None

    def split(self, name: SplitName) -> TensorSplit:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, name)

    def map_splits(self, fn: Callable[[SplitName, TensorSplit], TensorSplit]) -> ClientData:
        """A copy with ``fn`` applied to every split (the drifted data too)."""
        drift = self.drift
        if drift is not None:
            drift = Drift(drift.after.map_splits(fn), drift.switch_round)
        splits = {name: fn(name, self.split(name)) for name in SPLITS}
        return dataclasses.replace(self, **splits, drift=drift)

    def to(self, device: torch.device | str) -> ClientData:
        """A copy with every tensor (the drifted data and switch rounds too) on ``device``."""
        moved = self.map_splits(
            lambda _, split: TensorSplit(split.x.to(device), split.y.to(device))
        )
        if moved.drift is None:
            return moved
        rounds = {name: r.to(device) for name, r in moved.drift.switch_round.items()}
        return dataclasses.replace(moved, drift=Drift(moved.drift.after, rounds))

    def at(self, round_index: int) -> ClientData:
        """The client's data in round ``round_index`` (itself if it never drifts)."""
        if self.drift is None:
            return self
        drift = self.drift
        splits = {}
        for name in SPLITS:
            now = drift.switch_round[name] <= round_index
            before, after = self.split(name), drift.after.split(name)
            splits[name] = TensorSplit(
                torch.where(now.view(-1, *([1] * (before.x.dim() - 1))), after.x, before.x),
                torch.where(now, after.y, before.y),
            )
        return ClientData(self.client_id, splits["train"], splits["val"], splits["test"])


def client_names(dataset: ArrayDataset, partition: Partition) -> tuple[str, ...] | None:
    """The user's id of each client of ``partition``, where it holds the dataset's own
    clients: what client k of the federation was called in the data."""
    if partition.source_clients is None:
        return None
    names = dataset.client_names
    return tuple(str(i) if names is None else names[i] for i in partition.source_clients)


def combine_groups(group_ids: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """One ground-truth group per client: each distinct combination of the given groupings."""
    if not group_ids:
        return None
    columns = np.stack([np.asarray(g) for g in group_ids.values()], axis=1)
    _, combined = np.unique(columns, axis=0, return_inverse=True)
    return combined.reshape(-1).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedDataset:
    """Clients with their own splits, plus what is known about the federation.

    ``group_ids`` holds one grouping per construction step that has groups (the partition,
    a rotation, a label swap, ...); ``groups`` combines them into one true group per client.
    """

    name: str
    clients: list[ClientData]
    num_classes: int
    input_shape: tuple[int, ...]
    group_ids: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    server: ServerSet | None = None
    """Samples no client holds, scored with the server's model(s) (``split.server``)."""
    unseen: tuple[int, ...] = ()
    """Clients that never train and are served as newcomers (``split.unseen_clients``)."""
    fixed_split: bool = False
    """True when every client's train / val / test split came from the data."""
    client_names: tuple[str, ...] | None = None
    """The user's id of each client (from the data's client column), where known."""
    notes: tuple[str, ...] = ()
    """What loading changed about the data (``ArrayDataset.notes``)."""

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    @property
    def groups(self) -> np.ndarray | None:
        return combine_groups(self.group_ids)

    def client(self, client_id: int, round_index: int = 0) -> ClientData:
        """Client ``client_id``'s data as it is in round ``round_index``."""
        return self.clients[client_id].at(round_index)

    def sizes(self, split: SplitName = "train") -> np.ndarray:
        return np.array([len(c.split(split)) for c in self.clients], dtype=np.int64)

    @property
    def is_classification(self) -> bool:
        """False for regression targets (floating-point ``y``)."""
        return not any(c.train.y.is_floating_point() for c in self.clients)

    def label_histogram(self, round_index: int = 0) -> np.ndarray:
        """Counts of each class per client over all its splits, ``(clients, classes)``."""
        if not self.is_classification:
            raise ValueError(f"{self.name}: regression targets have no label histogram")
        rows = []
        for cid in range(self.num_clients):
            data = self.client(cid, round_index)
            labels = torch.cat([data.split(s).y for s in SPLITS])
            rows.append(np.bincount(labels.numpy(), minlength=self.num_classes))
        return np.stack(rows) if rows else np.zeros((0, self.num_classes), dtype=np.int64)

    def drift_rounds(self) -> list[int]:
        """Rounds in which some client's data starts to change (empty if none drifts)."""
        return sorted({c.drift.first_round() for c in self.clients if c.drift is not None})

    def to(self, device: torch.device | str) -> FederatedDataset:
        """A copy with every client's data on ``device`` (placed once, not per batch)."""
        server = self.server
        if server is not None:
            server = ServerSet(server.x.to(device), server.y.to(device))
        return dataclasses.replace(
            self, clients=[c.to(device) for c in self.clients], server=server
        )

    def with_clients(
        self,
        clients: list[ClientData],
        grouping: str | None = None,
        groups: np.ndarray | None = None,
    ) -> FederatedDataset:
        """A copy with new client data and, optionally, one more named grouping of clients."""
        if len(clients) != self.num_clients:
            raise ValueError(
                f"with_clients keeps the {self.num_clients} clients (got {len(clients)}); "
                "build a new FederatedDataset for another set of clients"
            )
        group_ids = dict(self.group_ids)
        if grouping is not None and groups is not None:
            if len(groups) != len(clients):
                raise ValueError(f"{grouping}: {len(groups)} group ids for {len(clients)} clients")
            group_ids[grouping] = np.asarray(groups, dtype=np.int64)
        return dataclasses.replace(self, clients=clients, group_ids=group_ids)

    @classmethod
    def build(
        cls,
        dataset: ArrayDataset,
        partition: Partition,
        *,
        val: float,
        test: float,
        rng: np.random.Generator,
        order: Literal["stratified", "sequential"] = "stratified",
    ) -> FederatedDataset:
        """Split each client's samples into train/val/test from its own distribution.

        ``order="stratified"`` draws each split at random, stratified by label
        (:func:`~plural.data.partitioners.train_val_test_split`); ``"sequential"`` keeps the
        samples' stored order, train first, then validation, then test
        (:func:`~plural.data.partitioners.sequential_split`), for data stored in time order.
        Data that marks each sample's split (``dataset.sample_splits``) is split exactly as
        marked instead, and ``val``, ``test`` and ``order`` are not used. Floating-point
        inputs become float32; integer inputs (token ids) keep their dtype.
        """
        if order not in ("stratified", "sequential"):
            raise ValueError(f"unknown split order {order!r}; allowed: stratified, sequential")
        x_dtype = dataset.x.dtype if dataset.x.dtype.kind in "iu" else np.float32
        x = torch.from_numpy(np.ascontiguousarray(dataset.x, dtype=x_dtype))
        y = torch.from_numpy(np.ascontiguousarray(dataset.y, dtype=np.int64))
        clients = []
        marks = dataset.sample_splits
        for cid, indices in enumerate(partition.client_indices):
            if marks is not None:
                parts = fixed_client_splits(indices, marks, cid)
            elif order == "sequential":
                parts = sequential_split(indices, val=val, test=test)
            else:
                parts = train_val_test_split(indices, dataset.y, val=val, test=test, rng=rng)
            splits = [TensorSplit(x[torch.from_numpy(p)], y[torch.from_numpy(p)]) for p in parts]
            clients.append(ClientData(cid, *splits))
        group_ids = {} if partition.groups is None else {"partition": np.asarray(partition.groups)}
        return cls(
            name=dataset.name,
            clients=clients,
            num_classes=dataset.num_classes,
            input_shape=tuple(dataset.input_shape),
            group_ids=group_ids,
            class_names=dataset.class_names,
            fixed_split=marks is not None,
            client_names=client_names(dataset, partition),
            notes=dataset.notes,
        )

    def describe(self) -> dict[str, object]:
        """Sizes, label histogram and groups, as plain data for ``federation.json``."""
        groups = self.groups
        return {
            "dataset": self.name,
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "sizes": {s: self.sizes(s).tolist() for s in SPLITS},
            "label_histogram": self.label_histogram().tolist() if self.is_classification else None,
            "groups": None if groups is None else groups.tolist(),
            "group_ids": {name: ids.tolist() for name, ids in self.group_ids.items()},
            "drift_rounds": self.drift_rounds(),
            "class_names": None if self.class_names is None else list(self.class_names),
            **({"server_size": len(self.server)} if self.server is not None else {}),
            **({"unseen": list(self.unseen)} if self.unseen else {}),
            **({"split_from_data": True} if self.fixed_split else {}),
            "client_names": None if self.client_names is None else list(self.client_names),
            "notes": list(self.notes),
        }
