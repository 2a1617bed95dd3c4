"""The engine: the round loop, client sampling, backends, state store, callbacks. Running a
config end to end is :func:`plural.run` (:mod:`plural.runner`), above the engine."""

from plural.engine.callbacks import Callback, EarlyStopping, ProgressBar
from plural.engine.loop import RoundEvent, RoundLoop, RoundOutcome

__all__ = [
    "Callback",
    "EarlyStopping",
    "ProgressBar",
    "RoundEvent",
    "RoundLoop",
    "RoundOutcome",
]
