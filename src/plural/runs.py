"""Reusing a finished run: :func:`load` and ``plural export``.

``plural.load(run_dir)`` reads a run directory back: its config, its federation (rebuilt
from the config and the data seed, exactly as the run built it), its metrics and summary,
and from its last checkpoint the server state and the client states. ``.model(client)`` is
the ``torch.nn.Module`` that client is scored with: its personal model (fine-tuned models
included: they live in the client state), its cluster's model, or the global model.

:func:`export` writes one safetensors file per client and a ``manifest.json`` naming, per
client, the file, which model it is and its recorded accuracy.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from plural.config import ConfigError
from plural.core.algorithm import Algorithm, OnClient, ServerState, full_params
from plural.core.mixture_module import MixtureModule
from plural.core.trainer import LocalTrainer, Mixture
from plural.data.federated import FederatedDataset
from plural.data.types import ArrayDataset
from plural.engine.backends import ClientModels
from plural.engine.heldout import server_models
from plural.engine.store import InMemoryStateStore
from plural.experiment import PYTHON_OBJECT, ExperimentConfig, load_config
from plural.report.rundir import RunDirectory
from plural.runner import build_algorithm, build_client_models, build_federation
from plural.safety.runlock import RunDirectoryError

MANIFEST = "manifest.json"


@dataclasses.dataclass
class LoadedRun:
    """A finished (or interrupted) run read back from its directory."""

    path: Path
    config: ExperimentConfig
    metrics: pd.DataFrame
    summary: dict[str, Any]
    server: ServerState
    states: dict[int, Any]
    round: int
    """The last round the checkpoint holds."""
    dataset: ArrayDataset | FederatedDataset | None = None
    """The data passed to ``plural.run`` from Python, for runs whose dataset is ``python``."""

    @functools.cached_property
    def federation(self) -> FederatedDataset:
        """The run's federation, rebuilt from its config (the same data seed, the same data)."""
        if self.config.dataset.name == PYTHON_OBJECT and self.dataset is None:
            raise ConfigError(
                f"{self.path}: the run's dataset was passed from Python; pass the same data to "
                "plural.load(run_dir, dataset=...) to rebuild its federation"
            )
        return build_federation(self.config, self.dataset)

    @functools.cached_property
    def algorithm(self) -> Algorithm:
        return build_algorithm(self.config)

    @functools.cached_property
    def _models(self) -> ClientModels:
        if self.config.model.name == PYTHON_OBJECT:
            raise ConfigError(
                f"{self.path}: the run's model was passed from Python; plural.load cannot "
                "rebuild it (export the run from the Python session instead)"
            )
        return build_client_models(self.config, self.federation, self.algorithm)

    def _params(self, client: int) -> Any:
        if not 0 <= client < self.federation.num_clients:
            raise ConfigError(
                f"client {client}: the run has clients 0..{self.federation.num_clients - 1}"
            )
        return self.algorithm.evaluated(self.server, self.states.get(client), client)[""]

    def model_kind(self, client: int) -> str:
        """Which model scores ``client``: ``global``, ``cluster<k>`` or ``personal``."""
        params = self._params(client)
        for name, model in server_models(self.algorithm, self.server).items():
            if params is model:
                return name or "global"
        return "personal"

    def model(self, client: int) -> nn.Module:
        """The module ``client`` is scored with, in evaluation mode (for FedEM, a
        :class:`~plural.core.mixture_module.MixtureModule` of the components with the client's
        mixture weights)."""
        params = self._params(client)
        member = self._models.members[self._models.index_of(client)]
        if isinstance(params, Mixture):
            components = [_loaded(member, component) for component in params.components]
            classify = self.config.train.loss == "cross_entropy"
            return MixtureModule(components, params.weights, classify).eval()
        if isinstance(params, OnClient):
            params = full_params(params, LocalTrainer(member, self.config.train))
        return _loaded(member, params)


def _loaded(member: nn.Module, params: Any) -> nn.Module:
    """A copy of ``member`` holding ``params``, in evaluation mode."""
    module = copy.deepcopy(member)
    module.load_state_dict(params)
    return module.eval()


def load(run_dir: str | Path, dataset: ArrayDataset | FederatedDataset | None = None) -> LoadedRun:
    """Read the run in ``run_dir`` (see the module docstring); ``dataset``: the data the run
    was given from Python, if it was."""
    directory = RunDirectory(run_dir)
    if not directory.config_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    if not directory.has_checkpoint():
        raise ConfigError(
            f"{str(run_dir)!r} has no checkpoint.pt: the run has not finished a round"
        )
    try:
        checkpoint = directory.load_checkpoint()
    except RunDirectoryError as err:
        raise ConfigError(str(err).replace("--resume: ", "")) from err
    config = load_config(checkpoint["config"])
    store = InMemoryStateStore()
    store.restore(checkpoint["store"])
    states = {cid: store.get(cid) for cid in range(_clients(directory))}
    summary = (
        json.loads(directory.summary_path.read_text()) if directory.summary_path.is_file() else {}
    )
    return LoadedRun(
        path=directory.path,
        config=config,
        metrics=directory.read_metrics(),
        summary=summary,
        server=checkpoint["server"],
        states={cid: s for cid, s in states.items() if s is not None},
        round=int(checkpoint["progress"]["round"]),
        dataset=dataset,
    )


def _clients(directory: RunDirectory) -> int:
    federation = json.loads(directory.federation_path.read_text())
    return int(federation["num_clients"])


def export(run_dir: str | Path, out: str | Path) -> Path:
    """Write each client's model as ``client_<k>.safetensors`` in ``out`` and a manifest
    (client, file, model, test accuracy at the checkpoint's round); returns the manifest."""
    from safetensors.torch import save_file

    run = load(run_dir)
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()) and not (folder / MANIFEST).is_file():
        raise ConfigError(
            f"--out {str(folder)!r} exists and is not an earlier export (no {MANIFEST}); "
            "give a new or empty folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    accuracy = _recorded_accuracy(run)
    entries = []
    for client in range(run.federation.num_clients):
        module = run.model(client)
        name = f"client_{client:05d}.safetensors"
        tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
        save_file(tensors, str(folder / name), metadata={"client": str(client)})
        entries.append(
            {
                "client": client,
                "file": name,
                "model": run.model_kind(client),
                "test_accuracy": _finite_or_none(accuracy.get(client)),
            }
        )
    manifest = {
        "run": str(run.path),
        "algorithm": run.config.algorithm.name,
        "round": run.round,
        "clients": entries,
    }
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
    return path


def _finite_or_none(value: float | None) -> float | None:
    """A number for strict JSON: null for a client not scored (or scored NaN)."""
    return value if value is not None and math.isfinite(value) else None


def _recorded_accuracy(run: LoadedRun) -> dict[int, float]:
    rows = run.metrics[(run.metrics["split"] == "test") & (run.metrics["round"] == run.round)]
    return {int(r.client): float(r.accuracy) for r in rows.itertuples() if r.client >= 0}
