"""A Shakespeare play's text parsed into its speaking roles (:func:`parse_play`), the roles
of every play parsed once per process, and LEAF's filter of the roles."""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from collections.abc import Sequence
from pathlib import Path

from plural.data.text.common import _collapse
from plural.data.text.plays import _read_plays, _shakespeare_source

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


def kept_roles(roles: Sequence[Role], min_lines: int) -> list[Role]:
    """LEAF's filter: roles with at least ``min_lines`` speeches, in plays with two or more
    such roles."""
    kept = [r for r in roles if len(r.speeches) >= min_lines]
    per_play = collections.Counter(r.play for r in kept)
    return [r for r in kept if per_play[r.play] >= 2]
