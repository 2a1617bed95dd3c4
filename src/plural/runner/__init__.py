"""Running an experiment: assembling it from a config (:mod:`plural.runner.assembly`),
playing it with the engine's round loop, and recording it as it goes
(:mod:`plural.runner.recorders`)."""

from plural.runner.assembly import (
    ModelSource,
    apply_transforms,
    build_algorithm,
    build_client_models,
    build_federation,
    build_model,
    federation_info,
)
from plural.runner.session import Results, run

__all__ = [
    "ModelSource",
    "Results",
    "apply_transforms",
    "build_algorithm",
    "build_client_models",
    "build_federation",
    "build_model",
    "federation_info",
    "run",
]
