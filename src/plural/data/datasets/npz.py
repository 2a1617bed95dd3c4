"""Datasets from a NumPy ``.npz`` file of arrays."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from plural.config import setting
from plural.data.datasets.arrays import from_arrays
from plural.data.datasets.common import DataError, DatasetUnavailable
from plural.data.types import ArrayDataset
from plural.registry import DATASETS


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
