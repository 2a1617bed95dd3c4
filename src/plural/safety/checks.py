"""Settings and federations that would run but give a meaningless result: an error before
training, or a warning where the setting is legitimate but worth knowing about."""

from __future__ import annotations

import warnings
from typing import Any

from plural.config import ConfigError


class PluralWarning(UserWarning):
    """A run that will go ahead, but part of it measures less than it seems."""


def check_config(cfg: Any) -> None:
    """Errors that the config alone shows: nothing would be trained or scored."""
    splits = cfg.eval.splits
    if not splits:
        raise ConfigError(
            "eval.splits: empty, so nothing would be scored; give at least one of train, val, test"
        )
    fractions = {"train": 1.0, "val": cfg.split.val, "test": cfg.split.test}
    if cfg.split.server is not None:  # the server set is scored; clients may keep all to train
        fractions = dict.fromkeys(fractions, 1.0)
    if all(fractions[s] == 0 for s in splits):
        raise ConfigError(
            f"eval.splits = {list(splits)} but split."
            f"{' and split.'.join(f'{s} = 0' for s in splits)}: nothing would be scored; give "
            f"split.{splits[0]} > 0 or evaluate another split"
        )
    if "test" in splits and fractions["test"] == 0:
        raise ConfigError(
            "split.test = 0, but eval.splits has 'test' (what summaries and comparisons "
            "report): give split.test > 0, or evaluate only other splits (eval.splits: [val])"
        )
    steps = cfg.train.local_steps
    if cfg.train.local_epochs == 0 and not steps:  # legitimate (the initial model's scores)
        warnings.warn(
            "train.local_epochs = 0 (and no train.local_steps): clients do not train, so the "
            "run scores the initial model; give local_epochs >= 1 to train",
            PluralWarning,
            stacklevel=3,
        )


def check_federation(cfg: Any, federation: Any, models: Any) -> None:
    """Errors and warnings that the built federation and model show, before training."""
    if cfg.train.loss == "mse" and federation.is_classification:
        raise ConfigError(
            f"train.loss: 'mse' is for regression targets, but {federation.name!r} has "
            f"{federation.num_classes} classes; use train.loss: cross_entropy"
        )
    for member in models.members:
        if not any(p.requires_grad for p in member.parameters()):
            raise ConfigError(
                "model: it has no trainable parameters, so nothing would be learned; give a "
                "model with parameters that require gradients"
            )
    train = federation.sizes("train")
    if (train < 2).all():
        raise ConfigError(
            f"partition: every one of the {len(train)} clients has fewer than 2 training "
            "samples; use fewer clients (num_clients) or a larger min_samples"
        )
    if (train < 2).any():
        warnings.warn(
            f"{int((train < 2).sum())} of {len(train)} clients have fewer than 2 training "
            "samples; their local training says little (raise partition.min_samples)",
            PluralWarning,
            stacklevel=3,
        )
    if getattr(federation, "server", None) is not None:
        return  # the server set is scored; clients may keep every sample to train
    scored = [s for s in cfg.eval.splits if s != "train"]
    empty = {s: int((federation.sizes(s) == 0).sum()) for s in scored}
    if scored and all(empty[s] == len(train) for s in scored) and "train" not in cfg.eval.splits:
        raise ConfigError(
            f"split: no client has samples in {', '.join(scored)} (clients are too small to "
            "split), so nothing would be scored; use fewer, larger clients or larger fractions"
        )
    for split, count in empty.items():
        if count:
            warnings.warn(
                f"{count} of {len(train)} clients are too small to have {split} samples; "
                f"they are left out of the {split} scores",
                PluralWarning,
                stacklevel=3,
            )


def check_validation(algorithm: Any, federation: Any) -> None:
    """A method that scores on each client's validation split (``needs_validation``) cannot
    run with clients that have none: an error before training, never NaN scores later."""
    if not getattr(algorithm, "needs_validation", False):
        return
    empty = [int(c) for c in (federation.sizes("val") == 0).nonzero()[0]]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise ConfigError(
            f"split: {len(empty)} of {federation.num_clients} clients have no validation "
            f"samples (clients {shown}), but {type(algorithm).__name__} scores on each client's "
            "validation split; raise split.val, or use fewer, larger clients "
            "(partition.min_samples)"
        )
