"""plural: personalized federated learning on heterogeneous client data.

Quick start::

    import plural
    results = plural.run("examples/digits_dirichlet.yaml", out="runs/digits")
    print(results.summary["test"]["accuracy"])

The building blocks are importable by name: ``plural.data`` (datasets, partitioners,
federations), ``plural.models``, ``plural.algorithms``, ``plural.core`` (trainer,
aggregators, rng), ``plural.engine``, ``plural.runner``.

Names are imported when first used, so that ``import plural`` (and ``plural --help``) does
not import torch; the registries load plural's components when first asked.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ALGORITHMS": "plural.registry",
    "DATASETS": "plural.registry",
    "MODELS": "plural.registry",
    "PARTITIONERS": "plural.registry",
    "TRANSFORMS": "plural.registry",
    "ConfigError": "plural.config",
    "EarlyStopping": "plural.engine",
    "Results": "plural.runner",
    "run": "plural.runner",
    "LoadedRun": "plural.runs",
    "load": "plural.runs",
    "ExperimentConfig": "plural.experiment",
    "load_config": "plural.experiment",
}
_SUBPACKAGES = (
    "algorithms",
    "data",
    "models",
    "placeholders",
    "core",
    "engine",
    "report",
    "runner",
    "runs",
)

__all__ = [
    "ALGORITHMS",
    "DATASETS",
    "MODELS",
    "PARTITIONERS",
    "TRANSFORMS",
    "ConfigError",
    "EarlyStopping",
    "ExperimentConfig",
    "LoadedRun",
    "Results",
    "__version__",
    "load",
    "load_config",
    "run",
]

if TYPE_CHECKING:
    from plural.config import ConfigError
    from plural.engine import EarlyStopping
    from plural.experiment import ExperimentConfig, load_config
    from plural.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONERS, TRANSFORMS
    from plural.runner import Results, run
    from plural.runs import LoadedRun, load


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        if name in ("ALGORITHMS", "DATASETS", "MODELS", "PARTITIONERS", "TRANSFORMS"):
            module.load_components()
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"plural.{name}")
    raise AttributeError(f"module 'plural' has no attribute {name!r}")
