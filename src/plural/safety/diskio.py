"""Writes that fail with a message naming the file: a full disk says "no space left on
device" and which file, instead of a library's internal error."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from plural.config import ConfigError


class WriteError(ConfigError):
    """A file could not be written (disk full, permissions, ...)."""


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err and _is_disk_full(cause):
        return True
    text = str(err).lower()
    return "no space left" in text or "file write failed" in text


@contextlib.contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a failed write to ``path`` into a WriteError that names it."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, RuntimeError) as err:
        if _is_disk_full(err):
            raise WriteError(f"no space left on device while writing {str(path)!r}") from err
        if isinstance(err, OSError):
            raise WriteError(f"cannot write {str(path)!r}: {err}") from err
        raise


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary name next to ``path``, then rename it over ``path``; a
    failed write leaves ``path`` as it was and no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path):
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
