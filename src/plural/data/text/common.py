"""What the text federations share: the data folder, windows of symbols and stacking
the clients' windows into one pool."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from plural.config import ConfigError


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
