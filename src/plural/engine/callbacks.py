"""Callbacks: called after every round with that round's summary; may stop the run.

A callback may also define ``on_run_start(config, run_dir, start_round)`` (before the first
round; ``start_round`` > 0 when a run resumes) and ``on_run_end(results)`` (after the last
round, when the results are complete); the loop calls them where they exist (see
:func:`notify`). Logging integrations (TensorBoard, MLflow) live in
:mod:`plural.runner.tracking`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from tqdm.auto import tqdm


def notify(callbacks: Sequence[Any], hook: str, *args: Any) -> None:
    """Call the optional ``hook`` of every callback that defines it."""
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


class Callback(Protocol):
    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        """React to a finished round; return True to stop the run after it.

        ``summary`` maps each evaluated split to accuracy/loss summaries over clients
        (see ``plural.core.metrics.summarize``); it is empty on rounds without evaluation.
        """
        ...


class ProgressBar:
    """Rounds done and the latest mean test (or validation) accuracy.

    Shown only when stderr is a terminal, unless ``enabled`` says otherwise.
    """

    def __init__(self, rounds: int, done: int = 0, enabled: bool | None = None) -> None:
        show = sys.stderr.isatty() if enabled is None else enabled
        self._bar = tqdm(total=rounds, initial=done, unit="round", disable=not show, leave=False)

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        for split in ("test", "val"):
            accuracy = summary.get(split, {}).get("accuracy", {}).get("mean", math.nan)
            if not math.isnan(accuracy):
                self._bar.set_postfix({f"{split}_acc": f"{accuracy:.3f}"}, refresh=False)
                break
        self._bar.update(1)
        return False

    def close(self) -> None:
        self._bar.close()


class EarlyStopping:
    """Stop when the mean accuracy of ``split`` has not improved for ``patience`` evaluations."""

    def __init__(self, patience: int, split: str = "val", min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.split, self.min_delta = patience, split, min_delta
        self.best = -math.inf
        self.waited = 0

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        if self.split not in summary:
            return False
        accuracy = summary[self.split]["accuracy"]["mean"]
        if accuracy > self.best + self.min_delta:
            self.best, self.waited = accuracy, 0
            return False
        self.waited += 1
        return self.waited >= self.patience
