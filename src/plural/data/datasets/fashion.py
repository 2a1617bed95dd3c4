"""Fashion-MNIST, read from its original gzipped IDX files."""

from __future__ import annotations

import dataclasses
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from plural.config import setting
from plural.data.datasets.common import (
    DataError,
    DatasetUnavailable,
    _official_test,
    _standardize_features,
    _subset,
)
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes as a uint8 array; ValueError if malformed."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a readable gzip file ({err})") from err
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_fashion_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and labels (n,) of one Fashion-MNIST split."""
    images_path = root / FASHION_FILES[f"{split}_images"]
    labels_path = root / FASHION_FILES[f"{split}_labels"]
    images = _read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise DataError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
    if len(labels) and labels.max() >= 10:
        raise DataError(f"{labels_path}: label {labels.max()} is outside 0..9")
    return images, labels


@dataclasses.dataclass(frozen=True)
class FashionMnistConfig:
    """Settings of Fashion-MNIST (read from its original IDX files)."""

    data_dir: str = setting(
        "/usr/share/datasets/fashion-mnist",
        help="folder with the four IDX .gz files (where the Debian package "
        "dataset-fashion-mnist installs them)",
    )
    standardize: bool = setting(
        False, help="per-pixel zero mean and unit std over the pool (constant pixels stay 0)"
    )
    max_samples: int | None = setting(
        None, help="keep a random subset of this many samples (for quick runs); null: all", ge=1
    )


@DATASETS.register("fashion_mnist", FashionMnistConfig, "Fashion-MNIST, 70k pooled (IDX files)")
def load_fashion_mnist(config: FashionMnistConfig, rng: np.random.Generator) -> ArrayDataset:
    """Fashion-MNIST train + test (70k) as ``pixels / 255`` in ``(1, 28, 28)``."""
    root = Path(config.data_dir)
    missing = [name for name in FASHION_FILES.values() if not (root / name).is_file()]
    if missing:
        raise DatasetUnavailable(
            f"fashion_mnist: {', '.join(missing)} not found in {root}. Run "
            "`apt-get install dataset-fashion-mnist`, or put the four IDX .gz files "
            f"({', '.join(FASHION_FILES.values())}) in {root}"
        )
    train_x, train_y = _read_fashion_split(root, "train")
    test_x, test_y = _read_fashion_split(root, "test")
    pixels = np.concatenate([train_x, test_x])
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    idx = _subset(len(labels), config.max_samples, rng)
    official = _official_test(len(labels), len(test_y), idx)
    if idx is not None:
        pixels, labels = pixels[idx], labels[idx]
    x = (pixels.astype(np.float32) / 255.0)[:, None, :, :]
    if config.standardize:
        _standardize_features(x)
    return ArrayDataset(
        name="fashion_mnist",
        x=x,
        y=labels,
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=FASHION_MNIST_CLASSES,
        official_test=official,
    )
