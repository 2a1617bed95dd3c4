"""Checkpoints and client-state files load with torch's weights-only unpickler: resuming a
run directory received from someone else cannot run code."""

from __future__ import annotations

import dataclasses
import enum
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import plural
from plural.core.algorithm import ServerState
from plural.safety.plain import (
    UnsafeCheckpointError,
    from_plain,
    load_plain,
    save_plain,
    to_plain,
)
from plural.safety.runlock import RunDirectoryError


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass(frozen=True)
class Frozen:
    weights: dict[str, torch.Tensor]
    groups: np.ndarray
    names: tuple[str, ...]
    colour: Colour
    derived: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "derived", len(self.names))


class RunsCode:
    """Unpickling this calls ``touch <marker>``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.call, (["touch", str(self.marker)],))


def test_plain_round_trip_keeps_types_and_values(tmp_path: Path) -> None:
    state = {
        "server": ServerState({"w": torch.arange(6.0).reshape(2, 3)}, {"k": 2}),
        "frozen": Frozen({"b": torch.ones(2)}, np.array([3, 1, 2]), ("a", "b"), Colour.RED),
        "arrays": [np.zeros((2, 2), np.float32), np.array([True, False]), np.array(["ab", "c"])],
        "scalars": (np.float64(0.5), np.int64(3), float("nan"), None, True),
        "keys": {(0, 1): "pair", 3: "int"},
        "dtype": torch.float16,
        "set": {3, 1},
    }
    save_plain(state, tmp_path / "c.pt")
    back = load_plain(tmp_path / "c.pt")
    assert torch.equal(back["server"].params["w"], state["server"].params["w"])
    assert back["server"].extra == {"k": 2}
    frozen = back["frozen"]
    assert type(frozen) is Frozen and frozen.names == ("a", "b") and frozen.colour is Colour.RED
    assert frozen.derived == 2 and np.array_equal(frozen.groups, [3, 1, 2])
    assert [a.dtype for a in back["arrays"]] == [np.float32, np.bool_, np.dtype("<U2")]
    assert back["arrays"][2].tolist() == ["ab", "c"]
    assert back["scalars"][:2] == (0.5, 3) and np.isnan(back["scalars"][2])
    assert back["scalars"][3:] == (None, True)
    assert back["keys"] == {(0, 1): "pair", 3: "int"}
    assert back["dtype"] is torch.float16 and back["set"] == {1, 3}


def test_objects_that_are_not_plain_data_are_refused_when_saving() -> None:
    with pytest.raises(TypeError, match=r"cannot hold a builtins\.object"):
        to_plain({"x": object()})


def test_a_class_from_a_module_not_imported_is_never_imported() -> None:
    forged = {
        "__plural_plain__": "dataclass",
        "class": "plural_no_such_module_xyz:Thing",
        "fields": {},
    }
    with pytest.raises(UnsafeCheckpointError, match="not imported"):
        from_plain(forged)
    assert "plural_no_such_module_xyz" not in sys.modules
    forged_os = {"__plural_plain__": "dataclass", "class": "os:system", "fields": {}}
    with pytest.raises(UnsafeCheckpointError, match="not a class"):
        from_plain(forged_os)


def _crashed_run(cfg: dict[str, Any], out: Path, crash_after: Any) -> None:
    with pytest.raises(RuntimeError, match="simulated crash"):
        plural.run(cfg, out=out, callbacks=[crash_after(1)])


def test_resume_refuses_a_checkpoint_that_would_run_code(
    tiny_config: dict[str, Any], tmp_path: Path, crash_after: Any
) -> None:
    cfg = {**tiny_config, "rounds": 3}
    out = tmp_path / "run"
    _crashed_run(cfg, out, crash_after)
    marker = tmp_path / "pwned"
    torch.save({"version": 1, "payload": RunsCode(marker)}, out / "checkpoint.pt")
    with pytest.raises(RunDirectoryError, match="refused"):
        plural.run(cfg, out=out, resume=True)
    assert not marker.exists()


def test_resume_names_a_checkpoint_of_an_older_layout(
    tiny_config: dict[str, Any], tmp_path: Path, crash_after: Any
) -> None:
    cfg = {**tiny_config, "rounds": 3}
    out = tmp_path / "run"
    _crashed_run(cfg, out, crash_after)
    checkpoint = load_plain(out / "checkpoint.pt")
    save_plain({**checkpoint, "version": 1}, out / "checkpoint.pt")
    with pytest.raises(plural.ConfigError, match=r"checkpoint version 1.*reads version 2"):
        plural.run(cfg, out=out, resume=True)


def test_resume_refuses_a_client_state_file_that_would_run_code(
    tiny_config: dict[str, Any], tmp_path: Path, crash_after: Any
) -> None:
    cfg = {
        **tiny_config,
        "rounds": 3,
        "algorithm": {"name": "ditto"},
        "backend": {"state": "disk"},
    }
    out = tmp_path / "run"
    _crashed_run(cfg, out, crash_after)
    state_files = sorted((out / "client_state").glob("*.pt"))
    assert state_files, "ditto keeps a personal model per client"
    marker = tmp_path / "pwned"
    torch.save(RunsCode(marker), state_files[0])
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        plural.run(cfg, out=out, resume=True)
    assert not marker.exists()


def test_the_cli_explains_the_refusal(
    tiny_config: dict[str, Any], tmp_path: Path, crash_after: Any
) -> None:
    cfg = {**tiny_config, "rounds": 3}
    out = tmp_path / "run"
    _crashed_run(cfg, out, crash_after)
    marker = tmp_path / "pwned"
    torch.save({"payload": RunsCode(marker)}, out / "checkpoint.pt")
    command = ["run", str(out / "config.yaml"), "--out", str(out), "--resume"]
    done = subprocess.run(
        [sys.executable, "-m", "plural.cli", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and not marker.exists()
    assert "refused" in done.stderr and "Traceback" not in done.stderr
