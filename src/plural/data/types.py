"""Plain data types shared by loaders, partitioners and the federation builder."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A pool of labelled samples, before it is split among clients.

    ``x`` has shape ``(n, *input_shape)``: float32 features, or integer token ids (any
    integer dtype, e.g. uint8 characters of a text window) for text data. ``y`` is int64
    class ids in ``[0, num_classes)``. ``client_ids`` (one int per sample) is set where the
    data has a natural partition (one writer, one device, one speaking role);
    ``sample_groups`` (one int per sample) where samples carry a known ground-truth group.
    ``ordered`` says that each natural client's samples are stored in time order (the
    windows of a text), so a client's train / validation / test split should be sequential
    (train first, then validation, then test) rather than stratified at random.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    client_ids: np.ndarray | None = None
    sample_groups: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    ordered: bool = False
    sample_splits: np.ndarray | None = None
    """Per sample, the split the data marks it for: 0 train, 1 val, 2 test, 3 server
    (:data:`plural.data.splits.SPLIT_CODES`); None: the engine splits by fractions."""
    official_test: np.ndarray | None = None
    """Per sample, True for the dataset's official test set (built-in datasets that have
    one); ``split: {server: official}`` keeps those samples as the server set."""
    client_names: tuple[str, ...] | None = None
    """The user's id of each client id 0..K-1 (as text), where ids were mapped from them."""
    notes: tuple[str, ...] = ()
    """What loading changed about the data (e.g. images transposed to channels first)."""

    def __post_init__(self) -> None:
        n = len(self.y)
        if self.x.shape[0] != n:
            raise ValueError(f"{self.name}: x has {self.x.shape[0]} samples but y has {n}")
        if tuple(self.x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"{self.name}: x has shape {self.x.shape[1:]}, input_shape says {self.input_shape}"
            )
        if n and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), "
                f"got [{self.y.min()}, {self.y.max()}]"
            )
        for field in ("client_ids", "sample_groups", "sample_splits", "official_test"):
            values = getattr(self, field)
            if values is not None and len(values) != n:
                raise ValueError(f"{self.name}: {field} has {len(values)} entries for {n} samples")

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """Which samples of an :class:`ArrayDataset` each client holds.

    ``client_indices[k]`` are sample indices of client ``k``; ``groups[k]`` is the client's
    ground-truth group where the construction has groups, else ``groups`` is None.
    """

    client_indices: list[np.ndarray]
    groups: np.ndarray | None = None
    source_clients: np.ndarray | None = None
    """The dataset's client id (``ArrayDataset.client_ids``) of each client, for partitions of
    the dataset's natural clients."""

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def sizes(self) -> np.ndarray:
        return np.array([len(idx) for idx in self.client_indices], dtype=np.int64)

    def label_histogram(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Counts of each class per client, shape ``(num_clients, num_classes)``."""
        return np.stack(
            [np.bincount(labels[idx], minlength=num_classes) for idx in self.client_indices]
        )
