"""The scikit-learn 8x8 handwritten digits."""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.config import setting
from plural.data.datasets.common import DIGIT_NAMES, _standardize_features
from plural.data.types import ArrayDataset
from plural.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Settings of the scikit-learn 8x8 digits."""

    standardize: bool = setting(
        False, help="per-pixel zero mean and unit std over the pool (constant pixels stay 0)"
    )


@DATASETS.register("digits", DigitsConfig, "scikit-learn 8x8 handwritten digits (1797 images)")
def load_digits(config: DigitsConfig, rng: np.random.Generator) -> ArrayDataset:
    """The 1797 8x8 digits bundled with scikit-learn, as ``images / 16`` in ``(1, 8, 8)``."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    if config.standardize:
        _standardize_features(x)
    return ArrayDataset(
        name="digits",
        x=np.ascontiguousarray(x),
        y=np.asarray(bunch.target, dtype=np.int64),
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=DIGIT_NAMES,
    )
