"""The client-state stores: the disk store keeps states in files, survives checkpoints and
resumes, and gives the same runs as the in-memory store."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import plural
from plural.core.params import max_abs_difference
from plural.engine.store import DiskStateStore, InMemoryStateStore
from plural.report.rundir import deterministic


@dataclasses.dataclass(frozen=True)
class Personal:
    head: dict[str, torch.Tensor]
    cluster: int


def state(value: float) -> Personal:
    return Personal({"w": torch.full((3, 2), value), "b": torch.zeros(2)}, int(value))


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.pt")}


def test_disk_store_keeps_each_state_in_a_file_and_reads_it_back(tmp_path: Path) -> None:
    store = DiskStateStore(tmp_path)
    assert store.get(4) is None and 4 not in store and len(store) == 0
    store.put(4, state(1.0))
    store.put(2, state(2.0))
    assert list(store) == [2, 4] and len(store) == 2 and 4 in store
    back = store.get(4)
    assert isinstance(back, Personal) and back.cluster == 1
    assert torch.equal(back.head["w"], torch.full((3, 2), 1.0))
    assert len(files(tmp_path)) == 2
    store.put(4, state(5.0))  # the old file goes: no checkpoint names it
    assert len(files(tmp_path)) == 2 and store.get(4).cluster == 5
    store.put(2, None)
    assert 2 not in store and len(files(tmp_path)) == 1


def test_files_a_saved_checkpoint_names_stay_until_the_next_one(tmp_path: Path) -> None:
    store = DiskStateStore(tmp_path)
    store.put(0, state(1.0))
    snapshot = store.snapshot()
    store.commit()
    store.put(0, state(2.0))  # after the checkpoint: the checkpointed file must stay
    assert len(files(tmp_path)) == 2
    resumed = DiskStateStore(tmp_path)
    resumed.restore(snapshot)  # as after a crash: back to the checkpoint, newer files go
    assert resumed.get(0).cluster == 1 and len(files(tmp_path)) == 1
    store = resumed
    store.put(0, state(3.0))
    store.snapshot()
    store.commit()  # the next checkpoint: the first one's file is no longer needed
    assert len(files(tmp_path)) == 1 and store.get(0).cluster == 3


def test_stores_restore_each_others_snapshots(tmp_path: Path) -> None:
    memory = InMemoryStateStore()
    memory.put(1, state(1.0))
    disk = DiskStateStore(tmp_path / "a")
    disk.restore(memory.snapshot())
    assert disk.get(1).cluster == 1
    other = InMemoryStateStore()
    other.restore(disk.snapshot())
    assert other.get(1).cluster == 1
    moved = DiskStateStore(tmp_path / "b")
    moved.restore(disk.snapshot())  # a manifest of another folder: states are copied
    assert moved.get(1).cluster == 1 and len(files(tmp_path / "b")) == 1


def test_a_missing_state_file_is_named(tmp_path: Path) -> None:
    disk = DiskStateStore(tmp_path)
    disk.put(7, state(1.0))
    snapshot = disk.snapshot()
    for path in tmp_path.glob("*.pt"):
        path.unlink()
    with pytest.raises(FileNotFoundError, match="client 7's state file"):
        InMemoryStateStore().restore(snapshot)


def test_a_temporary_folder_is_removed_on_close(tmp_path: Path) -> None:
    store = DiskStateStore(tmp_path / "t", temporary=True)
    store.put(0, state(1.0))
    store.close()
    assert not (tmp_path / "t").exists()


STATEFUL = ["fedper", "scaffold", "ditto", "local", "ifca", "pfedlia", "apfl"]


@pytest.mark.parametrize("name", STATEFUL)
def test_disk_states_give_the_same_run_and_resume_exactly(
    name: str, tiny_config: dict[str, Any], tmp_path: Path, crash_after
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg["rounds"] = 3
    cfg["algorithm"] = {"name": name, **({"warmup_rounds": 1} if name == "pfedlia" else {})}
    memory = plural.run(cfg)
    cfg["backend"] = {**cfg["backend"], "state": "disk"}
    with pytest.raises(RuntimeError, match="simulated crash"):
        plural.run(cfg, out=tmp_path / "run", callbacks=[crash_after(2)])
    resumed = plural.run(cfg, out=tmp_path / "run", resume=True)
    pd.testing.assert_frame_equal(deterministic(memory.metrics), deterministic(resumed.metrics))
    assert max_abs_difference(memory.server.params, resumed.server.params) == 0.0
    held = files(tmp_path / "run" / "client_state")
    assert 0 < len(held) <= cfg["partition"]["num_clients"]  # one file per client with state


def test_disk_states_without_a_run_directory_use_a_temporary_folder(
    tiny_config: dict[str, Any], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    tiny_config["algorithm"] = {"name": "fedper"}
    tiny_config["backend"] = {"state": "disk"}
    plural.run(tiny_config)
    assert not list(tmp_path.glob("plural-states-*"))  # removed when the run ended
