"""Dataset loaders.

Each loader turns its frozen settings dataclass and a NumPy generator (derived by the engine
from the run seed) into an :class:`~plural.data.types.ArrayDataset`: one pool of samples,
before any split among clients. Loaders are registered in :data:`plural.registry.DATASETS`
when this package is imported.

Data that is not on disk raises :class:`DatasetUnavailable`, whose message says how to get
it. Nothing here touches the network.

One module per source: ``synthetic``, ``digits``, ``mnist``, ``fashion`` (Fashion-MNIST),
``cifar`` (CIFAR-10), ``arrays`` (:func:`from_arrays`), ``npz`` and ``table`` (files of the
user's own data); ``common`` holds the errors and the helpers they share.
"""

from plural.data.datasets.arrays import channels_first as channels_first
from plural.data.datasets.arrays import from_arrays
from plural.data.datasets.cifar import Cifar10Config, load_cifar10
from plural.data.datasets.common import DataError, DatasetUnavailable
from plural.data.datasets.digits import DigitsConfig, load_digits
from plural.data.datasets.fashion import FASHION_FILES as FASHION_FILES
from plural.data.datasets.fashion import (
    FASHION_MNIST_CLASSES,
    FashionMnistConfig,
    load_fashion_mnist,
)
from plural.data.datasets.mnist import MnistConfig, load_mnist
from plural.data.datasets.npz import NpzConfig, load_npz
from plural.data.datasets.synthetic import SyntheticConfig, load_synthetic
from plural.data.datasets.table import TableConfig, load_table

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
