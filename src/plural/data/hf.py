"""Hugging Face datasets read from disk, and Flower Datasets partitioners by name.

``dataset: {name: hf, path: DIR, label_column: label, ...}`` reads a dataset written with
``datasets.Dataset.save_to_disk`` (a ``Dataset`` or a ``DatasetDict``, whose splits are
pooled), or local Parquet / Arrow files, through the ``datasets`` library (extra:
``plural[hf]``). Nothing is downloaded: a path that is not on disk is an error that says so.

The model's input is chosen from the columns: one image column (decoded to float arrays in
[0, 1], channels first), one text column (MiniLM word-piece ids, as ``fortune_topics``), or
numeric columns (scalars, or one column of fixed-shape arrays). Labels, client ids and groups
of any type are mapped as :func:`~plural.data.datasets.from_arrays` maps them.

``partition: {name: flwr, partitioner: DirichletPartitioner, num_partitions: 10, settings:
{alpha: 0.3}}`` splits any dataset with a partitioner of Flower Datasets (``flwr-datasets``),
so a partition known from Flower can be reused; it needs that package installed.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plural.config import ConfigError, setting
from plural.data.datasets import DataError, DatasetUnavailable, from_arrays
from plural.data.types import ArrayDataset, Partition
from plural.registry import DATASETS, PARTITIONERS

HF_INSTALL = "pip install 'plural[hf]' (the Hugging Face datasets library)"
FILE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}


@dataclasses.dataclass(frozen=True)
class HfConfig:
    """Settings of a Hugging Face dataset on disk."""

    path: str = setting(
        help="a folder written by datasets' save_to_disk, a .parquet / .arrow file, or a "
        "folder of such files (read offline)"
    )
    label_column: str = setting("label", help="column of class labels (any values)")
    client_column: str | None = setting(
        None, help="column of client ids, any type (the natural partition)"
    )
    split_column: str | None = setting(
        None,
        help="column of per-sample split marks (train, val, test, server or 0..3): each "
        "client's samples are used as marked (null: split by fractions)",
    )
    group_column: str | None = setting(None, help="column of ground-truth group ids")
    feature_columns: tuple[str, ...] | None = setting(
        None,
        help="input columns; null: the one image column, else the one text column, else "
        "every other numeric column",
    )
    splits: tuple[str, ...] | None = setting(
        None, help="a DatasetDict's splits to read (null: all of them, pooled)"
    )
    max_tokens: int = setting(
        64, help="text input: word pieces per sample, [CLS] and [SEP] included", ge=2
    )
    num_classes: int | None = setting(None, help="class count; null: from the labels", ge=1)

    def special_columns(self) -> list[str]:
        """The label, client, split and group columns that are set."""
        named = (self.label_column, self.client_column, self.split_column, self.group_column)
        return [c for c in named if c]

    def __post_init__(self) -> None:
        special = self.special_columns()
        if len(set(special)) != len(special):
            raise ConfigError(
                "label_column, client_column, split_column and group_column must differ"
            )
        clash = sorted(set(self.feature_columns or ()) & set(special))
        if clash:
            raise ConfigError(f"feature_columns: {', '.join(clash)} is a label/client/group column")
        if self.feature_columns is not None and not self.feature_columns:
            raise ConfigError("feature_columns: give at least one column, or null to choose")


def _datasets_module() -> Any:
    try:
        return importlib.import_module("datasets")
    except ImportError as err:
        message = f"hf: the datasets library is not installed; {HF_INSTALL}"
        raise DatasetUnavailable(message) from err


def _data_files(path: Path) -> tuple[str, list[str]] | None:
    """(format, files) when ``path`` is a Parquet / Arrow file or a folder of them."""
    if path.is_file():
        kind = FILE_SUFFIXES.get(path.suffix.lower())
        return (kind, [str(path)]) if kind else None
    for kind in ("parquet", "arrow"):
        files = sorted(
            str(p) for p in path.rglob("*") if FILE_SUFFIXES.get(p.suffix.lower()) == kind
        )
        if files and not (path / "dataset_info.json").exists() and not _is_saved(path):
            return kind, files
    return None


def _is_saved(path: Path) -> bool:
    """True for a folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def read_hf(config: HfConfig) -> Any:
    """The ``datasets.Dataset`` at ``config.path`` (a DatasetDict's chosen splits pooled)."""
    path = Path(config.path).expanduser()
    if not path.exists():
        raise DatasetUnavailable(
            f"hf: {str(path)!r} does not exist; plural reads Hugging Face datasets offline: "
            "save one first with datasets.load_dataset(...).save_to_disk(PATH), or give local "
            ".parquet / .arrow files"
        )
    hf = _datasets_module()
    try:
        files = _data_files(path)
        if files is not None:
            kind, names = files
            if kind == "parquet":
                loaded = hf.Dataset.from_parquet(names)
            else:
                loaded = hf.concatenate_datasets([hf.Dataset.from_file(n) for n in names])
        elif _is_saved(path):
            loaded = hf.load_from_disk(str(path))
        else:
            raise DataError(
                f"hf: {str(path)!r} is neither a folder written by save_to_disk nor .parquet / "
                ".arrow files"
            )
    except (DataError, DatasetUnavailable):
        raise
    except Exception as err:  # datasets and pyarrow raise many types for damaged files
        raise DataError(f"hf: cannot read {path} ({type(err).__name__}: {err})") from err
    return _pooled(hf, loaded, config.splits, path)


def _pooled(hf: Any, loaded: Any, splits: Sequence[str] | None, path: Path) -> Any:
    if not isinstance(loaded, hf.DatasetDict):
        if splits is not None:
            raise ConfigError(f"dataset.splits: {path} is one Dataset, not a DatasetDict")
        return loaded
    names = list(loaded)
    chosen = names if splits is None else list(splits)
    unknown = [s for s in chosen if s not in loaded]
    if unknown:
        raise ConfigError(
            f"dataset.splits: {path} has no split {', '.join(map(repr, unknown))}; "
            f"splits: {', '.join(names)}"
        )
    return hf.concatenate_datasets([loaded[s] for s in chosen])


def _kind(feature: Any) -> str:
    """'image', 'text', 'number', 'array' or 'other' for a ``datasets`` feature type."""
    name = type(feature).__name__
    if name == "Image":
        return "image"
    if name == "ClassLabel":
        return "number"
    if name == "Value":
        dtype = str(feature.dtype)
        if dtype in ("string", "large_string"):
            return "text"
        return "number" if dtype.startswith(("int", "uint", "float", "bool")) else "other"
    if name in ("Sequence", "List", "LargeList") or name.startswith("Array"):
        return "array"
    return "other"


def _feature_columns(dataset: Any, config: HfConfig) -> tuple[str, list[str]]:
    """(kind, columns) of the model's input: 'image', 'text', 'number' or 'array'."""
    features = dataset.features
    special = set(config.special_columns())
    if config.feature_columns is not None:
        kinds = {c: _kind(features[c]) for c in config.feature_columns}
        distinct = set(kinds.values())
        if len(config.feature_columns) == 1 or distinct == {"number"}:
            return distinct.pop(), list(config.feature_columns)
        raise ConfigError(
            "dataset.feature_columns: give one image, text or array column, or numeric columns "
            f"only; got {', '.join(f'{c} ({k})' for c, k in kinds.items())}"
        )
    rest = {c: _kind(f) for c, f in features.items() if c not in special}
    for kind in ("image", "text", "array"):
        columns = [c for c, k in rest.items() if k == kind]
        if len(columns) == 1:
            return kind, columns
        if len(columns) > 1:
            raise ConfigError(
                f"dataset: {len(columns)} {kind} columns ({', '.join(columns)}); name the input "
                "with feature_columns"
            )
    numbers = [c for c, k in rest.items() if k == "number"]
    if not numbers:
        raise ConfigError(
            f"dataset: no input column among {', '.join(rest) or 'none'} (columns: "
            f"{', '.join(features)}); name one with feature_columns"
        )
    return "number", numbers


def _image_array(image: Any, column: str, row: int) -> np.ndarray:
    """One decoded image as float32 ``(C, H, W)`` in [0, 1]."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise DataError(f"hf: {column}[{row}] decodes to shape {pixels.shape}, not an image")
    scale = 255.0 if pixels.dtype == np.uint8 else 65535.0 if pixels.dtype == np.uint16 else 1.0
    return np.transpose(pixels.astype(np.float32) / scale, (2, 0, 1))


def _images(dataset: Any, column: str) -> np.ndarray:
    arrays = [_image_array(image, column, row) for row, image in enumerate(dataset[column])]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(
            f"hf: images in {column!r} differ in size ({shapes[0]} ... {shapes[-1]}); resize "
            "them to one size first (e.g. dataset.map with PIL's resize)"
        )
    return np.stack(arrays) if arrays else np.zeros((0, 1), np.float32)


def _numbers(dataset: Any, kind: str, columns: list[str]) -> np.ndarray:
    table = dataset.with_format("numpy")
    if kind == "array":
        try:
            return np.stack([np.asarray(v, dtype=np.float32) for v in table[columns[0]]])
        except ValueError as err:
            raise DataError(f"hf: {columns[0]!r} holds arrays of different shapes") from err
    return np.stack([np.asarray(table[c], dtype=np.float32) for c in columns], axis=1)


def _column_values(dataset: Any, column: str | None) -> np.ndarray | None:
    return None if column is None else np.asarray(list(dataset[column]))


def _class_names(dataset: Any, column: str) -> tuple[str, ...] | None:
    feature = dataset.features[column]
    return tuple(feature.names) if type(feature).__name__ == "ClassLabel" else None


def _split_marks(dataset: Any, config: HfConfig) -> dict[str, Any]:
    """``from_arrays``' ``split=`` argument, where the config names a split column."""
    if config.split_column is None:
        return {}
    if "split" not in inspect.signature(from_arrays).parameters:
        raise ConfigError(
            "dataset.split_column: this version of plural cannot take per-sample split marks "
            "(from_arrays has no split=); leave split_column out"
        )
    return {"split": _column_values(dataset, config.split_column)}


@DATASETS.register(
    "hf",
    HfConfig,
    "a Hugging Face dataset on disk (save_to_disk folder, Parquet or Arrow; extra plural[hf])",
)
def load_hf(config: HfConfig, rng: np.random.Generator) -> ArrayDataset:
    """Inputs, labels and optional client / group / split columns of a dataset on disk."""
    dataset = read_hf(config)
    if len(dataset) == 0:
        raise DataError(f"hf: {config.path}: the data has no samples (zero rows)")
    columns = list(dataset.features)
    missing = [
        c for c in (*config.special_columns(), *(config.feature_columns or ())) if c not in columns
    ]
    if missing:
        raise ConfigError(
            f"dataset: {config.path} has no column {', '.join(map(repr, missing))}; "
            f"columns: {', '.join(columns)}"
        )
    kind, inputs = _feature_columns(dataset, config)
    if kind == "image":
        x = _images(dataset, inputs[0])
    elif kind == "text":
        from plural.models.text import tokenize  # needs plural[text]

        x = np.zeros((len(dataset), 1), np.float32)  # replaced by the token ids below
    else:
        x = _numbers(dataset, kind, inputs)
    try:
        data = from_arrays(
            x,
            _column_values(dataset, config.label_column),
            client_ids=_column_values(dataset, config.client_column),
            sample_groups=_column_values(dataset, config.group_column),
            num_classes=config.num_classes,
            name="hf",
            **_split_marks(dataset, config),
        )
    except DataError as err:
        raise DataError(f"{config.path}: {err}") from err
    if kind == "text":
        tokens = tokenize([str(t) for t in dataset[inputs[0]]], config.max_tokens)
        data = dataclasses.replace(data, x=tokens, input_shape=(config.max_tokens,))
    names = _class_names(dataset, config.label_column)
    if names is not None and data.class_names is None and len(names) >= data.num_classes:
        data = dataclasses.replace(data, class_names=names, num_classes=len(names))
    return data


# --------------------------------------------------------------------------- Flower partitioners

FLWR_INSTALL = "pip install flwr-datasets"


def flwr_datasets_installed() -> bool:
    """Whether Flower Datasets (``flwr_datasets``) can be imported here."""
    return importlib.util.find_spec("flwr_datasets") is not None


@dataclasses.dataclass(frozen=True)
class FlwrConfig:
    """A Flower Datasets partitioner chosen by its class name."""

    partitioner: str = setting(
        help="class name in flwr_datasets.partitioner, e.g. IidPartitioner, "
        "DirichletPartitioner, PathologicalPartitioner"
    )
    num_partitions: int = setting(help="number of clients", ge=1)
    settings: dict[str, Any] = setting(
        default_factory=dict,
        help="the partitioner's other keyword arguments (partition_by defaults to the label "
        "column, 'label'; seed to the run's)",
    )

    def __post_init__(self) -> None:
        if not flwr_datasets_installed():
            raise ConfigError(
                f"partition (flwr): Flower Datasets is not installed; {FLWR_INSTALL}, or use "
                f"one of plural's partitioners ({', '.join(n for n in PARTITIONERS.names())})"
            )


def _flwr_partitioner(config: FlwrConfig, seed: int) -> Any:
    module = importlib.import_module("flwr_datasets.partitioner")
    cls = getattr(module, config.partitioner, None)
    if not isinstance(cls, type):
        offered = sorted(n for n in dir(module) if n.endswith("Partitioner"))
        raise ConfigError(
            f"partition.partitioner: flwr_datasets has no {config.partitioner!r}; "
            f"offered: {', '.join(offered)}"
        )
    accepted = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"num_partitions": config.num_partitions, **config.settings}
    if "partition_by" in accepted:
        kwargs.setdefault("partition_by", "label")
    if "seed" in accepted:
        kwargs.setdefault("seed", seed)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"partition ({config.partitioner}): {err}") from err


@PARTITIONERS.register(
    "flwr", FlwrConfig, "a Flower Datasets partitioner by name (needs flwr-datasets)"
)
class FlwrPartitioner:
    """Any partitioner of Flower Datasets, applied to plural's data through a Hugging Face
    dataset of each sample's label and index."""

    def __init__(self, config: FlwrConfig) -> None:
        self.config = config

    def split(self, data: ArrayDataset, *, rng: np.random.Generator) -> Partition:
        hf = _datasets_module()
        table: Mapping[str, Any] = {"label": data.y.tolist(), "index": list(range(len(data)))}
        partitioner = _flwr_partitioner(self.config, int(rng.integers(2**31)))
        partitioner.dataset = hf.Dataset.from_dict(dict(table))
        indices = [
            np.sort(np.asarray(partitioner.load_partition(k)["index"], dtype=np.int64))
            for k in range(self.config.num_partitions)
        ]
        return Partition(indices)
