"""The engine: the round loop, client sampling, backends, state store, callbacks."""

from plural.engine.callbacks import Callback, EarlyStopping, ProgressBar
from plural.engine.loop import Results, build_federation, build_model, run

__all__ = [
    "Callback",
    "EarlyStopping",
    "ProgressBar",
    "Results",
    "build_federation",
    "build_model",
    "run",
]
