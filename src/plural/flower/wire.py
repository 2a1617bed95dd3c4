"""What crosses between plural's ServerApp and its ClientApps, and how.

A message carries one pickled payload in a ``ConfigRecord`` (the same work items and replies
that every plural backend passes: client id, round, message, a marker for the client's kept
state). Payloads are read back with an unpickler that builds only objects of plural, torch,
numpy and a few standard-library modules, so a peer cannot make the reader import and call
anything else; it is a guard against accidents and crude attacks, not a sandbox: run
deployments with TLS and node authentication (see the README).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

RECORD = "plural"
"""The key of the ConfigRecord that carries the payload."""
PAYLOAD = "payload"
SETUP_TYPE = "query.plural_setup"
WORK_TYPE = "train.plural_work"

_ALLOWED_PREFIXES = ("plural.", "torch", "numpy", "collections", "copyreg", "_codecs")
_ALLOWED_BUILTINS = frozenset(
    {"set", "frozenset", "slice", "range", "complex", "bytearray", "tuple", "list", "dict"}
)


def quiet_flower() -> None:
    """No telemetry from Flower and no usage statistics from Ray (set before importing)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class _PluralUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = module == "plural" or module.startswith(_ALLOWED_PREFIXES)
        if module == "builtins":
            allowed = name in _ALLOWED_BUILTINS
        if not allowed:
            raise pickle.UnpicklingError(
                f"plural.flower: a message asked to build {module}.{name}; only objects of "
                "plural, torch and numpy may cross between the ServerApp and the ClientApps"
            )
        return super().find_class(module, name)


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    return _PluralUnpickler(io.BytesIO(data)).load()


def pack(obj: Any) -> Any:
    """A Flower ``RecordDict`` holding ``obj``."""
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict({RECORD: ConfigRecord({PAYLOAD: dumps(obj)})})


def unpack(content: Any) -> Any:
    """The object a ``RecordDict`` made by :func:`pack` holds."""
    return loads(content.config_records[RECORD][PAYLOAD])
