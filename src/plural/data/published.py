"""Readers for published federations whose clients' splits are fixed: LEAF and PFLlib.

- LEAF (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings") stores a folder of
  JSON files per split, ``train/*.json`` and ``test/*.json``, each with ``users``,
  ``num_samples`` and ``user_data`` (``{user: {"x": [...], "y": [...]}}``).
- PFLlib (Zhang et al. 2023, "PFLlib: Personalized Federated Learning Algorithm Library")
  stores one file per client and split, ``train/<k>.npz`` and ``test/<k>.npz``, holding
  ``x`` and ``y``, or (as PFLlib's own generators write it) one pickled ``data`` dict with
  ``x`` and ``y``. That dict is read with an unpickler that admits NumPy arrays only.

Both read the split as given: every sample is marked train or test, each client is one
natural client (use ``partition: natural``), and the engine's split fractions are not used.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from plural.config import setting
from plural.data.datasets import DataError, DatasetUnavailable, from_arrays
from plural.data.splits import SPLIT_CODES
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

READ_SPLITS = ("train", "test")


def _reshaped(dataset: ArrayDataset, input_shape: tuple[int, ...] | None) -> ArrayDataset:
    """``dataset`` with each sample's features reshaped to ``input_shape`` (e.g. FEMNIST's
    784 pixels as ``[1, 28, 28]``)."""
    if input_shape is None:
        return dataset
    size = int(np.prod(dataset.input_shape))
    if int(np.prod(input_shape)) != size:
        raise DataError(
            f"{dataset.name}: input_shape {list(input_shape)} does not hold the {size} "
            f"features of each sample (shape {list(dataset.input_shape)})"
        )
    x = dataset.x.reshape(len(dataset.x), *input_shape)
    return dataclasses.replace(dataset, x=x, input_shape=tuple(input_shape))


def _split_folders(root: Path, name: str, pattern: str) -> dict[str, list[Path]]:
    """The files of ``root/train`` and ``root/test``; DatasetUnavailable if either is missing."""
    if not root.is_dir():
        raise DatasetUnavailable(f"{name}: folder {root} not found (it should hold train/, test/)")
    found = {}
    for split in READ_SPLITS:
        files = sorted((root / split).glob(pattern)) if (root / split).is_dir() else []
        if not files:
            raise DatasetUnavailable(f"{name}: no {root / split / pattern} files")
        found[split] = files
    return found


def _stack(parts: Iterable[np.ndarray], what: str) -> np.ndarray:
    arrays = list(parts)
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{what}: samples have different shapes {sorted(shapes)}")
    return np.concatenate(arrays)


# --------------------------------------------------------------------------- LEAF


@dataclasses.dataclass(frozen=True)
class LeafConfig:
    """Settings of a LEAF federation (JSON folders)."""

    path: str = setting(help="folder holding LEAF's train/*.json and test/*.json")
    input_shape: tuple[int, ...] | None = setting(
        None, help="reshape each sample's features, e.g. [1, 28, 28] for FEMNIST (null: flat)"
    )
    num_classes: int | None = setting(None, help="class count; null: from the labels", ge=1)


def _read_leaf_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"leaf: cannot read {path} as JSON ({err})") from err
    missing = [k for k in ("users", "user_data") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(
            f"leaf: {path} has no {', '.join(missing)} (LEAF files hold users, "
            "num_samples and user_data)"
        )
    return data


def _leaf_samples(path: Path, data: dict[str, Any]) -> Iterable[tuple[str, Any, Any]]:
    """(user, x, y) per user of one LEAF file, checked against ``num_samples``."""
    counts = data.get("num_samples")
    for index, user in enumerate(data["users"]):
        record = data["user_data"].get(user)
        if not isinstance(record, dict) or "x" not in record or "y" not in record:
            raise DataError(f"leaf: {path}: user_data[{user!r}] has no 'x' and 'y'")
        x, y = record["x"], record["y"]
        if len(x) != len(y):
            raise DataError(f"leaf: {path}: user {user!r} has {len(x)} inputs, {len(y)} labels")
        if counts is not None and index < len(counts) and counts[index] != len(y):
            raise DataError(
                f"leaf: {path}: user {user!r} has {len(y)} samples, num_samples says "
                f"{counts[index]}"
            )
        if x and isinstance(x[0], str):
            raise DataError(
                f"leaf: {path}: user {user!r} has text inputs; this reader takes numeric "
                "features (FEMNIST, CelebA features, synthetic), not text (Shakespeare, Sent140)"
            )
        yield str(user), x, y


@DATASETS.register("leaf", LeafConfig, "a LEAF federation (train/test JSON folders), as split")
def load_leaf(config: LeafConfig, rng: np.random.Generator) -> ArrayDataset:
    """Every user of the LEAF folder as one client, its samples marked train or test as
    the files give them."""
    files = _split_folders(Path(config.path), "leaf", "*.json")
    xs, ys, users, marks = [], [], [], []
    trained: set[str] = set()
    for split, paths in files.items():
        for path in paths:
            for user, x, y in _leaf_samples(path, _read_leaf_file(path)):
                if not y:
                    continue
                xs.append(np.asarray(x, dtype=np.float32).reshape(len(y), -1))
                ys.append(np.asarray(y))
                users += [user] * len(y)
                marks.append(np.full(len(y), SPLIT_CODES[split], dtype=np.int8))
                if split == "train":
                    trained.add(user)
    untrained = sorted(set(users) - trained)
    if untrained:
        raise DataError(
            f"leaf: users {untrained[:5]} have test samples but no training samples; every "
            "client needs training data"
        )
    dataset = from_arrays(
        _stack(xs, "leaf"),
        np.concatenate(ys),
        client_ids=np.asarray(users),
        num_classes=config.num_classes,
        name="leaf",
        split=np.concatenate(marks),
    )
    return _reshaped(dataset, config.input_shape)


# --------------------------------------------------------------------------- PFLlib


@dataclasses.dataclass(frozen=True)
class PfllibConfig:
    """Settings of a PFLlib federation (per-client .npz files)."""

    path: str = setting(help="folder holding PFLlib's train/<k>.npz and test/<k>.npz")
    input_shape: tuple[int, ...] | None = setting(
        None, help="reshape each sample's features (null: as stored)"
    )
    num_classes: int | None = setting(None, help="class count; null: from the labels", ge=1)


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds NumPy arrays, dicts and lists and refuses anything else
    (``pickle`` would run any callable the file names)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _pickled_member(archive: zipfile.ZipFile, member: str, path: Path) -> Any:
    """An object-dtype ``.npy`` member, unpickled with :class:`_ArraysOnly`."""
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(handle)
        if not dtype.hasobject:
            return np.lib.format.read_array(io.BytesIO(archive.read(member)))
        try:
            value = _ArraysOnly(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
            raise DataError(f"pfllib: {path}[{member!r}] cannot be read safely ({err})") from err
    return value.reshape(shape) if isinstance(value, np.ndarray) else value


def _read_pfllib_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` of one client's split, from top-level arrays or a ``data`` dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(m).stem: m for m in archive.namelist()}
            if "x" in members and "y" in members:
                x = np.lib.format.read_array(io.BytesIO(archive.read(members["x"])))
                y = np.lib.format.read_array(io.BytesIO(archive.read(members["y"])))
                return x, y
            if "data" not in members:
                raise DataError(
                    f"pfllib: {path} holds neither x and y nor a data dict; keys: "
                    f"{', '.join(sorted(members))}"
                )
            data = _pickled_member(archive, members["data"], path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"pfllib: cannot read {path} as .npz ({err})") from err
    if isinstance(data, np.ndarray) and data.dtype == object and data.shape == ():
        data = data.item()
    if not isinstance(data, dict) or "x" not in data or "y" not in data:
        raise DataError(f"pfllib: {path}: data is not a dict with 'x' and 'y'")
    return np.asarray(data["x"]), np.asarray(data["y"])


_CLIENT_FILE = re.compile(r"^(\d+)$")


def _client_files(paths: list[Path], split: str) -> dict[int, Path]:
    named = {}
    for path in paths:
        match = _CLIENT_FILE.match(path.stem)
        if match is None:
            raise DataError(f"pfllib: {path} is not named <client>.npz with a client number")
        named[int(match.group(1))] = path
    return named


@DATASETS.register("pfllib", PfllibConfig, "a PFLlib federation (per-client .npz), as split")
def load_pfllib(config: PfllibConfig, rng: np.random.Generator) -> ArrayDataset:
    """Client ``k`` holds ``train/k.npz`` (marked train) and ``test/k.npz`` (marked test)."""
    files = _split_folders(Path(config.path), "pfllib", "*.npz")
    by_split = {split: _client_files(paths, split) for split, paths in files.items()}
    untrained = sorted(set(by_split["test"]) - set(by_split["train"]))
    if untrained:
        raise DataError(f"pfllib: clients {untrained[:5]} have test/ files but no train/ file")
    xs, ys, clients, marks = [], [], [], []
    for client in sorted(by_split["train"]):
        for split in READ_SPLITS:
            path = by_split[split].get(client)
            if path is None:
                continue
            x, y = _read_pfllib_file(path)
            if len(x) != len(y):
                raise DataError(f"pfllib: {path}: {len(x)} inputs but {len(y)} labels")
            if split == "train" and len(y) == 0:
                raise DataError(f"pfllib: client {client} has no training samples ({path})")
            xs.append(np.asarray(x, dtype=np.float32))
            ys.append(np.asarray(y).reshape(-1))
            clients.append(np.full(len(y), client, dtype=np.int64))
            marks.append(np.full(len(y), SPLIT_CODES[split], dtype=np.int8))
    dataset = from_arrays(
        _stack(xs, "pfllib"),
        np.concatenate(ys),
        client_ids=np.concatenate(clients),
        num_classes=config.num_classes,
        name="pfllib",
        split=np.concatenate(marks),
    )
    return _reshaped(dataset, config.input_shape)
