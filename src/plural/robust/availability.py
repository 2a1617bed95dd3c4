"""When clients can take part: availability traces.

A trace gives each client windows of time in which it is online. Round ``r`` starts at
``(r - 1) * sampling.round_hours`` hours; a client can be sampled in that round when some
window of it contains that instant (``start <= t < end``). Two sources:

* a CSV file (``sampling.availability: path``) with columns ``client,start,end`` in hours,
  one window per line (a client may have several; a client with none is never available);
* ``diurnal``: a built-in day/night pattern in the spirit of the device traces of FedScale
  (Lai et al. 2022): each client has a local time zone drawn from (seed, "availability",
  client) and is online 8 hours a day (charging at night, from local 22:00 to 06:00).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from plural.config import ConfigError
from plural.core.rng import numpy_rng

DIURNAL = "diurnal"
DAY_HOURS = 24.0
ONLINE_FROM = 22.0  # local time at which a diurnal client comes online
ONLINE_HOURS = 8.0


@dataclasses.dataclass(frozen=True)
class Windows:
    """Per-client lists of ``[start, end)`` windows (hours)."""

    windows: tuple[tuple[tuple[float, float], ...], ...]

    def available(self, hour: float) -> list[int]:
        return [
            cid
            for cid, spans in enumerate(self.windows)
            if any(start <= hour < end for start, end in spans)
        ]


@dataclasses.dataclass(frozen=True)
class Diurnal:
    """Each client online ``ONLINE_HOURS`` a day from local ``ONLINE_FROM``."""

    offsets: np.ndarray  # each client's time zone, hours in [0, 24)

    def available(self, hour: float) -> list[int]:
        local = (hour + self.offsets - ONLINE_FROM) % DAY_HOURS
        return [int(c) for c in np.flatnonzero(local < ONLINE_HOURS)]


Availability = Windows | Diurnal


def load_windows(path: str | Path, num_clients: int) -> Windows:
    """The windows of a CSV trace; ConfigError for a missing file, missing columns, ids that
    are not clients, or windows that end before they start."""
    where = f"sampling.availability: {str(path)!r}"
    if not Path(path).is_file():
        raise ConfigError(
            f"{where} does not exist (give a CSV with columns client,start,end or 'diurnal')"
        )
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError) as err:
        raise ConfigError(f"{where} is not a readable CSV: {err}") from err
    missing = {"client", "start", "end"} - set(table.columns)
    if missing:
        raise ConfigError(
            f"{where} lacks column(s) {', '.join(sorted(missing))}; columns: client, start, end"
        )
    try:
        clients = table["client"].to_numpy(dtype=np.int64)
        starts = table["start"].to_numpy(dtype=np.float64)
        ends = table["end"].to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"{where}: client must be integers and start/end numbers ({err})"
        ) from err
    outside = sorted({int(c) for c in clients if c < 0 or c >= num_clients})
    if outside:
        raise ConfigError(
            f"{where} names clients {outside[:10]} that the federation does not have "
            f"(ids 0..{num_clients - 1})"
        )
    backwards = np.flatnonzero(~(ends > starts))
    if len(backwards):
        row = int(backwards[0])
        raise ConfigError(f"{where}: line {row + 2} has end <= start ({starts[row]}, {ends[row]})")
    spans: list[list[tuple[float, float]]] = [[] for _ in range(num_clients)]
    for cid, start, end in zip(clients, starts, ends, strict=True):
        spans[int(cid)].append((float(start), float(end)))
    return Windows(tuple(tuple(s) for s in spans))


def diurnal(num_clients: int, seed: int) -> Diurnal:
    """The built-in day/night pattern (see the module docstring)."""
    offsets = np.array(
        [numpy_rng(seed, "availability", c).uniform(0, DAY_HOURS) for c in range(num_clients)]
    )
    return Diurnal(offsets)


def load_availability(source: str, num_clients: int, seed: int) -> Availability:
    """``diurnal`` or the windows of the CSV at ``source``."""
    if source == DIURNAL:
        return diurnal(num_clients, seed)
    return load_windows(source, num_clients)


def round_hour(round_index: int, round_hours: float) -> float:
    """The instant round ``round_index`` starts (hours)."""
    return (round_index - 1) * round_hours
