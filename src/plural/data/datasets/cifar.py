"""CIFAR-10, read from its python-pickle batches."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from plural.config import setting
from plural.data.datasets.common import (
    DataError,
    DatasetUnavailable,
    _official_test,
    _standardize_channels,
    _subset,
)
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


@dataclasses.dataclass(frozen=True)
class Cifar10Config:
    """Settings of CIFAR-10 (the python-pickle batches)."""

    data_dir: str = setting(
        "data/cifar-10-batches-py",
        help="folder of the extracted cifar-10-python.tar.gz (data_batch_1..5, test_batch)",
    )
    normalize: bool = setting(False, help="per-channel zero mean and unit std over the pool")
    max_samples: int | None = setting(
        None, help="keep a random subset of this many samples (for quick runs); null: all", ge=1
    )


def _pickle_field(batch: dict[Any, Any], key: str, path: Path) -> Any:
    """``batch[key]`` whether the pickle's keys are bytes or str."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{path}: no {key!r} entry; entries present: {sorted(map(str, batch))}")


def _load_pickle(path: Path) -> dict[Any, Any]:
    """A CIFAR python pickle (a dict); ValueError if it is not one."""
    try:
        with path.open("rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"{path}: not a readable CIFAR pickle ({err})") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    return batch


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (n, 3072) uint8 and labels (n,) int64 of one CIFAR-10 batch file."""
    batch = _load_pickle(path)
    data = np.asarray(_pickle_field(batch, "data", path), dtype=np.uint8)
    labels = np.asarray(_pickle_field(batch, "labels", path), dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"{path}: data {data.shape} / labels {labels.shape} are not (n, 3072) / (n,)"
        )
    return data, labels


def _cifar_class_names(root: Path) -> tuple[str, ...] | None:
    """Label names from batches.meta, or None if the file is absent."""
    meta_path = root / "batches.meta"
    if not meta_path.is_file():
        return None
    names = _pickle_field(_load_pickle(meta_path), "label_names", meta_path)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


@DATASETS.register("cifar10", Cifar10Config, "CIFAR-10, 60k pooled 32x32 colour images")
def load_cifar10(config: Cifar10Config, rng: np.random.Generator) -> ArrayDataset:
    """CIFAR-10 train + test batches (60k) as ``pixels / 255`` in ``(3, 32, 32)``."""
    root = Path(config.data_dir)
    missing = [name for name in CIFAR10_BATCHES if not (root / name).is_file()]
    if missing:
        hint = ""
        if root.name == "cifar-10-batches-py":
            hint = f" (tar xzf cifar-10-python.tar.gz -C {root.parent})"
        raise DatasetUnavailable(
            f"cifar10: {', '.join(missing)} not found in {root}. Download cifar-10-python.tar.gz "
            f"from {CIFAR10_URL} and extract it so that {root / 'data_batch_1'} exists{hint}"
        )
    parts = [_read_cifar_batch(root / name) for name in CIFAR10_BATCHES]
    pixels = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{root}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    idx = _subset(len(labels), config.max_samples, rng)
    official = _official_test(len(labels), len(parts[-1][1]), idx)
    if idx is not None:
        pixels, labels = pixels[idx], labels[idx]
    x = pixels.astype(np.float32).reshape(-1, 3, 32, 32)
    x /= 255.0
    if config.normalize:
        _standardize_channels(x)
    return ArrayDataset(
        name="cifar10",
        x=x,
        y=labels,
        num_classes=10,
        input_shape=(3, 32, 32),
        class_names=_cifar_class_names(root),
        official_test=official,
    )
