"""Claiming a run directory: plural writes only into a new or empty folder or one of its own
run directories, and one process at a time.

The marker ``.plural-run`` names the directory as a plural run directory; while a run or a
resume works in it, that process holds an exclusive ``flock`` on the marker and has written
its pid and host into it. The kernel drops the lock when the process ends, however it ends,
so a lock left by a killed run is taken over by the next one. Where ``flock`` is not
available, the pid in the marker is checked instead: a marker whose process on this host is
gone is taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from plural.config import ConfigError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MARKER = ".plural-run"
_LEGACY_FILES = ("config.yaml",)
_LEGACY_ANY = ("metrics", "checkpoint.pt", "summary.json", "metrics.parquet")


class RunDirectoryError(ConfigError):
    """The run directory cannot be used: not plural's, in use, read-only, a file."""


def is_plural_run_directory(path: Path) -> bool:
    """Whether ``path`` holds plural's marker, or is a run directory from before the marker."""
    if (path / MARKER).is_file():
        return True
    return all((path / f).exists() for f in _LEGACY_FILES) and any(
        (path / f).exists() for f in _LEGACY_ANY
    )


def check_run_target(path: Path) -> None:
    """RunDirectoryError unless plural may write a run into ``path``; writes nothing."""
    where = str(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"--out {where!r} is a file, not a folder; choose a folder")
    if path.is_dir():
        try:
            entries = [p.name for p in path.iterdir()]
        except OSError as err:
            raise RunDirectoryError(f"--out {where!r} cannot be read: {err}") from err
        if entries and not is_plural_run_directory(path):
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunDirectoryError(
                f"--out {where!r} is not a plural run directory: it holds other files "
                f"({shown}) and no {MARKER} marker; plural writes only into a new or empty "
                "folder or its own run directory, so choose another --out"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise RunDirectoryError(f"--out {where!r} is read-only; choose a writable folder")
        return
    parent = _existing_parent(path)
    if not parent.is_dir():
        raise RunDirectoryError(f"--out {where!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"--out {where!r} cannot be created: {str(parent)!r} is read-only")


def _existing_parent(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path(path.absolute().anchor)


def _holder() -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now}


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
        f"(since {holder.get('since', '?')})"
    )


def _read_holder(handle: IO[str]) -> dict[str, Any]:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s run lock for the block (creating the folder and its marker), or
    RunDirectoryError naming the process that holds it."""
    check_run_target(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle = (path / MARKER).open("a+", encoding="utf-8")
    except OSError as err:
        raise RunDirectoryError(f"--out {str(path)!r} cannot be written: {err}") from err
    try:
        _acquire(handle, path)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()) + "\n")
        handle.flush()
        yield
    finally:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _acquire(handle: IO[str], path: Path) -> None:
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            raise RunDirectoryError(
                f"run directory {str(path)!r} is in use by {_describe(_read_holder(handle))}; "
                "wait for that run to end, or choose another --out"
            ) from None
        except OSError:
            pass  # no flock on this filesystem: fall back to the pid in the marker
    holder = _read_holder(handle)
    here = holder.get("host") == socket.gethostname()
    in_use = holder.get("pid") != os.getpid() and (not here or _pid_alive(holder.get("pid")))
    if holder and in_use:
        raise RunDirectoryError(
            f"run directory {str(path)!r} is in use by {_describe(holder)}; wait for that "
            f"run to end, or if it is gone, delete {MARKER} in it"
        )
