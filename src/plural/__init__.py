"""plural: personalized federated learning on heterogeneous client data.

Quick start::

    import plural
    results = plural.run("examples/digits_fedavg.yaml", out="runs/digits")
    print(results.summary["test"]["accuracy"])

The building blocks are importable by name: ``plural.data`` (datasets, partitioners,
federations), ``plural.models``, ``plural.algorithms``, ``plural.core`` (trainer,
aggregators, rng), ``plural.engine``.
"""

from plural import algorithms, data, models, placeholders  # noqa: F401  (registers components)
from plural.config import ConfigError
from plural.engine import EarlyStopping
from plural.experiment import ExperimentConfig, load_config
from plural.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONERS, TRANSFORMS
from plural.runner import Results, run
from plural.runs import LoadedRun, load

__version__ = "0.1.0"

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
