"""Debian's fortune files: where each language's are, and their entries, normalised."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from plural.data.datasets import DatasetUnavailable
from plural.data.text.common import _collapse

FORTUNES_ROOT = "/usr/share/games/fortunes"
# The top-level English files of Debian's `fortunes` package (the top-level folder also
# holds other packages' files and links to other languages, so it is not globbed).
_ENGLISH_FILES = (
    "art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs",
    "education", "ethnic", "food", "goedel", "humorists", "kids", "knghtbrd", "law", "linux",
    "linuxcookie", "love", "magic", "medicine", "men-women", "miscellaneous", "news",
    "paradoxum", "people", "perl", "pets", "platitudes", "politics", "pratchett", "science",
    "songs-poems", "sports", "startrek", "tao", "translate-me", "wisdom", "work", "zippy",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _FortuneSource:
    package: str
    files: tuple[str, ...] = ()  # top-level files
    folder: str | None = None  # or every fortune file of this folder
    suffix: str = ""  # ... whose name ends so


FORTUNE_LANGUAGES: dict[str, _FortuneSource] = {
    "en": _FortuneSource("fortunes", files=_ENGLISH_FILES),
    "de": _FortuneSource("fortunes-de", folder="de"),
    "es": _FortuneSource("fortunes-es", folder="es", suffix=".fortunes"),
    "it": _FortuneSource("fortunes-it", folder="it"),
    "ru": _FortuneSource("fortunes-ru", folder="ru"),
    "pl": _FortuneSource("fortunes-pl", folder="pl"),
    "cs": _FortuneSource("fortunes-cs", folder="cs"),
    "zh": _FortuneSource("fortunes-zh", files=("chinese", "tang300", "song100")),
    "pt": _FortuneSource("fortunes-br", files=("brasil",)),
}
"""Language code -> where its fortunes are (Debian package, files)."""

FortuneLanguage = Literal["en", "de", "es", "it", "ru", "pl", "cs", "zh", "pt"]

_SEPARATOR = re.compile(rb"^%[ \t\r]*$", re.M)
_OVERSTRIKE = re.compile(r"[^\x08]\x08")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]?")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def _install_hint(languages: Iterable[str]) -> str:
    packages = " ".join(FORTUNE_LANGUAGES[lang].package for lang in languages)
    return f"apt-get install {packages} (or `make data`)"


def _fortune_files(root: Path, language: str) -> list[Path]:
    """The fortune files of one language; DatasetUnavailable if none is there."""
    source = FORTUNE_LANGUAGES[language]
    if source.folder is None:
        files = [root / name for name in source.files if (root / name).is_file()]
    else:
        folder = root / source.folder
        candidates = sorted(folder.iterdir()) if folder.is_dir() else []
        files = [
            p
            for p in candidates
            if p.is_file()
            and not p.is_symlink()
            and not p.name.endswith((".dat", ".u8"))
            and p.name.endswith(source.suffix)
        ]
    if not files:
        where = root / source.folder if source.folder else root
        raise DatasetUnavailable(
            f"fortunes: no {language!r} fortune files in {where} (Debian package "
            f"{source.package}); install it with: {_install_hint([language])}"
        )
    return files


def _normalise(entry: str) -> str:
    """An entry without backspace overstrikes, terminal colour codes and control
    characters, runs of whitespace collapsed to one space."""
    while "\x08" in entry:
        stripped = _OVERSTRIKE.sub("", entry).lstrip("\x08")
        if stripped == entry:
            break
        entry = stripped
    entry = _CONTROL.sub("", _ANSI.sub("", entry))
    return _collapse(entry)


@functools.lru_cache(maxsize=64)
def fortune_file_entries(path: str) -> tuple[tuple[str, ...], int]:
    """The normalised, non-empty entries of one fortune file (entries are separated by lines
    holding only ``%``) and the number of entries dropped for not being UTF-8."""
    entries, undecodable = [], 0
    for raw in _SEPARATOR.split(Path(path).read_bytes()):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            undecodable += 1
            continue
        text = _normalise(text)
        if text:
            entries.append(text)
    return tuple(entries), undecodable


@functools.lru_cache(maxsize=16)
def _read_fortunes(root: str, language: str) -> tuple[tuple[str, ...], int, int]:
    """The normalised entries of one language, the entries dropped for not being UTF-8, and
    the number of files read."""
    files = _fortune_files(Path(root), language)
    entries: list[str] = []
    undecodable = 0
    for file in files:
        file_entries, dropped = fortune_file_entries(str(file))
        entries += file_entries
        undecodable += dropped
    return tuple(entries), undecodable, len(files)


def fortune_entries(language: str, root: str = FORTUNES_ROOT) -> list[str]:
    """The entries of one language in file order, normalised (see :class:`FortunesConfig`)."""
    if language not in FORTUNE_LANGUAGES:
        raise ValueError(f"unknown language {language!r}; allowed: {', '.join(FORTUNE_LANGUAGES)}")
    _check_root(Path(root), [language])
    return list(_read_fortunes(root, language)[0])


def fortunes_summary(root: str = FORTUNES_ROOT) -> dict[str, dict[str, int]]:
    """Per language: files, entries, entries dropped as not UTF-8, characters, UTF-8 bytes
    (of the entries joined with newlines, as the loader joins them)."""
    _check_root(Path(root), FORTUNE_LANGUAGES)
    summary = {}
    for language in FORTUNE_LANGUAGES:
        entries, undecodable, files = _read_fortunes(root, language)
        text = "\n".join(entries)
        summary[language] = {
            "files": files,
            "entries": len(entries),
            "undecodable": undecodable,
            "characters": len(text),
            "bytes": len(text.encode("utf-8")),
        }
    return summary


def _check_root(root: Path, languages: Iterable[str]) -> None:
    if not root.is_dir():
        raise DatasetUnavailable(
            f"fortunes: folder {root} not found; install the fortune packages with: "
            f"{_install_hint(languages)}"
        )
