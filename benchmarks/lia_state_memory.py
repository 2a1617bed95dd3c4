"""pFedLIA's server-side memory at 1,000 and 10,000 clients, each scoring 20 peers (issue 20).

One lazy phase runs on synthetic clients (lazy updates of a 2-entry model, score rows of +-1
by group with noise, so no model is trained), central (``clustering: spectral``, 4 clusters:
the sparse score graph) and decentral (peer agreement), through ``PFedLIA.lazy_phase`` with a
round context that answers at once. Measured: the bytes of every array pFedLIA's server state
holds afterwards (scores, released values, choices, peers and the lazy-phase record; an array
shared by the state and the record counted once) and the peak of traced allocations
(``tracemalloc``; NumPy's are traced) during the phase, replies included (central clients
send a dense float32 row: 40 kB each at 10,000 clients), and the phase's seconds.

The script reads both layouts, so the dense one (before issue 20) is measured by pointing
``PYTHONPATH`` at an older checkout's ``src``. Run from the repository root, under the shared
lock (figures in ``benchmarks/results/lia_state_memory.json``, ``--label`` names them)::

    flock /tmp/plural-bench.lock env OMP_NUM_THREADS=1 PYTHONPATH=src \\
        .venv/bin/python benchmarks/lia_state_memory.py --label sparse
    flock /tmp/plural-bench.lock env OMP_NUM_THREADS=1 PYTHONPATH=<old checkout>/src \\
        .venv/bin/python benchmarks/lia_state_memory.py --label dense
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import tracemalloc
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plural.algorithms.pfedlia import LIAServerState
from plural.algorithms.pfedlia.messages import LazyReply, ScoreReply
from plural.core.algorithm import FederationInfo
from plural.core.compression import compress
from plural.experiment import load_config
from plural.runner import build_algorithm

try:  # the sparse layout (issue 20)
    from plural.core.sparse_scores import SparseRow
except ImportError:  # the dense layout: rows are (N,) floats, NaN where not scored
    SparseRow = None

HERE = Path(__file__).parent
PEERS, GROUPS = 20, 4
VARIANTS = {
    "central": {"clustering": "spectral", "clusters": GROUPS},
    "decentral": {"variant": "decentral"},
}


class Clients:
    """A round context whose clients answer at once (see the module docstring)."""

    def __init__(self, algorithm: Any, n: int) -> None:
        self.algorithm, self.num_clients, self.round = algorithm, n, 1
        self.clients = list(range(n))
        self.delta = compress({"w": torch.ones(2)}, "none", 0.1)
        self.noise = np.random.default_rng(1)

    def rng(self, purpose: str) -> np.random.Generator:
        return np.random.default_rng(0)

    def map(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        per_client: Mapping[int, Any] | None = None,
    ) -> list[Any]:
        if phase == "lazy_train":
            return [LazyReply(self.delta, 10) for _ in cohort]
        assert per_client is not None
        return [self.reply(i, per_client[i].peers) for i in cohort]

    def reply(self, i: int, peers: Sequence[int]) -> ScoreReply:
        columns = np.array(sorted([*peers, i]), dtype=np.int64)
        same = columns % GROUPS == i % GROUPS
        values = np.where(same, 1.0, -1.0) + 0.3 * self.noise.standard_normal(len(columns))
        gen = torch.Generator()
        if SparseRow is None:
            row = np.full(self.num_clients, np.nan)
            row[columns] = values
            return ScoreReply(self.algorithm.release(row, i, gen), row, len(columns))
        sparse = SparseRow(columns, values)
        if hasattr(self.algorithm, "reply"):  # since decentral clients send tiers (2026-12-07)
            return self.algorithm.reply(sparse, i, self.num_clients, gen, len(columns))
        released = self.algorithm.release(sparse, i, self.num_clients, gen)
        return ScoreReply(released, sparse, len(columns))


def arrays(value: Any) -> Iterator[np.ndarray]:
    """Every NumPy array inside ``value`` (dataclasses, mappings, sequences)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from arrays(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from arrays(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from arrays(getattr(value, field.name))


def state_bytes(state: LIAServerState) -> tuple[int, int]:
    """Bytes of the state's arrays (each counted once) and of its largest array."""
    unique = {id(a): a for a in arrays(state)}
    sizes = [a.nbytes for a in unique.values()]
    return sum(sizes), max(sizes)


def measure(n: int, variant: str) -> dict[str, Any]:
    cfg = {
        "name": "lia-memory",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [4]},
        "partition": {"name": "iid", "num_clients": n},
        "algorithm": {"name": "pfedlia", "peers_scored": PEERS, **VARIANTS[variant]},
    }
    algorithm = build_algorithm(load_config(cfg))
    info = FederationInfo(n, 2, (2,), np.arange(n) % GROUPS)
    tracemalloc.start()
    server = algorithm.init({"w": torch.zeros(2)}, info, np.random.default_rng(0))
    tracemalloc.reset_peak()
    started = time.perf_counter()
    server = algorithm.lazy_phase(server, list(range(n)), Clients(algorithm, n))
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    state = server.part(LIAServerState)
    total, largest = state_bytes(state)
    record = state.records[-1]
    quality = record.get("neighbourhoods", {}).get("purity", record.get("ari"))
    return {
        "clients": n,
        "variant": variant,
        "state_mb": round(total / 2**20, 2),
        "largest_array_mb": round(largest / 2**20, 2),
        "peak_mb": round(peak / 2**20, 1),
        "seconds": round(seconds, 1),
        "quality": quality,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--label", default="sparse" if SparseRow is not None else "dense")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "lia_state_memory.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in args.sizes:
        for variant in VARIANTS:
            row = {"layout": args.label, **measure(n, variant)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
    saved[args.label] = rows
    args.out.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
