"""A federation: per-client train / validation / test tensors and known group ids."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from plural.data.partitioners import train_val_test_split
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
class ClientData:
    """Everything one client holds. It never leaves the client's worker."""

    client_id: int
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit

    def split(self, name: SplitName) -> TensorSplit:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, name)


@dataclasses.dataclass(frozen=True, eq=False)
class FederatedDataset:
    """Clients with their own splits, plus what is known about the federation."""

    name: str
    clients: list[ClientData]
    num_classes: int
    input_shape: tuple[int, ...]
    label_histogram: np.ndarray
    groups: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def client(self, client_id: int) -> ClientData:
        return self.clients[client_id]

    def sizes(self, split: SplitName = "train") -> np.ndarray:
        return np.array([len(c.split(split)) for c in self.clients], dtype=np.int64)

    @classmethod
    def build(
        cls,
        dataset: ArrayDataset,
        partition: Partition,
        *,
        val: float,
        test: float,
        rng: np.random.Generator,
    ) -> FederatedDataset:
        """Split each client's samples into train/val/test from its own distribution."""
        x = torch.from_numpy(np.ascontiguousarray(dataset.x, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(dataset.y, dtype=np.int64))
        clients = []
        for cid, indices in enumerate(partition.client_indices):
            parts = train_val_test_split(indices, dataset.y, val=val, test=test, rng=rng)
            splits = [TensorSplit(x[torch.from_numpy(p)], y[torch.from_numpy(p)]) for p in parts]
            clients.append(ClientData(cid, *splits))
        return cls(
            name=dataset.name,
            clients=clients,
            num_classes=dataset.num_classes,
            input_shape=tuple(dataset.input_shape),
            label_histogram=partition.label_histogram(dataset.y, dataset.num_classes),
            groups=None if partition.groups is None else np.asarray(partition.groups),
            class_names=dataset.class_names,
        )

    def describe(self) -> dict[str, object]:
        """Sizes, label histogram and groups, as plain data for ``federation.json``."""
        return {
            "dataset": self.name,
            "num_clients": self.num_clients,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "sizes": {s: self.sizes(s).tolist() for s in SPLITS},
            "label_histogram": self.label_histogram.tolist(),
            "groups": None if self.groups is None else self.groups.tolist(),
            "class_names": None if self.class_names is None else list(self.class_names),
        }
