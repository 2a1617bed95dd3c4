"""Where ``plural run`` writes: the default run directory, an existing run in it, and
``--resume`` / ``--overwrite``.

Running the same command twice must not fail on the run the first one left: with the default
folder (``runs/<config name>``) the second run takes the next free name (``-2``, ``-3``, ...)
and says so; with ``--resume`` it continues the run; with ``--overwrite`` it replaces it,
deleting only the files plural writes into a run directory and keeping any others.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

from plural.config import ConfigError
from plural.safety.runlock import MARKER, is_plural_run_directory, run_lock

RUN_ENTRIES = (
    "config.yaml",
    "federation.json",
    "metrics",
    "metrics.parquet",
    "summary.json",
    "checkpoint.pt",
    "diagnostics.jsonl",
    "timeline.jsonl",
    "environment.json",
    "artifacts",
    "client_state",
    "report.html",
    "report_files",
)
"""What plural writes into a run directory (besides its marker): all ``--overwrite`` deletes."""


def holds_run(path: Path) -> bool:
    """Whether ``path`` is a plural run directory that a run has written rounds into."""
    return (
        path.is_dir()
        and is_plural_run_directory(path)
        and any((path / name).exists() for name in ("checkpoint.pt", "metrics", "summary.json"))
    )


def describe_run(path: Path) -> str:
    """A few words on the run in ``path``: finished or not, and how far it got."""
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return "started, no round finished" if not (path / "checkpoint.pt").is_file() else "started"
    rounds = summary.get("round")
    if summary.get("complete"):
        return f"finished, {rounds} round{'' if rounds == 1 else 's'}"
    return f"stopped after round {rounds}"


def next_free(path: Path) -> Path:
    """``path`` with the first suffix ``-2``, ``-3``, ... that names nothing yet."""
    for number in itertools.count(2):
        candidate = path.with_name(f"{path.name}-{number}")
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


def clear_run(path: Path) -> list[str]:
    """Delete what plural wrote into the run directory ``path``; return the names of the
    other entries, which are kept."""
    with run_lock(path):  # not while another process runs in it
        for name in RUN_ENTRIES:
            entry = path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
    return sorted(p.name for p in path.iterdir() if p.name != MARKER)


@dataclasses.dataclass(frozen=True)
class OutputChoice:
    """The run directory to use, whether to resume, and what to tell the user."""

    path: Path
    message: str | None = None


def choose_output(
    out: str | None, default: Path, *, resume: bool = False, overwrite: bool = False
) -> OutputChoice:
    """The run directory for ``plural run`` (see the module docstring)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run and --overwrite replaces it: give one")
    path = Path(out) if out else default
    if not holds_run(path) or resume:
        return OutputChoice(path)
    what = f"{str(path)!r} already holds a run ({describe_run(path)})"
    if overwrite:
        kept = clear_run(path)
        extra = f"; kept files plural did not write: {', '.join(kept)}" if kept else ""
        return OutputChoice(path, f"plural: {what}: --overwrite replaced it{extra}")
    if out:
        raise ConfigError(
            f"run directory {what}; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    fresh = next_free(path)
    return OutputChoice(
        fresh,
        f"plural: {what}; this run goes to {str(fresh)!r} (--resume continues the run in "
        f"{str(path)!r}, --overwrite replaces it)",
    )
