"""The ``fortunes`` dataset: next-symbol prediction in nine languages, the language
being the clients' group."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from plural.config import ConfigError, setting
from plural.data.text.common import _stack, windows
from plural.data.text.fortune_files import (
    FORTUNE_LANGUAGES,
    FORTUNES_ROOT,
    FortuneLanguage,
    _check_root,
    _read_fortunes,
)
from plural.data.types import ArrayDataset
from plural.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class FortunesConfig:
    """Settings of the multilingual fortunes (next-character prediction)."""

    root: str = setting(FORTUNES_ROOT, help="folder of the Debian fortune files")
    languages: tuple[FortuneLanguage, ...] = setting(
        tuple(FORTUNE_LANGUAGES),
        help="languages, each a true group of clients: en (English), de (German), "
        "es (Spanish), it (Italian), ru (Russian), pl (Polish), cs (Czech), zh (Chinese), "
        "pt (Brazilian Portuguese)",
    )
    clients_per_language: int = setting(4, help="clients per language", ge=1)
    chars_per_client: int = setting(
        20000,
        help="length of each client's text before windowing, in symbols of the vocabulary "
        "(UTF-8 bytes with vocabulary bytes, characters with chars)",
        ge=2,
    )
    seq_len: int = setting(80, help="symbols per input window", ge=1)
    stride: int = setting(1, help="symbols between the starts of two windows", ge=1)
    vocabulary: Literal["bytes", "chars"] = setting(
        "bytes",
        help="'bytes': UTF-8 bytes (256 classes); 'chars': the max_symbols most frequent "
        "characters of the clients' texts, plus class 0 for any other character",
    )
    max_symbols: int = setting(
        200, help="characters in the 'chars' vocabulary (besides 'unknown')", ge=1, le=32767
    )

    def __post_init__(self) -> None:
        if not self.languages:
            raise ValueError("languages: give at least one language")
        if len(set(self.languages)) != len(self.languages):
            raise ValueError("languages: a language is listed twice")
        if self.chars_per_client <= self.seq_len:
            raise ValueError(
                f"chars_per_client ({self.chars_per_client}) must exceed seq_len "
                f"({self.seq_len}) so that each client has a window and its next symbol"
            )


UNKNOWN_SYMBOL = "<unk>"


def _byte_name(b: int) -> str:
    return chr(b) if 32 <= b < 127 or b == 10 else f"<0x{b:02X}>"


def _chunks(
    config: FortunesConfig, rng: np.random.Generator
) -> list[tuple[str, list[str | bytes]]]:
    """Per language: its ``clients_per_language`` consecutive chunks of shuffled text."""
    root = Path(config.root)
    _check_root(root, config.languages)
    out = []
    for language in config.languages:
        entries = _read_fortunes(str(root), language)[0]
        text = "\n".join(entries[i] for i in rng.permutation(len(entries)))
        units: str | bytes = text.encode("utf-8") if config.vocabulary == "bytes" else text
        size, need = config.chars_per_client, config.clients_per_language * config.chars_per_client
        if len(units) < need:
            what = "UTF-8 bytes" if config.vocabulary == "bytes" else "characters"
            raise ConfigError(
                f"dataset (fortunes): language {language!r} has {len(units)} {what} of text, "
                f"fewer than clients_per_language * chars_per_client = "
                f"{config.clients_per_language} * {size} = {need}; use at most "
                f"{len(units) // size} clients of {size}, or shorter clients"
            )
        out.append((language, [units[k * size : (k + 1) * size] for k in range(need // size)]))
    return out


def _char_vocabulary(texts: Iterable[str], max_symbols: int) -> tuple[str, ...]:
    """The ``max_symbols`` most frequent characters (ties in character order)."""
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(text)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(char for char, _ in ranked[:max_symbols])


@DATASETS.register(
    "fortunes",
    FortunesConfig,
    "Debian fortunes in 9 languages: next character (or byte), the language is the group",
)
def load_fortunes(config: FortunesConfig, rng: np.random.Generator) -> ArrayDataset:
    """Multilingual next-symbol prediction from Debian's fortune cookies.

    The fortunes of each language (files split at lines holding only ``%``; ``.dat`` indexes,
    ``.u8`` links and the offensive ``off`` folders skipped; entries that are not UTF-8
    dropped; backspace overstrikes, terminal colour codes and control characters removed;
    whitespace runs collapsed; empty entries dropped) are shuffled with ``rng``, joined with
    newlines and cut into ``clients_per_language`` consecutive chunks of ``chars_per_client``
    symbols, one per client. Each sample is a window of ``seq_len`` symbols and the next
    one, every ``stride`` symbols, in text order. Symbols are UTF-8 bytes (256 classes) or,
    with ``vocabulary: chars``, the ``max_symbols`` most frequent characters of the clients'
    texts with class 0 for any other. ``client_ids`` numbers the clients language by
    language; ``sample_groups`` is the language's index in ``languages``.
    """
    chunks = _chunks(config, rng)
    if config.vocabulary == "bytes":
        names = tuple(_byte_name(b) for b in range(256))
        dtype: type = np.uint8

        def encode(chunk: str | bytes) -> np.ndarray:
            assert isinstance(chunk, bytes)
            return np.frombuffer(chunk, dtype=np.uint8)

    else:
        symbols = _char_vocabulary((c for _, cs in chunks for c in cs), config.max_symbols)
        names = (UNKNOWN_SYMBOL, *symbols)
        dtype = np.uint8 if len(names) <= 256 else np.int16
        index = {char: i + 1 for i, char in enumerate(symbols)}

        def encode(chunk: str | bytes) -> np.ndarray:
            assert isinstance(chunk, str)
            return np.fromiter((index.get(c, 0) for c in chunk), dtype=dtype, count=len(chunk))

    parts, groups = [], []
    for group, (_, language_chunks) in enumerate(chunks):
        for chunk in language_chunks:
            parts.append(windows(encode(chunk), config.seq_len, config.stride))
            groups.append(group)
    x, y, client_ids = _stack("fortunes", parts, config.seq_len, dtype)
    return ArrayDataset(
        name="fortunes",
        x=x,
        y=y,
        num_classes=len(names),
        input_shape=(config.seq_len,),
        client_ids=client_ids,
        sample_groups=np.asarray(groups, dtype=np.int64)[client_ids],
        class_names=names,
        ordered=True,
    )
