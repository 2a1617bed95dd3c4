"""Scale: peak memory and time per round as the federation grows from 10^2 to 10^4 clients.

Workload: FedPer on MNIST (all 70k images unless ``--max-samples``), IID partition over N
clients, each client's samples split 85/15 train/test (no validation: at 10^4 clients a
client holds 7 samples, 6 to train and 1 to test). Model: FedAvg's 2NN (an MLP 784-200-200-10).
The personal part is the last two linear layers (``3.*`` and ``5.*``: 42,210 floats, about
169 KB per client), kept between rounds in the engine's client-state store, in memory
(``backend.state: memory``) or one file per client (``backend.state: disk``, in the run
directory's ``client_state/``). ``--fraction`` of the clients (default 1%) train per round:
one epoch of SGD, lr 0.05, batch 10. Every client is evaluated on its test split at the last
round only (a client that never trained is scored with the initial personal part).
Sequential backend, one torch thread. Each run writes a run directory in a temporary folder
(metrics and a checkpoint every round), as a real run does.

Each (N, store) cell runs in a fresh Python process, so its peak RSS (``ru_maxrss``) is its
own. In that process, instrumented from the outside (no engine code changes):

* round starts are stamped by wrapping ``plural.engine.loop.sample_cohort`` (the first call
  of every round; the wrapper also records the cohorts), round ends by a callback, which
  also samples the resident set (``/proc/self/statm``), and every checkpoint write by
  wrapping ``RunDirectory.save_checkpoint``;
* ``setup`` is from the call of ``plural.run`` to the start of round 1 (MNIST read,
  partition, splits, model, run directory); a round runs from its start to its callback,
  so it includes writing its metrics and its checkpoint; ``steady`` is the median of rounds
  2..R-1 (round 1 also pays first-call costs); ``after`` is from the last round's end to
  ``plural.run``'s return (metrics consolidation, summary);
* ``RSS loop0`` is the resident set at the start of round 1 (interpreter, data, model, no
  client state yet), ``RSS end`` at the end of the last round, ``peak`` is ``ru_maxrss``
  at the end of the run (building the federation has a transient peak of its own).

Client state: ``w/ state`` and ``state MB`` are read from the run's last checkpoint (the
memory store's states, by tensor bytes; the files a disk store's manifest names, by file
bytes, checked against the folder), and must equal the distinct clients sampled (FedPer
keeps the personal part of every client that trained). ``ckpt MB`` / ``ckpt s`` are the
last checkpoint's size and write time: the memory store's checkpoint holds every state,
the disk store's only a manifest.

Cohort sizes (``--fractions``, one cell per fraction): FedAvg (``--algorithm fedavg``, no
client state) on 1,000 clients with 1%, 10% and 100% of them per round measures how memory
grows with the cohort. The peak resident set is reset when round 1 starts
(``/proc/self/clear_refs``), so ``loop peak`` is the round loop's own peak (``VmHWM``) and
``loop +MB`` its growth over the resident set at that start.

Usage::

    .venv/bin/python benchmarks/scale.py                               # 100, 1000, 10000
    .venv/bin/python benchmarks/scale.py --sizes 100,1000 --rounds 3 --out /tmp/scale.json
    .venv/bin/python benchmarks/scale.py --sizes 1000 --fractions 0.01,0.1,1 --algorithm fedavg \
        --stores memory --rounds 3 --out benchmarks/results/scale_cohorts.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from common import machine_info

import plural
import plural.engine.loop as engine_loop
from plural.algorithms.partial import PartialState
from plural.core.params import nbytes
from plural.engine.store import MANIFEST_KIND
from plural.report.rundir import RunDirectory

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "scale.json"
PERSONAL = ("3.*", "5.*")  # the MLP's last two linear layers (Linear 200-200, Linear 200-10)
STORES = ("memory", "disk")
ALGORITHMS = ("fedper", "fedavg")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


# --------------------------------------------------------------------------- configuration


def int_list(text: str) -> list[int]:
    """``"100,1000"`` -> ``[100, 1000]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def float_list(text: str) -> list[float]:
    """``"0.01,0.1"`` -> ``[0.01, 0.1]``."""
    return [float(part) for part in text.split(",") if part.strip()]


def store_list(text: str) -> list[str]:
    """``"memory,disk"`` -> ``["memory", "disk"]``, each checked."""
    stores = [part.strip() for part in text.split(",") if part.strip()]
    for store in stores:
        if store not in STORES:
            raise argparse.ArgumentTypeError(f"unknown store {store!r}; allowed: memory, disk")
    return stores


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int_list, default=[100, 1000, 10000], help="clients")
    parser.add_argument("--stores", type=store_list, default=list(STORES), help="memory,disk")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--fractions",
        "--fraction",
        type=float_list,
        default=[0.01],
        help="clients sampled per round (several: one cell per cohort size)",
    )
    parser.add_argument(
        "--algorithm", default="fedper", choices=ALGORITHMS, help="fedper (personal layers)"
    )
    parser.add_argument("--max-samples", type=int, default=None, help="MNIST subset (all: 70k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmpdir", type=Path, default=None, help="where run directories go")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="JSON results file")
    parser.add_argument(
        "--cell", nargs=3, metavar=("CLIENTS", "STORE", "FRACTION"), help=argparse.SUPPRESS
    )
    parser.add_argument("--cell-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or not all(0 < f <= 1 for f in args.fractions) or min(args.sizes) < 1:
        parser.error("--rounds and --sizes must be >= 1 and --fraction in (0, 1]")
    return args


def make_config(
    args: argparse.Namespace, clients: int, store: str, fraction: float
) -> dict[str, Any]:
    """One cell's experiment as a plain config dict (what ``plural.run`` takes)."""
    dataset: dict[str, Any] = {"name": "mnist"}
    if args.max_samples is not None:
        dataset["max_samples"] = args.max_samples
    algorithm: dict[str, Any] = {"name": args.algorithm}
    if args.algorithm == "fedper":
        algorithm["personal"] = list(PERSONAL)
    return {
        "name": f"scale-{store}-{clients}",
        "seed": args.seed,
        "rounds": args.rounds,
        "dataset": dataset,
        "partition": {"name": "iid", "num_clients": clients},
        "split": {"val": 0.0, "test": 0.15},
        "model": {"name": "mlp", "hidden": [200, 200]},
        "algorithm": algorithm,
        "sampling": {"fraction": fraction},
        "train": {"lr": 0.05, "batch_size": 10, "local_epochs": 1},
        "eval": {"every": args.rounds, "splits": ["test"]},
        "backend": {"name": "sequential", "threads_per_worker": 1, "state": store},
    }


# --------------------------------------------------------------------------- one cell


def rss_mb() -> float:
    """The current resident set of this process, in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES / MB


def reset_peak_rss() -> None:
    """Reset this process's peak resident set (``VmHWM``; Linux >= 4.0), so that
    :func:`high_water_mb` then tells the peak of the round loop alone."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def high_water_mb() -> float:
    """The peak resident set since the last :func:`reset_peak_rss` (``VmHWM``), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """The peak resident set of this process so far, in MB (``ru_maxrss`` is KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RoundProbe:
    """Stamps each round's start (through ``sample_cohort``) and end (as a callback), with
    the resident set at both; records the cohorts and how long each checkpoint took."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.rss_start: list[float] = []
        self.rss_end: list[float] = []
        self.peak_before_loop: float | None = None
        self.cohorts: list[list[int]] = []
        self.checkpoint_s: list[float] = []

    def sampling(self, sample: Callable[..., list[int]]) -> Callable[..., list[int]]:
        """``sample_cohort`` that first notes the round's start."""

        def stamped(*args: Any, **kwargs: Any) -> list[int]:
            self.starts.append(time.perf_counter())
            self.rss_start.append(rss_mb())
            if self.peak_before_loop is None:
                self.peak_before_loop = peak_rss_mb()
                reset_peak_rss()
            cohort = sample(*args, **kwargs)
            self.cohorts.append(list(cohort))
            return cohort

        return stamped

    def checkpointing(self, save: Callable[..., None]) -> Callable[..., None]:
        """``RunDirectory.save_checkpoint``, timed."""

        def timed(*args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            save(*args, **kwargs)
            self.checkpoint_s.append(time.perf_counter() - started)

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[RoundProbe]:
        """The two wrappers in place (in this process) for the duration of the block."""
        sample, save = engine_loop.sample_cohort, RunDirectory.save_checkpoint
        engine_loop.sample_cohort = self.sampling(sample)
        RunDirectory.save_checkpoint = self.checkpointing(save)  # type: ignore[method-assign]
        try:
            yield self
        finally:
            engine_loop.sample_cohort = sample
            RunDirectory.save_checkpoint = save  # type: ignore[method-assign]

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        self.ends.append(time.perf_counter())
        self.rss_end.append(rss_mb())
        return False


def stored_states(run_dir: Path) -> tuple[int, int]:
    """(clients with a state, bytes of those states) in the run's last checkpoint: tensor
    bytes of a memory store's states; file bytes of the ``client_state/`` files that a disk
    store's manifest names (which must be every file there)."""
    snapshot = torch.load(run_dir / "checkpoint.pt", weights_only=False, mmap=True)["store"]
    if snapshot.get("kind") != MANIFEST_KIND:
        return len(snapshot), sum(nbytes(state) for state in snapshot.values())
    folder = Path(snapshot["folder"])
    names = set(snapshot["files"].values())
    on_disk = {path.name for path in folder.glob("*.pt")}
    if on_disk != names:
        raise RuntimeError(f"{folder}: {len(on_disk)} state files, the manifest names {len(names)}")
    return len(names), sum((folder / name).stat().st_size for name in names)


def timings(probe: RoundProbe, started: float, finished: float) -> dict[str, Any]:
    """Seconds of one run: setup, each round, steady (median of rounds 2..R-1, else of the
    training rounds), the last round (with evaluation), after the loop, total."""
    rounds = [end - start for start, end in zip(probe.starts, probe.ends, strict=True)]
    steady = rounds[1:-1] or rounds[:-1] or rounds
    return {
        "setup_s": probe.starts[0] - started,
        "round_s": rounds,
        "round1_s": rounds[0],
        "steady_round_s": statistics.median(steady),
        "last_round_s": rounds[-1],
        "after_s": finished - probe.ends[-1],
        "total_s": finished - started,
    }


def run_cell(args: argparse.Namespace, clients: int, store: str, fraction: float) -> dict[str, Any]:
    """One (clients, store, fraction) run of ``plural.run`` in this process, measured."""
    torch.set_num_threads(1)
    rss_at_start = rss_mb()
    probe = RoundProbe()
    with (
        probe.installed(),
        tempfile.TemporaryDirectory(prefix="plural-scale-", dir=args.tmpdir) as tmp,
    ):
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        results = plural.run(
            make_config(args, clients, store, fraction),
            out=run_dir,
            progress=False,
            callbacks=[probe],
        )
        finished = time.perf_counter()
        peak = peak_rss_mb()
        loop_peak = high_water_mb()
        held, held_bytes = stored_states(run_dir)
        checkpoint_bytes = (run_dir / "checkpoint.pt").stat().st_size
    return {
        "clients": clients,
        "store": store,
        "rounds": len(probe.ends),
        "cohort_size": len(probe.cohorts[0]),
        "clients_sampled": len(set().union(*probe.cohorts)),
        "clients_with_state": held,
        "state_bytes": held_bytes,
        "checkpoint_bytes": checkpoint_bytes,
        "checkpoint_s": probe.checkpoint_s,
        "fraction": fraction,
        "algorithm": args.algorithm,
        "personal_entries": list(results.server.part(PartialState, PartialState(())).personal),
        "rss_start_mb": rss_at_start,
        "rss_before_loop_mb": probe.rss_start[0],
        "peak_before_loop_mb": probe.peak_before_loop,
        "rss_round_end_mb": probe.rss_end,
        "peak_rss_mb": max(peak, probe.peak_before_loop or 0.0),
        "loop_peak_rss_mb": loop_peak,
        "loop_growth_mb": loop_peak - probe.rss_start[0],
        **timings(probe, started, finished),
        "test_accuracy_mean": results.summary["test"]["accuracy"]["mean"],
    }


# --------------------------------------------------------------------------- all cells


def cell_command(
    args: argparse.Namespace, clients: int, store: str, fraction: float, out: Path
) -> list[str]:
    """The command that measures one cell in a fresh process, writing its JSON to ``out``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--cell", str(clients), store]
    command += [str(fraction), "--rounds", str(args.rounds), "--algorithm", args.algorithm]
    command += ["--seed", str(args.seed), "--cell-out", str(out)]
    if args.max_samples is not None:
        command += ["--max-samples", str(args.max_samples)]
    if args.tmpdir is not None:
        command += ["--tmpdir", str(args.tmpdir)]
    return command


def measure(args: argparse.Namespace, clients: int, store: str, fraction: float) -> dict[str, Any]:
    """One cell, in a fresh subprocess; its figures plus the wall time of the process."""
    with tempfile.TemporaryDirectory(prefix="plural-scale-cell-") as tmp:
        out = Path(tmp) / "cell.json"
        started = time.perf_counter()
        subprocess.run(cell_command(args, clients, store, fraction, out), check=True)
        cell = json.loads(out.read_text())
    cell["process_s"] = time.perf_counter() - started
    cell["config"] = make_config(args, clients, store, fraction)
    return cell


# --------------------------------------------------------------------------- reporting


HEADER = [
    "clients",
    "store",
    "cohort",
    "rounds",
    "w/ state",
    "state MB",
    "ckpt MB",
    "ckpt s",
    "RSS loop0",
    "RSS end",
    "peak MB",
    "loop peak",
    "loop +MB",
    "setup s",
    "steady s",
    "last rnd s",
    "total s",
]


def row(cell: dict[str, Any]) -> list[str]:
    return [
        str(cell["clients"]),
        cell["store"],
        str(cell["cohort_size"]),
        str(cell["rounds"]),
        str(cell["clients_with_state"]),
        f"{cell['state_bytes'] / MB:.1f}",
        f"{cell['checkpoint_bytes'] / MB:.1f}",
        f"{cell['checkpoint_s'][-1]:.3f}",
        f"{cell['rss_before_loop_mb']:.0f}",
        f"{cell['rss_round_end_mb'][-1]:.0f}",
        f"{cell['peak_rss_mb']:.0f}",
        f"{cell.get('loop_peak_rss_mb', float('nan')):.0f}",
        f"{cell.get('loop_growth_mb', float('nan')):.0f}",
        f"{cell['setup_s']:.2f}",
        f"{cell['steady_round_s']:.3f}",
        f"{cell['last_round_s']:.2f}",
        f"{cell['total_s']:.2f}",
    ]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cell is not None:
        cell = run_cell(args, int(args.cell[0]), store_list(args.cell[1])[0], float(args.cell[2]))
        write_json(args.cell_out, cell)
        return 0
    info = machine_info(torch_threads=1)
    started = time.perf_counter()
    cells = []
    for clients in args.sizes:
        for store in args.stores:
            for fraction in args.fractions:
                print(f"{clients} clients, {store} store, fraction {fraction} ...", flush=True)
                cells.append(measure(args, clients, store, fraction))
                print("  " + "  ".join(row(cells[-1])), flush=True)
                stateful = args.algorithm == "fedper"
                if stateful and cells[-1]["clients_with_state"] != cells[-1]["clients_sampled"]:
                    print(f"  WARNING: {cells[-1]['clients_sampled']} clients sampled", flush=True)
    info["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {
        "benchmark": "scale",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "settings": {k: v for k, v in settings.items() if not k.startswith("cell")},
        "machine": info,
        "cells": cells,
        "elapsed_s": time.perf_counter() - started,
    }
    print(table([HEADER, *(row(c) for c in cells)]))
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
