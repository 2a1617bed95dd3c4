from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from plural.core.rng import derive_seed, numpy_rng, torch_generator


def test_distinct_keys_give_distinct_seeds() -> None:
    seeds = {derive_seed(0, r, c, p) for r in range(5) for c in range(20) for p in ("a", "b")}
    assert len(seeds) == 5 * 20 * 2
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert derive_seed(0, "x") != derive_seed(1, "x")


def test_seeds_are_stable_across_processes() -> None:
    code = "from plural.core.rng import derive_seed; print(derive_seed(7, 3, 11, 'client_update'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == derive_seed(7, 3, 11, "client_update")


def test_generators_do_not_touch_global_state() -> None:
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    numpy_rng(1, "a").random(10)
    torch.rand(3, generator=torch_generator(1, "a"))
    assert (np.random.get_state()[1] == np_state).all()
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_bad_keys_are_rejected() -> None:
    with pytest.raises(ValueError):
        derive_seed(0, -1)
    with pytest.raises(TypeError):
        derive_seed(0, 1.5)  # type: ignore[arg-type]
