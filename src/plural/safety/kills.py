"""Kill a run at a chosen write and check that ``--resume`` gives the uninterrupted run's
files exactly.

``python -m plural.safety.kills CONFIG OUT --kill-at K --mode M`` runs ``plural run`` and
sends itself SIGKILL at its K-th write event (an atomic file write, a JSON-lines append or a
client-state file), ``before`` it, ``inside`` it (the temporary file written but not yet
renamed; half a line appended) or ``after`` it; ``--kill-at 0`` counts the events instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

MODES = ("before", "inside", "after")
TIMING_KEYS = ("wall_time_s",)
"""Clock-measured values that differ between otherwise identical runs."""


class _Killer:
    def __init__(self, kill_at: int, mode: str) -> None:
        self.kill_at = kill_at
        self.mode = mode
        self.events: list[str] = []

    def event(self, what: str, action: Callable[[], Any], partial: Callable[[], Any]) -> Any:
        self.events.append(what)
        if len(self.events) != self.kill_at:
            return action()
        if self.mode == "inside":
            partial()
        elif self.mode == "after":
            action()
        os.kill(os.getpid(), signal.SIGKILL)
        return None


def install(killer: _Killer) -> None:
    """Route plural's writes through ``killer``."""
    from plural.engine import store
    from plural.report import rundir

    atomic = rundir._atomic_write
    append = rundir.RunDirectory.append_record
    put = store.DiskStateStore.put

    def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        killer.event(f"write {path.name}", lambda: atomic(path, write), lambda: write(tmp))

    def append_record(self: Any, path: Path, record: Any) -> None:
        line = json.dumps(dict(record))

        def half() -> None:
            with path.open("a") as handle:
                handle.write(line[: len(line) // 2])

        killer.event(f"append {path.name}", lambda: append(self, path, record), half)

    def put_state(self: Any, client_id: int, state: Any) -> None:
        killer.event(f"state {client_id}", lambda: put(self, client_id, state), lambda: None)

    rundir._atomic_write = atomic_write  # type: ignore[assignment]
    rundir.RunDirectory.append_record = append_record  # type: ignore[method-assign]
    store.DiskStateStore.put = put_state  # type: ignore[method-assign]


def compare_runs(reference: Path, resumed: Path) -> list[str]:
    """What differs between two run directories, leaving out clock-measured values."""
    from plural.report.rundir import RunDirectory, deterministic

    ref, got = RunDirectory(reference), RunDirectory(resumed)
    problems = []
    a, b = (deterministic(pd.read_parquet(d.metrics_path)) for d in (ref, got))
    if not a.equals(b):
        problems.append(f"metrics.parquet differs ({len(a)} vs {len(b)} rows)")
    for name in ("summary.json", "federation.json", "config.yaml"):
        texts = [(d.path / name).read_text() for d in (ref, got)]
        if name.endswith(".json"):
            texts = [json.dumps(_untimed(json.loads(t)), sort_keys=True) for t in texts]
        if texts[0] != texts[1]:
            problems.append(f"{name} differs")
    for name in ("timeline.jsonl", "diagnostics.jsonl"):
        records = [[_untimed(r) for r in d.read_records(d.path / name)] for d in (ref, got)]
        if records[0] != records[1]:
            problems.append(f"{name} differs: {records[0]} vs {records[1]}")
    return problems


def _untimed(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _untimed(v) for k, v in data.items() if k not in TIMING_KEYS}
    return data


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="inside")
    args = parser.parse_args(argv)
    import torch

    from plural.cli import main as plural_main

    torch.set_num_threads(1)
    killer = _Killer(args.kill_at, args.mode)
    install(killer)
    code = plural_main(["run", args.config, "--out", args.out, "--quiet"])
    print(json.dumps({"events": killer.events}), file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
