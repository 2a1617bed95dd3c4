"""The header ``plural run`` prints before the first round: what is about to run, where."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, TextIO

SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a run is made of, known once its federation, model and backend are built."""

    name: str
    dataset: str
    clients: int
    classes: int
    split_sizes: dict[str, int]
    model: str
    parameters: tuple[int, ...]
    """Trainable and frozen parameters of each client architecture."""
    algorithm: str
    rounds: int
    backend: str
    workers: int | None
    device: str
    threads: int | None
    run_dir: Path | None
    notes: tuple[str, ...] = ()
    threads_adapt: bool = False
    """True when the threads move between 1 and ``threads`` with the load on the cores."""

    def lines(self) -> list[str]:
        sizes = ", ".join(f"{self.split_sizes[s]} {s}" for s in SPLIT_NAMES)
        params = " / ".join(f"{p:,}" for p in self.parameters)
        workers = f", {self.workers} workers" if self.workers else ""
        threads = "?" if self.threads is None else str(self.threads)
        if self.threads_adapt:
            threads = f"1-{threads} (fewer while other processes use the cores)"
        rows = [
            f"plural run {self.name!r}",
            f"  dataset:   {self.dataset}: {self.clients} clients, {self.classes} classes; "
            f"samples {sizes}",
            f"  model:     {self.model}, {params} parameters",
            f"  algorithm: {self.algorithm}, {_count(self.rounds, 'round')}",
            f"  backend:   {self.backend}{workers} on {self.device}, {threads} torch "
            f"thread{'' if self.threads == 1 and not self.threads_adapt else 's'} per process",
            f"  run dir:   {self.run_dir if self.run_dir is not None else '(none: nothing kept)'}",
        ]
        rows += [f"  note:      {note}" for note in self.notes]
        return rows


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def attack_notes(cfg: Any) -> tuple[str, ...]:
    """A note for an omniscient attack: its attackers see what real ones may not."""
    from plural.robust.config import OMNISCIENT_ATTACKS

    attack = getattr(getattr(cfg, "attack", None), "name", "none")
    if attack not in OMNISCIENT_ATTACKS:
        return ()
    return (f"attack {attack} is omniscient: it sees every honest update of the round",)


def run_info(
    cfg: Any, federation: Any, models: Any, backend: Any, device: Any, run_dir: Path | None
) -> RunInfo:
    """The :class:`RunInfo` of a run assembled from these parts."""
    return RunInfo(
        name=cfg.name,
        dataset=cfg.dataset.name if cfg.dataset.name != "python" else federation.name,
        clients=federation.num_clients,
        classes=federation.num_classes,
        split_sizes={s: int(federation.sizes(s).sum()) for s in SPLIT_NAMES},
        model=cfg.model.name,
        parameters=tuple(sum(p.numel() for p in m.parameters()) for m in models.members),
        algorithm=cfg.algorithm.name,
        rounds=cfg.rounds,
        backend=cfg.backend.name,
        workers=getattr(backend, "workers", None),
        device=str(device),
        threads=getattr(backend, "threads", None),
        run_dir=run_dir,
        notes=(*getattr(federation, "notes", ()), *attack_notes(cfg)),
        threads_adapt=getattr(backend, "governor", None) is not None,
    )


class HeaderPrinter:
    """A run callback that prints the header when the run starts (``plural run``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.info: RunInfo | None = None

    def on_run_info(self, info: RunInfo) -> None:
        self.info = info
        print("\n".join(info.lines()), file=self.stream or sys.stdout, flush=True)

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        return False  # never stops the run
