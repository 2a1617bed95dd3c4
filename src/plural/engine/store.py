"""The engine-owned client-state store.

Per-client personal state (a Local model, a personal head, control variates, a cluster id)
lives here, never on algorithm objects, so the engine can checkpoint it, keep it on disk, or
shard it across workers without algorithms noticing.

Two stores share one interface: :class:`InMemoryStateStore` (a dict) and
:class:`DiskStateStore` (one file per client; a state is in memory only while its client is
in the round's cohort or being evaluated), so memory does not grow with idle clients.

A checkpoint holds the store's :meth:`snapshot`. For the disk store that is a manifest of
file names, not the states: the files a checkpoint names are kept until the next checkpoint
is saved (:meth:`commit`), so a run killed between checkpoints resumes from consistent
files. Either store resumes from either kind of snapshot, so ``backend.state`` may change
when a run is resumed.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from plural.config import ConfigError
from plural.experiment import BackendConfig
from plural.safety.diskio import atomic_write, writing
from plural.safety.plain import load_plain, save_plain

MANIFEST_KIND = "plural-disk-states"
OWNER_FILE = ".plural-states.json"
"""Names the run whose client states a folder holds."""
WRITTEN_FILE = ".plural-states.written"
"""The state files the store wrote there, one name a line: the only files it ever deletes."""
_STATE_FILE = re.compile(r"^\d+\.[0-9a-f]{16}\.pt$")
SHARDED_KIND = "plural-sharded-states"
"""A snapshot made of several stores' snapshots (``shards``): the Ray backend's actors'."""


class StateStore(Protocol):
    def get(self, client_id: int) -> Any:
        """The client's state, or None if it has none yet."""
        ...

    def put(self, client_id: int, state: Any) -> None:
        """Keep ``state`` for the client (None forgets it)."""
        ...

    def __contains__(self, client_id: object) -> bool: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[int]: ...

    def snapshot(self) -> Any:
        """What a checkpoint stores to restore this store's contents."""
        ...

    def commit(self) -> None:
        """The last snapshot is now saved in a checkpoint (older files may go)."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Replace the contents with those of a snapshot (of either store)."""
        ...

    def close(self) -> None: ...


class InMemoryStateStore:
    """Client states in a dict, keyed by client id. A client with no state has no entry."""

    def __init__(self) -> None:
        self._states: dict[int, Any] = {}

    def get(self, client_id: int) -> Any:
        return self._states.get(client_id)

    def put(self, client_id: int, state: Any) -> None:
        if state is None:
            self._states.pop(client_id, None)
        else:
            self._states[client_id] = state

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._states

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._states))

    def snapshot(self) -> dict[int, Any]:
        return dict(self._states)

    def commit(self) -> None:
        pass

    def restore(self, snapshot: Any) -> None:
        self._states = dict(_states_of(snapshot))

    def close(self) -> None:
        pass


class DiskStateStore:
    """One file per client state (``torch.save``, read back memory-mapped), in ``folder``.

    A new state goes to a new file and the client's previous file is removed, unless the
    last saved checkpoint names it. ``temporary`` folders are deleted on :meth:`close`.

    The store deletes only files it wrote (listed in ``.plural-states.written``). A folder
    that holds other files, or the states of another ``owner`` (a run directory), is refused,
    so two runs never share one. ``adopt`` takes over an unmarked folder's state files: for
    the run directory's own ``client_state/`` written before the folder was marked.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        temporary: bool = False,
        owner: str | None = None,
        adopt: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.temporary = temporary
        self._files: dict[int, str] = {}
        self._pinned: set[str] = set()  # files the last saved checkpoint names
        self._pending: set[str] | None = None  # files of a snapshot not yet committed
        self._written: set[str] = set()
        self._claim(owner, adopt)

    def _claim(self, owner: str | None, adopt: bool) -> None:
        """Make ``folder`` this store's, or a ConfigError if it holds anything else."""
        where = str(self.folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"backend.state_dir: {where!r} is a file, not a folder")
        marker = self.folder / OWNER_FILE
        others = self._other_files()
        if marker.is_file():
            try:
                recorded = json.loads(marker.read_text(encoding="utf-8")).get("owner")
            except (ValueError, AttributeError, OSError):
                recorded = "(unreadable)"
            if recorded != owner and not adopt:
                raise ConfigError(
                    f"backend.state_dir: {where!r} holds the client states of another run "
                    f"({recorded}); two runs cannot share a state folder, choose another one"
                )
            self._written = self._read_written()
        elif adopt:
            self._written = {p.name for p in self.folder.glob("*.pt") if _STATE_FILE.match(p.name)}
        if not adopt and (others - self._written):
            shown = ", ".join(sorted(others - self._written)[:5])
            raise ConfigError(
                f"backend.state_dir: {where!r} holds files this run did not write ({shown}); "
                "plural deletes the state files it writes there, so it needs an empty folder "
                "or one of its own: choose another folder"
            )
        with writing(marker):
            self.folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"owner": owner}) + "\n", encoding="utf-8")
        self._write_written()

    def _other_files(self) -> set[str]:
        if not self.folder.is_dir():
            return set()
        return {p.name for p in self.folder.iterdir()} - {OWNER_FILE, WRITTEN_FILE}

    def _read_written(self) -> set[str]:
        path = self.folder / WRITTEN_FILE
        if not path.is_file():
            return set()
        names = path.read_text(encoding="utf-8").split("\n")
        return {n for n in names if _STATE_FILE.match(n)}

    def _write_written(self) -> None:
        """Rewrite the list of written files with those still on disk."""
        self._written = {n for n in self._written if (self.folder / n).exists()}
        text = "".join(f"{n}\n" for n in sorted(self._written))
        atomic_write(self.folder / WRITTEN_FILE, lambda tmp: tmp.write_text(text))

    def _unlink(self, name: str) -> None:
        if name in self._written:
            (self.folder / name).unlink(missing_ok=True)
            self._written.discard(name)

    def get(self, client_id: int) -> Any:
        name = self._files.get(client_id)
        if name is None:
            return None
        return load_plain(self.folder / name, mmap=True)

    def put(self, client_id: int, state: Any) -> None:
        old = self._files.pop(client_id, None)
        if state is not None:
            name = f"{client_id}.{uuid.uuid4().hex[:16]}.pt"
            path = self.folder / name
            with writing(path):
                with (self.folder / WRITTEN_FILE).open("a", encoding="utf-8") as log:
                    log.write(name + "\n")  # listed before it exists: never an unknown file
                self._written.add(name)
                save_plain(state, path)
            self._files[client_id] = name
        if old is not None:
            self._discard(old)

    def _discard(self, name: str) -> None:
        held = self._pinned | (self._pending or set())
        if name not in held:
            self._unlink(name)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._files

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._files))

    def snapshot(self) -> dict[str, Any]:
        self._pending = set(self._files.values())
        return {"kind": MANIFEST_KIND, "folder": str(self.folder), "files": dict(self._files)}

    def commit(self) -> None:
        if self._pending is None:
            return
        current = set(self._files.values())
        for name in self._pinned - self._pending - current:
            self._unlink(name)
        self._pinned, self._pending = self._pending, None
        self._write_written()

    def restore(self, snapshot: Any) -> None:
        """Adopt a manifest of this folder, or write the states of any other snapshot here;
        files no state refers to (written after the checkpoint) are removed."""
        if _is_manifest(snapshot) and Path(snapshot["folder"]) == self.folder:
            self._files = {int(k): v for k, v in snapshot["files"].items()}
            self._written |= set(self._files.values())  # this run's checkpoint names them
        else:
            self._files = {}
            for client_id, state in _states_of(snapshot):
                self.put(client_id, state)
        self._pinned, self._pending = set(self._files.values()), None
        for name in sorted(self._written - self._pinned):
            self._unlink(name)
        self._write_written()

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


def _is_manifest(snapshot: Any) -> bool:
    return isinstance(snapshot, Mapping) and snapshot.get("kind") == MANIFEST_KIND


def _states_of(snapshot: Any) -> Iterator[tuple[int, Any]]:
    """(client, state) pairs of a snapshot: a dict of states, a disk manifest, or shards."""
    if isinstance(snapshot, Mapping) and snapshot.get("kind") == SHARDED_KIND:
        for shard in snapshot["shards"]:
            yield from _states_of(shard)
        return
    if not _is_manifest(snapshot):
        yield from dict(snapshot).items()
        return
    folder = Path(snapshot["folder"])
    for client_id, name in snapshot["files"].items():
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(
                f"client {client_id}'s state file {str(path)!r}, named by the checkpoint, is "
                "missing: the run's client_state folder was moved or deleted"
            )
        yield int(client_id), load_plain(path)


def make_store(config: BackendConfig, run_dir: Path | None) -> InMemoryStateStore | DiskStateStore:
    """The store ``backend.state`` names; disk states go to ``backend.state_dir``, else to
    ``client_state/`` in the run directory, else to a temporary folder."""
    if config.state == "memory":
        return InMemoryStateStore()
    owner = str(run_dir.resolve()) if run_dir is not None else f"unsaved run {uuid.uuid4().hex}"
    if config.state_dir is not None:
        return DiskStateStore(config.state_dir, owner=owner)
    if run_dir is not None:  # inside the run directory, which the run holds locked
        return DiskStateStore(run_dir / "client_state", owner=owner, adopt=True)
    return DiskStateStore(tempfile.mkdtemp(prefix="plural-states-"), temporary=True, owner=owner)
