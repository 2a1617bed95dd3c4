"""A device's own data: the data spec a SuperNode is started with.

A client on a device does not run the federation builder; it reads its data from one path
(``--node-config "data='PATH'"``):

* ``.npz`` with ``train_x, train_y, val_x, val_y, test_x, test_y``: splits as they are (what
  :func:`export_clients` writes, so a deployment can be checked against a simulation);
* ``.npz`` with ``x, y``, a ``.parquet`` file (a ``label`` column, the other columns are
  features, or one ``x`` column of lists), or a folder saved by Hugging Face
  ``datasets.Dataset.save_to_disk`` (columns ``x`` and ``label``): the client's samples, split
  into train / validation / test with the config's ``split`` settings and a generator drawn
  from (seed, "split", client).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from plural.config import ConfigError
from plural.core.rng import numpy_rng
from plural.data.federated import SPLITS, ClientData, FederatedDataset, TensorSplit
from plural.data.partitioners import sequential_split, train_val_test_split
from plural.experiment import ExperimentConfig

SPLIT_KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("x", "y"))


def _tensor_split(x: np.ndarray, y: np.ndarray) -> TensorSplit:
    x_dtype = x.dtype if x.dtype.kind in "iu" else np.float32
    return TensorSplit(
        torch.from_numpy(np.ascontiguousarray(x, dtype=x_dtype)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


def _split_samples(
    x: np.ndarray, y: np.ndarray, cfg: ExperimentConfig, client_id: int
) -> ClientData:
    indices = np.arange(len(y))
    if cfg.split.order == "sequential":
        parts = sequential_split(indices, val=cfg.split.val, test=cfg.split.test)
    else:
        rng = numpy_rng(cfg.seed, "split", client_id)
        parts = train_val_test_split(indices, y, val=cfg.split.val, test=cfg.split.test, rng=rng)
    splits = [_tensor_split(x[p], y[p]) for p in parts]
    return ClientData(client_id, *splits)


def _read_samples(path: Path) -> tuple[np.ndarray, np.ndarray] | dict[str, np.ndarray]:
    """The file's arrays: six split arrays (a dict) or (x, y)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if set(SPLIT_KEYS) <= keys:
                return {k: npz[k] for k in SPLIT_KEYS}
            if {"x", "y"} <= keys:
                return npz["x"], npz["y"]
            raise ConfigError(
                f"data spec {str(path)!r}: an .npz needs {', '.join(SPLIT_KEYS)} or x and y; "
                f"it has {', '.join(sorted(keys)) or 'no arrays'}"
            )
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return _from_columns(path, frame)
    if path.is_dir():
        try:
            import datasets
        except ImportError as error:
            raise ConfigError(
                f"data spec {str(path)!r}: a folder is read as a Hugging Face dataset, which "
                "needs the `datasets` package"
            ) from error
        return _from_columns(path, datasets.load_from_disk(str(path)).to_pandas())
    raise ConfigError(
        f"data spec {str(path)!r}: expected an .npz file, a .parquet file or a Hugging Face "
        "dataset folder"
    )


def _from_columns(path: Path, frame: object) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    assert isinstance(frame, pd.DataFrame)
    if "label" not in frame.columns:
        raise ConfigError(
            f"data spec {str(path)!r}: needs a 'label' column; it has "
            f"{', '.join(map(str, frame.columns))}"
        )
    y = frame["label"].to_numpy()
    if "x" in frame.columns:
        x = np.stack([np.asarray(v) for v in frame["x"]])
    else:
        x = frame.drop(columns=["label"]).to_numpy()
    return x, y


def load_client(path: str | Path, cfg: ExperimentConfig, client_id: int) -> ClientData:
    """Client ``client_id``'s data from its data spec ``path``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"data spec: {str(path)!r} does not exist on this node")
    arrays = _read_samples(path)
    if isinstance(arrays, dict):
        splits = [_tensor_split(arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in SPLITS]
        return ClientData(client_id, *splits)
    x, y = arrays
    if len(x) != len(y):
        raise ConfigError(f"data spec {str(path)!r}: {len(x)} inputs but {len(y)} labels")
    return _split_samples(x, y, cfg, client_id)


def local_federation(
    clients: Sequence[ClientData], num_clients: int, num_classes: int, name: str = "device"
) -> FederatedDataset:
    """A federation of ``num_clients`` in which only ``clients`` hold data (the others are
    empty placeholders: a device never sees another client's data)."""
    held = {c.client_id: c for c in clients}
    first = clients[0]
    input_shape = tuple(first.train.x.shape[1:])

    def empty(cid: int) -> ClientData:
        split = TensorSplit(first.train.x[:0], first.train.y[:0])
        return ClientData(cid, split, split, split)

    return FederatedDataset(
        name=name,
        clients=[held.get(cid) or empty(cid) for cid in range(num_clients)],
        num_classes=num_classes,
        input_shape=input_shape,
    )


def export_clients(federation: FederatedDataset, folder: str | Path) -> list[Path]:
    """Write each client's splits to ``folder/client-K.npz`` (a data spec per device); refuses
    to overwrite files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"client-{cid}.npz" for cid in range(federation.num_clients)]
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise ConfigError(f"export: {existing[0]} exists; give an empty folder")
    for cid, path in enumerate(paths):
        client = federation.clients[cid]
        arrays = {}
        for split in SPLITS:
            data = client.split(split)
            arrays[f"{split}_x"] = data.x.numpy()
            arrays[f"{split}_y"] = data.y.numpy()
        np.savez(path, **arrays)
    return paths
