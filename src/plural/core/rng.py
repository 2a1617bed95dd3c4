"""Derived randomness.

Every random draw in plural takes a generator derived from the run seed and the keys that
identify the draw: ``(seed, round, client, purpose)`` for client work, ``(seed, purpose)`` for
one-off draws. The same keys give the same numbers whatever the backend, the worker or the
order in which clients run. Nothing here touches the global NumPy or torch generators.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

Key = int | str


def _key_word(key: Key) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"random keys are ints or strings, got {key!r}")
    if isinstance(key, str):
        return zlib.crc32(key.encode()) | (1 << 32)  # strings never collide with small ints
    if key < 0:
        raise ValueError(f"random keys must be >= 0, got {key}")
    return key


def derive_seed(seed: int, *keys: Key) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (stable across runs and platforms)."""
    sequence = np.random.SeedSequence(
        entropy=int(seed), spawn_key=tuple(_key_word(k) for k in keys)
    )
    low, high = sequence.generate_state(2, dtype=np.uint32)
    return int((int(high) << 32 | int(low)) & ((1 << 63) - 1))


def numpy_rng(seed: int, *keys: Key) -> np.random.Generator:
    """A NumPy generator for the draw named by ``keys``."""
    return np.random.default_rng(derive_seed(seed, *keys))


def torch_generator(seed: int, *keys: Key) -> torch.Generator:
    """A CPU torch generator for the draw named by ``keys``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *keys))
    return generator
