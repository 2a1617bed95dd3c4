"""Datasets, partitioners and federations; importing this package registers them."""

from plural.data import datasets, hf, partitioners, published, text, topics, transforms
from plural.data.datasets import DatasetUnavailable, from_arrays
from plural.data.federated import ClientData, FederatedDataset, TensorSplit
from plural.data.partitioners import sequential_split, train_val_test_split
from plural.data.types import ArrayDataset, Partition

__all__ = [
    "ArrayDataset",
    "ClientData",
    "DatasetUnavailable",
    "FederatedDataset",
    "Partition",
    "TensorSplit",
    "datasets",
    "from_arrays",
    "hf",
    "partitioners",
    "published",
    "sequential_split",
    "text",
    "topics",
    "train_val_test_split",
    "transforms",
]
