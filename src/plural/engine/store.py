"""The engine-owned client-state store.

Per-client personal state (a Local model, a personal head, control variates, a cluster id)
lives here, never on algorithm objects, so the engine can checkpoint it and later keep it
on disk or shard it across workers without algorithms noticing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class InMemoryStateStore:
    """Client states in a dict, keyed by client id. A client with no state has no entry."""

    def __init__(self) -> None:
        self._states: dict[int, Any] = {}

    def get(self, client_id: int) -> Any:
        """The client's state, or None if it has none yet."""
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

    def state_dict(self) -> dict[int, Any]:
        return dict(self._states)

    def load_state_dict(self, states: dict[int, Any]) -> None:
        self._states = dict(states)
