"""Topic classification of the English fortunes (the Debian package ``fortunes``).

Each fortune cookie is a sample and its label is the file (the category) it comes from. The
texts are tokenised with the MiniLM word-piece tokenizer of :mod:`plural.models.text`, so the
dataset's ``x`` holds int64 token ids for ``minilm_lora``. There is no natural partition among
clients: split it with a label partitioner (e.g. ``dirichlet``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from plural.config import ConfigError, setting
from plural.data.datasets import DatasetUnavailable
from plural.data.text import FORTUNES_ROOT, fortune_file_entries
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

FORTUNES_APT = "apt-get install fortunes"

DEFAULT_CATEGORIES = (
    "art",
    "computers",
    "men-women",
    "politics",
    "science",
    "songs-poems",
    "startrek",
    "work",
)
"""Categories that are subjects (not genres such as definitions, platitudes, literature or
one person's quotes), with these many fortunes of 20 or more characters in Debian's fortunes
1:1.99.1: art 463, computers 1025, men-women 582, politics 699, science 621, songs-poems 720,
startrek 225, work 628. linux (336) and perl (273) are left out as they overlap computers."""


@dataclasses.dataclass(frozen=True)
class FortuneTopicsConfig:
    """Settings of the fortune topic classification."""

    categories: tuple[str, ...] = setting(
        DEFAULT_CATEGORIES,
        help="fortune files to use as classes, in class-id order (files under data_dir)",
    )
    max_per_class: int | None = setting(
        400,
        help="keep a random subset of at most this many fortunes per class (roughly balanced "
        "classes); null: all",
        ge=1,
    )
    max_tokens: int = setting(
        64, help="word pieces per fortune, [CLS] and [SEP] included (truncated, padded)", ge=2
    )
    min_chars: int = setting(20, help="drop fortunes shorter than this after normalising", ge=0)
    data_dir: str = setting(FORTUNES_ROOT, help="folder of the fortune files")

    def __post_init__(self) -> None:
        if len(self.categories) < 2:
            raise ConfigError(
                f"categories: give at least two fortune files; got {list(self.categories)}"
            )
        if len(set(self.categories)) != len(self.categories):
            raise ConfigError(f"categories: {list(self.categories)} names a file twice")


def available_categories(data_dir: str | Path) -> list[str]:
    """The fortune files in ``data_dir`` (no ``.dat`` indexes, no ``.u8`` links)."""
    root = Path(data_dir)
    return sorted(
        path.name
        for path in root.iterdir()
        if path.is_file() and not path.is_symlink() and "." not in path.name
    )


def _category_texts(config: FortuneTopicsConfig) -> list[list[str]]:
    root = Path(config.data_dir)
    if not root.is_dir():
        raise DatasetUnavailable(
            f"fortune_topics: {root} does not exist. Run `{FORTUNES_APT}` (the English "
            "fortune cookies), or point data_dir at a folder of fortune files"
        )
    available = available_categories(root)
    unknown = [c for c in config.categories if c not in available]
    if unknown:
        raise ConfigError(
            f"dataset.categories: {', '.join(map(repr, unknown))} not found in {root}; "
            f"available: {', '.join(available) or '(none)'}"
            + (f". Run `{FORTUNES_APT}`" if not available else "")
        )
    texts = []
    for category in config.categories:
        entries, _ = fortune_file_entries(str(root / category))
        texts.append([t for t in entries if len(t) >= config.min_chars])
    return texts


@DATASETS.register(
    "fortune_topics",
    FortuneTopicsConfig,
    "topic of an English fortune cookie (8 categories, MiniLM token ids; apt fortunes)",
)
def load_fortune_topics(config: FortuneTopicsConfig, rng: np.random.Generator) -> ArrayDataset:
    """Fortunes of ``categories`` as MiniLM token ids ``(max_tokens,)``, labelled by category.

    Each class keeps at most ``max_per_class`` fortunes, a random subset drawn with ``rng``
    (category by category, in order) and kept in file order.
    """
    from plural.models.text import tokenize

    per_class = _category_texts(config)
    texts: list[str] = []
    labels: list[int] = []
    for label, (category, entries) in enumerate(zip(config.categories, per_class, strict=True)):
        if not entries:
            raise ConfigError(
                f"dataset.categories: {category!r} has no fortune of at least "
                f"{config.min_chars} characters"
            )
        chosen = range(len(entries))
        if config.max_per_class is not None and config.max_per_class < len(entries):
            chosen = np.sort(rng.choice(len(entries), size=config.max_per_class, replace=False))
        texts += [entries[i] for i in chosen]
        labels += [label] * len(chosen)
    try:
        x = tokenize(texts, config.max_tokens)
    except ConfigError as err:
        raise DatasetUnavailable(f"fortune_topics: {err}") from err
    return ArrayDataset(
        name="fortune_topics",
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        num_classes=len(config.categories),
        input_shape=(config.max_tokens,),
        class_names=tuple(config.categories),
    )
