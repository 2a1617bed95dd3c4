"""Fixed per-client splits from the data: from_arrays split=, npz split_key, table
split_column, and the LEAF and PFLlib readers, each honoured sample for sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.config import ConfigError
from plural.data import from_arrays
from plural.data.datasets import DataError
from plural.data.published import LeafConfig, PfllibConfig, load_leaf, load_pfllib
from plural.experiment import load_config
from plural.runner import build_federation

MARKS = np.array(["train", "val", "test", "server"])


def marked_data(
    seed: int, clients: int, per_client: int, features: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features whose first column is the sample's index (to trace it), labels, client ids,
    split marks with at least one training sample per client."""
    rng = np.random.default_rng(seed)
    n = clients * per_client
    x = rng.normal(size=(n, features)).astype(np.float32)
    x[:, 0] = np.arange(n)
    y = rng.integers(0, 3, size=n)
    ids = np.repeat(np.arange(clients), per_client)
    splits = rng.integers(0, 4, size=n)
    splits[::per_client] = 0
    return x, y, ids, splits


def config(**overrides: Any) -> dict[str, Any]:
    return {
        "rounds": 1,
        "dataset": {"name": "python"},
        "partition": {"name": "natural"},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg"},
        "backend": {"threads_per_worker": 1},
        **overrides,
    }


def assert_honoured(federation: Any, x: np.ndarray, ids: np.ndarray, splits: np.ndarray) -> None:
    for client in federation.clients:
        for code, name in enumerate(("train", "val", "test")):
            held = client.split(name).x[:, 0].numpy().astype(int)
            expected = np.flatnonzero((ids == client.client_id) & (splits == code))
            np.testing.assert_array_equal(held, expected)
    server = np.flatnonzero(splits == 3)
    assert federation.server is not None
    np.testing.assert_array_equal(federation.server.x[:, 0].numpy().astype(int), server)


@pytest.mark.parametrize(("seed", "clients", "per_client"), [(0, 3, 20), (5, 7, 31)])
def test_from_arrays_split_is_honoured_sample_for_sample(
    seed: int, clients: int, per_client: int
) -> None:
    x, y, ids, splits = marked_data(seed, clients, per_client)
    for marks in (splits, MARKS[splits]):  # integers or names
        dataset = from_arrays(x, y, client_ids=ids, split=marks)
        federation = build_federation(load_config(config(), provided=["dataset"]), dataset)
        assert federation.fixed_split
        assert_honoured(federation, x, ids, splits)


def test_the_run_records_that_the_split_came_from_the_data(tmp_path: Path) -> None:
    x, y, ids, splits = marked_data(1, 3, 20)
    results = plural.run(
        config(), dataset=from_arrays(x, y, client_ids=ids, split=splits), out=tmp_path / "r"
    )
    assert results.config.split.from_data
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "from_data: true" in saved
    test_rows = results.final("test")
    expected = [int(((ids == c) & (splits == 2)).sum()) for c in range(3)]
    assert test_rows.sort_values("client")["samples"].tolist() == expected


def test_fractions_still_split_data_without_marks() -> None:
    x, y, ids, _ = marked_data(2, 3, 20)
    federation = build_federation(
        load_config(config(), provided=["dataset"]), from_arrays(x, y, client_ids=ids)
    )
    assert not federation.fixed_split and federation.server is None
    assert load_config(config(), provided=["dataset"]).split.from_data is False


def test_unknown_marks_and_clients_without_training_data_are_errors() -> None:
    x, y, ids, splits = marked_data(3, 3, 10)
    with pytest.raises(ConfigError, match=r"unknown split values.*holdout"):
        from_arrays(x, y, client_ids=ids, split=np.where(splits == 1, "holdout", MARKS[splits]))
    with pytest.raises(ConfigError, match="unknown split values"):
        from_arrays(x, y, client_ids=ids, split=splits + 4)
    one_wrong = MARKS[splits].astype(object)
    one_wrong[np.flatnonzero(ids == 1)[0]] = "holdout"
    with pytest.raises(ConfigError, match=r"\['holdout'\] in client 1; allowed"):
        from_arrays(x, y, client_ids=ids, split=one_wrong)
    no_train = splits.copy()
    no_train[ids == 2] = 2
    dataset = from_arrays(x, y, client_ids=ids, split=no_train)
    with pytest.raises(ConfigError, match=r"client 2: .*none of its 10 samples 'train'"):
        build_federation(load_config(config(), provided=["dataset"]), dataset)


def test_npz_split_key_and_table_split_column(tmp_path: Path) -> None:
    x, y, ids, splits = marked_data(4, 4, 15)
    np.savez(tmp_path / "d.npz", x=x, y=y, c=ids, s=MARKS[splits])
    npz = config(
        dataset={
            "name": "npz",
            "path": str(tmp_path / "d.npz"),
            "client_key": "c",
            "split_key": "s",
        }
    )
    assert_honoured(build_federation(load_config(npz)), x, ids, splits)
    frame = pd.DataFrame({"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "label": y, "who": ids})
    frame["part"] = splits
    frame.to_csv(tmp_path / "d.csv", index=False)
    table = config(
        dataset={
            "name": "table",
            "path": str(tmp_path / "d.csv"),
            "label_column": "label",
            "client_column": "who",
            "split_column": "part",
        }
    )
    assert_honoured(build_federation(load_config(table)), x, ids, splits)


# --------------------------------------------------------------------------- LEAF


def write_leaf(root: Path, users: dict[str, dict[str, np.ndarray]], files: int = 2) -> None:
    """LEAF's layout: users spread over several JSON files per split."""
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        names = sorted(users)
        for part in range(files):
            mine = names[part::files]
            data = {
                "users": mine,
                "num_samples": [len(users[u][split + "_y"]) for u in mine],
                "user_data": {
                    u: {"x": users[u][split + "_x"].tolist(), "y": users[u][split + "_y"].tolist()}
                    for u in mine
                },
            }
            (root / split / f"part_{part}.json").write_text(json.dumps(data))


def leaf_users(seed: int, count: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    users = {}
    for k in range(count):
        tr, te = int(rng.integers(3, 9)), int(rng.integers(1, 5))
        users[f"f{k:04d}_{seed}"] = {
            "train_x": rng.normal(size=(tr, 4)).round(3),
            "train_y": rng.integers(0, 5, size=tr),
            "test_x": rng.normal(size=(te, 4)).round(3),
            "test_y": rng.integers(0, 5, size=te),
        }
    return users


@pytest.mark.parametrize(("seed", "count"), [(0, 3), (9, 8)])
def test_leaf_reads_each_user_split_as_given(tmp_path: Path, seed: int, count: int) -> None:
    users = leaf_users(seed, count)
    write_leaf(tmp_path, users)
    cfg = config(dataset={"name": "leaf", "path": str(tmp_path), "input_shape": [1, 2, 2]})
    federation = build_federation(load_config(cfg))
    assert federation.num_clients == count and federation.fixed_split
    assert federation.input_shape == (1, 2, 2)
    for client, user in zip(federation.clients, sorted(users), strict=True):
        for split in ("train", "test"):
            data = client.split(split)
            expected_x = torch.tensor(users[user][f"{split}_x"], dtype=torch.float32)
            assert torch.equal(data.x.reshape(len(data.x), -1), expected_x)
            assert data.y.tolist() == users[user][f"{split}_y"].tolist()
        assert len(client.val) == 0


def test_leaf_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(plural.data.DatasetUnavailable, match="train"):
        load_leaf(LeafConfig(path=str(tmp_path)), np.random.default_rng(0))
    users = leaf_users(1, 2)
    write_leaf(tmp_path, users, files=1)
    path = tmp_path / "train" / "part_0.json"
    data = json.loads(path.read_text())
    data["num_samples"][0] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="num_samples"):
        load_leaf(LeafConfig(path=str(tmp_path)), np.random.default_rng(0))


# --------------------------------------------------------------------------- PFLlib


def write_pfllib(root: Path, seed: int, clients: int, as_dict: bool) -> dict[tuple[int, str], Any]:
    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for k in range(clients):
            n = int(rng.integers(2, 7))
            x = rng.normal(size=(n, 1, 2, 3)).astype(np.float32)
            y = rng.integers(0, 4, size=n)
            if as_dict:  # what PFLlib's generators write: np.savez_compressed(f, data=dict)
                np.savez_compressed(root / split / f"{k}.npz", data={"x": x, "y": y})
            else:
                np.savez(root / split / f"{k}.npz", x=x, y=y)
            written[k, split] = (x, y)
    return written


@pytest.mark.parametrize(("seed", "clients", "as_dict"), [(0, 3, True), (4, 12, False)])
def test_pfllib_reads_each_client_split_as_given(
    tmp_path: Path, seed: int, clients: int, as_dict: bool
) -> None:
    written = write_pfllib(tmp_path, seed, clients, as_dict)
    federation = build_federation(
        load_config(config(dataset={"name": "pfllib", "path": str(tmp_path)}))
    )
    assert federation.num_clients == clients and federation.input_shape == (1, 2, 3)
    for client in federation.clients:
        for split in ("train", "test"):
            x, y = written[client.client_id, split]
            assert torch.equal(client.split(split).x, torch.from_numpy(x))
            assert client.split(split).y.tolist() == y.tolist()


class Boom:
    def __reduce__(self) -> Any:
        return (print, ("pwned",))


def test_pfllib_refuses_pickled_code(tmp_path: Path) -> None:
    write_pfllib(tmp_path, 0, 2, as_dict=False)
    np.savez(tmp_path / "train" / "1.npz", data=np.array([Boom()], dtype=object))
    with pytest.raises(DataError, match="cannot be read safely"):
        load_pfllib(PfllibConfig(path=str(tmp_path)), np.random.default_rng(0))
