"""The name ``python`` for a dataset, partition or model passed to ``plural.run`` as an object.

``plural.run(config, dataset=..., model=...)`` records such sections as ``{name: python}`` in
the run's config. Loading that config without passing the objects again fails here, with a
message that says why.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NoReturn

from plural.config import ConfigError
from plural.experiment import PYTHON_OBJECT
from plural.registry import DATASETS, MODELS, PARTITIONERS


@dataclasses.dataclass(frozen=True)
class PythonObjectConfig:
    """An object passed from Python has no settings in the config."""


def _missing(section: str, argument: str, listing: str) -> NoReturn:
    raise ConfigError(
        f"{section}.name: {PYTHON_OBJECT!r} stands for an object passed as "
        f"plural.run(config, {argument}=...); none was passed. Name one from "
        f"`plural list {listing}` or pass it."
    )


@DATASETS.register(PYTHON_OBJECT, PythonObjectConfig, "data passed from Python: run(dataset=...)")
def python_dataset(config: PythonObjectConfig, rng: Any) -> NoReturn:
    _missing("dataset", "dataset", "datasets")


@PARTITIONERS.register(
    PYTHON_OBJECT, PythonObjectConfig, "a FederatedDataset passed from Python, already split"
)
class PythonPartition:
    def __init__(self, config: PythonObjectConfig) -> None:
        self.config = config

    def split(self, data: Any, *, rng: Any) -> NoReturn:
        _missing("partition", "dataset", "partitioners")


@MODELS.register(PYTHON_OBJECT, PythonObjectConfig, "a module passed from Python: run(model=...)")
def python_model(config: PythonObjectConfig, input_shape: Any, num_classes: int) -> NoReturn:
    _missing("model", "model", "models")
