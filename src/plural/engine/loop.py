"""The one round loop.

``run`` validates the config, builds the federation and the model, then for each round:
samples a cohort, lets the algorithm run its round (client work goes through the backend),
evaluates every client with the model the algorithm personalises for it, writes the round's
metrics and a checkpoint. A resumed run continues from the checkpoint and gives exactly the
results of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from plural.config import ConfigError
from plural.core.aggregation import chain_for
from plural.core.algorithm import Algorithm, FederationInfo, ModelMessage, ServerState, Update
from plural.core.masks import norm_layer_names
from plural.core.metrics import summarize
from plural.core.params import Params, distance, nbytes, state_of
from plural.core.rng import derive_seed, numpy_rng
from plural.core.trainer import TrainConfig
from plural.data.federated import FederatedDataset
from plural.data.types import ArrayDataset
from plural.diagnostics.plots import plot_similarity
from plural.engine.backends import (
    Backend,
    ClientModels,
    ClientWork,
    EvalWork,
    WorkerEnv,
    WorkerSetup,
    evaluate_client,
    make_backend,
    resolve_device,
    run_client_phase,
)
from plural.engine.callbacks import Callback, ProgressBar, notify
from plural.engine.clusters import cluster_quality
from plural.engine.diagnostics import GradientMoments, GradientWork, client_gradient, drift_summary
from plural.engine.kept_state import KeptEvalWork, evaluate_kept
from plural.engine.sampler import sample_cohort
from plural.engine.store import StateStore, make_store
from plural.experiment import (
    Component,
    ExperimentConfig,
    differing_sections,
    load_config,
    with_defaults,
)
from plural.models.zoo import ModelFamily
from plural.privacy.run import PrivateRun, plan_privacy
from plural.registry import ALGORITHMS, DATASETS, PARTITIONERS, TRANSFORMS
from plural.report.environment import environment_entry
from plural.report.header import run_info
from plural.report.rundir import METRIC_COLUMNS, RunDirectory
from plural.robust.runtime import (
    ClientFailure,
    ClientsFailed,
    GuardedAlgorithm,
    Robustness,
    RoundHooks,
    check_algorithm,
)
from plural.safety.checks import check_config, check_federation, check_validation
from plural.safety.numerics import (
    check_scores,
    check_server,
    diverged,
    dropped_result,
    result_is_finite,
)
from plural.safety.runlock import check_run_target, run_lock

CHECKPOINT_VERSION = 1
GRADIENT_CHUNK = 32  # clients whose gradients are in memory at once
EVAL_CHUNK = 256  # clients whose evaluated models are in memory at once
# Settings that may change when a run is resumed: they do not change the results.
RESUMABLE_CHANGES = ("rounds", "backend", "eval", "name", "diagnostics", "allow_import")

ModelSource = nn.Module | Callable[..., nn.Module]


@dataclasses.dataclass
class Results:
    """What a run produced. ``metrics`` has one row per (round, client, split)."""

    config: ExperimentConfig
    summary: dict[str, Any]
    metrics: pd.DataFrame
    server: ServerState
    run_dir: Path | None = None
    diagnostics: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    """One row per round: participants' drift (mean, max) and, where measured, G^2 / B^2."""

    def final(self, split: str = "test") -> pd.DataFrame:
        """Per-client rows of ``split`` at the last evaluated round."""
        rows = self.metrics[self.metrics["split"] == split]
        return rows[rows["round"] == rows["round"].max()].reset_index(drop=True)


def build_federation(
    config: ExperimentConfig, dataset: ArrayDataset | FederatedDataset | None = None
) -> FederatedDataset:
    """The federation of ``config`` (or of the user's ``dataset``), from derived seeds."""
    if isinstance(dataset, FederatedDataset):
        return dataset
    if dataset is None:
        loader = DATASETS.get(config.dataset.name).target
        dataset = loader(config.dataset.settings, numpy_rng(config.seed, "dataset"))
    partitioner = PARTITIONERS.get(config.partition.name).target(config.partition.settings)
    partition = partitioner.split(dataset, rng=numpy_rng(config.seed, "partition"))
    order = config.split.order
    if order == "auto":
        order = "sequential" if dataset.ordered else "stratified"
    federation = FederatedDataset.build(
        dataset,
        partition,
        val=config.split.val,
        test=config.split.test,
        rng=numpy_rng(config.seed, "split"),
        order=order,
    )
    return apply_transforms(federation, config.transforms, config.seed)


def apply_transforms(
    federation: FederatedDataset, transforms: Sequence[Component], seed: int
) -> FederatedDataset:
    """Apply the config's client transforms in order, each with its own derived generator."""
    for index, component in enumerate(transforms):
        transform = TRANSFORMS.get(component.name).target(component.settings)
        federation = transform.apply(federation, rng=numpy_rng(seed, "transform", index))
    return federation


def build_model(
    config: ExperimentConfig, federation: FederatedDataset, model: ModelSource | None = None
) -> nn.Module | ModelFamily:
    """The initial model: the user's module (copied), the user's factory, or the config's
    (a :class:`~plural.models.zoo.ModelFamily` for model-heterogeneous families)."""
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    if model is not None:
        built = model()
        if not isinstance(built, nn.Module):
            raise ConfigError(
                f"model: the factory returned {type(built).__name__}, not an nn.Module"
            )
        return built
    return config.model.build(
        federation.input_shape, federation.num_classes, derive_seed(config.seed, "model")
    )


def build_client_models(
    config: ExperimentConfig,
    federation: FederatedDataset,
    algorithm: Algorithm,
    model: ModelSource | None = None,
) -> ClientModels:
    """The modules clients train: the configured model (or each architecture of a family that
    some client uses), prepared by the algorithm; ConfigErrors for combinations that cannot
    run, before any training."""
    built = build_model(config, federation, model)
    if isinstance(built, ModelFamily):
        architecture = built.architecture_of(federation.num_clients)
        used = sorted(set(architecture))
        members = tuple(built.members[k] for k in used)
        index = tuple(used.index(k) for k in architecture)
    else:
        members, index = (built,), ()
    prepared = []
    for member in members:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "prepare-model"))
            prepared.append(
                algorithm.prepare_model(member, federation.input_shape, federation.num_classes)
            )
    models = ClientModels(tuple(prepared), index if len(prepared) > 1 else ())
    _check_heterogeneity(config, algorithm, models)
    return models


def _check_heterogeneity(
    config: ExperimentConfig, algorithm: Algorithm, models: ClientModels
) -> None:
    if not models.heterogeneous:
        return
    if not algorithm.model_heterogeneous:
        able = [e.name for e in ALGORITHMS if getattr(e.target, "model_heterogeneous", False)]
        raise ConfigError(
            f"algorithm: {config.algorithm.name!r} needs one architecture for every client, but "
            f"model {config.model.name!r} gives {len(models.members)} architectures to the "
            f"clients; methods for model-heterogeneous federations: {', '.join(able)} "
            "(or give every client the same architecture with model.assignment)"
        )
    if config.diagnostics.gradient_every is not None:
        raise ConfigError(
            "diagnostics.gradient_every: gradient dissimilarity needs one global model; it is "
            "not defined when clients have different architectures (set it to null)"
        )


def federation_info(
    federation: FederatedDataset, models: ClientModels, seed: int
) -> FederationInfo:
    """What the server may know about the federation and the clients' models."""
    first = models.members[0]
    shapes = tuple(
        {name: tuple(t.shape) for name, t in member.state_dict().items()}
        for member in models.members
    )
    return FederationInfo(
        federation.num_clients,
        federation.num_classes,
        federation.input_shape,
        federation.groups,
        tuple(name for name, _ in first.named_parameters()),
        norm_layer_names(first),
        _fresh_params(first, seed),
        models.architecture,
        shapes if models.heterogeneous else (),
    )


def _fresh_params(initial: nn.Module, seed: int) -> Callable[[int], Params]:
    """``fresh(k)``: the initial model re-initialised from the derived seed (seed, init, k)."""

    def fresh(k: int) -> Params:
        model = copy.deepcopy(initial)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init", k))
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return state_of(model)

    return fresh


def build_algorithm(config: ExperimentConfig) -> Algorithm:
    """The configured algorithm, with the aggregation chain the run's settings ask for."""
    algorithm = ALGORITHMS.get(config.algorithm.name).target(config.algorithm.settings)
    algorithm.aggregation = chain_for(config)
    base = getattr(algorithm, "base", None)
    if isinstance(base, Algorithm):  # fine-tuning aggregates through its base algorithm
        base.aggregation = algorithm.aggregation
    return algorithm


@dataclasses.dataclass(frozen=True)
class FitRecord:
    """What the ledger keeps of a client's update: scalars and names, never its tensors."""

    loss: float
    num_samples: int
    sent: tuple[str, ...] = ()
    """Names of the floating-point parameters the update carried."""
    sent_outside: tuple[str, ...] = ()
    """Keys of what else it carried (``Update.extra``)."""

    @classmethod
    def of(cls, update: Update) -> FitRecord:
        params = update.params or {}
        sent = tuple(name for name, tensor in params.items() if tensor.is_floating_point())
        return cls(update.loss, update.num_samples, sent, tuple(update.extra))


class _Ledger:
    """Per-client bytes and training statistics of the current round (numbers only, so
    that replies folded into the aggregate as they arrive are not kept alive here)."""

    def __init__(self) -> None:
        self.up: dict[int, int] = defaultdict(int)
        self.down: dict[int, int] = defaultdict(int)
        self.fit: dict[int, FitRecord] = {}
        self.drift: dict[int, float] = {}
        self.flops: dict[int, float] = defaultdict(float)
        self.seconds: dict[int, float] = defaultdict(float)
        self.dropped: list[int] = []  # clients whose non-finite updates were left out
        self.privacy_steps: dict[int, int] = defaultdict(int)


def _round_context(train: TrainConfig, *args: Any, **kwargs: Any) -> EngineRoundContext:
    """A round's context that knows the run's training settings (non-finite updates)."""
    ctx = EngineRoundContext(*args, **kwargs)
    ctx.train = train
    return ctx


class EngineRoundContext:
    """The engine's side of :class:`plural.core.algorithm.RoundContext` for one round."""

    def __init__(
        self,
        round_index: int,
        seed: int,
        server: ServerState,
        algorithm: Algorithm,
        store: StateStore,
        backend: Backend,
        evaluating: bool = False,
        hooks: RoundHooks | None = None,
    ) -> None:
        self.round = round_index
        self.seed = seed
        self.server = server
        self.evaluating = evaluating
        self.num_clients = backend.num_clients
        self._algorithm = algorithm
        self._store = store
        self._backend = backend
        self.ledger = _Ledger()
        self.train = TrainConfig()  # the run's: what to do with non-finite updates
        self.hooks = hooks
        self._pending: dict[int, Any] = {}  # states of a round that may be replayed

    def commit(self) -> None:
        """Keep the client states of a round that is not replayed."""
        for cid, state in self._pending.items():
            self._store.put(cid, state)
        self._pending.clear()

    def rng(self, purpose: str) -> np.random.Generator:
        return numpy_rng(self.seed, self.round, purpose)

    def _state(self, client_id: int) -> Any:
        if client_id in self._pending:
            return self._pending[client_id]
        if client_id in self._store:
            return self._store.get(client_id)
        return self._algorithm.init_client(self.server, client_id)

    def map(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        *,
        per_client: Mapping[int, Any] | None = None,
    ) -> list[Any]:
        return list(self.stream(phase, cohort, message, per_client=per_client))

    def stream(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        *,
        per_client: Mapping[int, Any] | None = None,
    ) -> Iterator[Any]:
        """:meth:`map`'s replies one at a time, in cohort order, each as the backend returns
        it; the engine keeps none of them (only their bytes and scalar statistics)."""
        if not hasattr(self._algorithm, phase):
            raise AttributeError(f"{type(self._algorithm).__name__} has no client phase {phase!r}")
        hooks = self.hooks
        algorithm: Any = self._algorithm
        if hooks is not None:
            self._charge_absent(hooks, message, per_client)
            algorithm = GuardedAlgorithm(algorithm) if hooks.guard else algorithm
        work = []
        for cid in cohort:
            msg = per_client[cid] if per_client is not None else message
            self.ledger.down[cid] += nbytes(msg)
            work.append(ClientWork(algorithm, phase, cid, self.round, msg, self._state(cid)))
        results = _imap(self._backend, run_client_phase, work)
        if hooks is not None:  # attacks and failures act on the whole round's replies
            results = iter(self._screen(hooks, phase, cohort, list(results), message, per_client))
        nonfinite: list[int] = []  # clients whose replies stop the run once all are in
        for item, result in zip(work, results, strict=True):
            cid = item.client_id
            if not result_is_finite(result):
                if self.train.on_nonfinite == "drop":
                    result = dropped_result(self.round, item, result, self.train.lr)
                    self.ledger.dropped.append(cid)
                else:
                    nonfinite.append(cid)
            reply, state, cost = result
            if hooks is not None and hooks.guard:
                self._pending[cid] = state
            else:
                self._store.put(cid, state)
            self.ledger.up[cid] += nbytes(reply)
            self.ledger.flops[cid] += cost.flops
            self.ledger.seconds[cid] += cost.seconds
            self.ledger.privacy_steps[cid] += cost.privacy_steps
            if isinstance(reply, Update):
                self.ledger.fit[cid] = FitRecord.of(reply)
                msg = per_client[cid] if per_client is not None else message
                if isinstance(msg, ModelMessage) and reply.params is not None:
                    self.ledger.drift[cid] = distance(reply.params, msg.params)
            yield reply
        if nonfinite:
            raise diverged(self.round, nonfinite, self.train.lr)

    def _charge_absent(
        self, hooks: RoundHooks, message: Any, per_client: Mapping[int, Any] | None
    ) -> None:
        """Absent clients downloaded the round's first message, then never replied."""
        if hooks.charged:
            return
        hooks.charged = True
        for cid in hooks.absent:
            msg = message if per_client is None else per_client.get(cid)
            if msg is not None:
                self.ledger.down[cid] += nbytes(msg)

    def _screen(
        self,
        hooks: RoundHooks,
        phase: str,
        cohort: Sequence[int],
        results: list[Any],
        message: Any,
        per_client: Mapping[int, Any] | None,
    ) -> list[Any]:
        """Replay the round without clients that failed; poison the attackers' replies."""
        failed = {
            cid: (phase, reply.error)
            for cid, (reply, _, _) in zip(cohort, results, strict=True)
            if isinstance(reply, ClientFailure)
        }
        if failed:
            raise ClientsFailed(failed)
        replies = hooks.poison(
            phase,
            cohort,
            [reply for reply, _, _ in results],
            lambda cid: per_client[cid] if per_client is not None else message,
        )
        return [(r, state, cost) for r, (_, state, cost) in zip(replies, results, strict=True)]


def _imap(backend: Backend, task: Callable[[Any, Any], Any], items: Sequence[Any]) -> Iterator[Any]:
    """``backend.imap`` (results as they come), or its ``map`` for a backend without one."""
    imap = getattr(backend, "imap", None)
    return imap(task, items) if imap is not None else iter(backend.map(task, items))


def _training_rows(round_index: int, ledger: _Ledger) -> list[dict[str, Any]]:
    """One 'fit' row per client that took part: local training loss, samples, bytes, the
    client drift ||w_k - w|| between the model it received and the one it sent back, and the
    training FLOPs and seconds of its work (all its phases of the round)."""
    rows = []
    for cid in sorted(set(ledger.up) | set(ledger.down)):
        update = ledger.fit.get(cid)
        rows.append(
            {
                "round": round_index,
                "client": cid,
                "split": "fit",
                "loss": update.loss if update else float("nan"),
                "accuracy": float("nan"),
                "samples": update.num_samples if update else 0,
                "bytes_up": ledger.up[cid],
                "bytes_down": ledger.down[cid],
                "drift": ledger.drift.get(cid, float("nan")),
                "flops": ledger.flops.get(cid, 0.0),
                "seconds": ledger.seconds.get(cid, 0.0),
            }
        )
    return rows


def _evaluation_rows(
    round_index: int,
    algorithm: Algorithm,
    server: ServerState,
    store: StateStore,
    backend: Backend,
    num_clients: int,
    splits: tuple[str, ...],
) -> list[dict[str, Any]]:
    rows = []
    for start in range(0, num_clients, EVAL_CHUNK):
        clients = range(start, min(start + EVAL_CHUNK, num_clients))
        rows += _evaluate_chunk(round_index, algorithm, server, store, backend, clients, splits)
    return rows


def _evaluate_chunk(
    round_index: int,
    algorithm: Algorithm,
    server: ServerState,
    store: StateStore,
    backend: Backend,
    clients: Sequence[int],
    splits: tuple[str, ...],
) -> list[dict[str, Any]]:
    if getattr(store, "on_workers", False):  # the workers pick the models, by the states
        kept = [KeptEvalWork(cid, round_index, algorithm, server, splits) for cid in clients]
        scored = [
            (cid, name, results)
            for cid, models in zip(clients, backend.map(evaluate_kept, kept), strict=True)
            for name, results in models
        ]
    else:
        work, labels = [], []
        for cid in clients:
            for model_name, params in algorithm.evaluated(server, store.get(cid), cid).items():
                work.append(EvalWork(cid, round_index, params, splits))  # type: ignore[arg-type]
                labels.append((cid, model_name))
        scored = [
            (cid, name, results)
            for (cid, name), results in zip(labels, backend.map(evaluate_client, work), strict=True)
        ]
    rows = []
    for cid, model_name, results in scored:
        suffix = f"@{model_name}" if model_name else ""
        for split, result in results.items():
            rows.append(
                {
                    "round": round_index,
                    "client": cid,
                    "split": split + suffix,
                    "loss": result.loss,
                    "accuracy": result.accuracy,
                    "samples": result.count,
                    "bytes_up": 0,
                    "bytes_down": 0,
                    "drift": float("nan"),
                    "flops": 0.0,
                    "seconds": 0.0,
                }
            )
    return rows


def summarize_round(metrics: pd.DataFrame, round_index: int) -> dict[str, Any]:
    """Per-split summaries (accuracy and loss over clients) of one evaluated round."""
    at_round = metrics[metrics["round"] == round_index]
    out: dict[str, Any] = {}
    for split, rows in at_round.groupby("split"):
        if split == "fit":
            continue
        weights = rows["samples"].to_numpy()
        out[str(split)] = {
            "accuracy": summarize(rows["accuracy"].to_numpy(), weights),
            "loss": summarize(rows["loss"].to_numpy(), weights, higher_is_better=False),
        }
    return out


def _check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path) -> None:
    differing = differing_sections(saved, current, RESUMABLE_CHANGES)
    if differing:
        raise ConfigError(
            f"--resume: the config differs from the run in {str(run_dir)!r} "
            f"in {', '.join(differing)}; "
            f"only {', '.join(RESUMABLE_CHANGES)} may change on resume. "
            "Use another --out for a new run."
        )


@dataclasses.dataclass
class _Progress:
    """Counters that survive a resume."""

    round: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    wall_time: float = 0.0
    last_eval: int = 0
    flops: float = 0.0


def run(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    resume: bool = False,
    dataset: ArrayDataset | FederatedDataset | None = None,
    model: ModelSource | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | None = None,
) -> Results:
    """Run one experiment (see the module docstring) and return its results.

    ``out`` is the run directory; ``None`` keeps nothing on disk (and cannot resume).
    ``dataset`` / ``model`` replace the config's with the user's own data or module.
    ``progress`` shows a progress bar (default: only when stderr is a terminal).
    """
    given = [name for name, obj in (("dataset", dataset), ("model", model)) if obj is not None]
    if isinstance(dataset, FederatedDataset):
        given.append("partition")
    cfg = load_config(config, overrides, provided=given)
    device = resolve_device(cfg.backend.device)  # fail before any data is loaded
    algorithm = build_algorithm(cfg)
    algorithm.check(cfg)
    check_config(cfg)
    check_algorithm(cfg, algorithm)
    privacy = plan_privacy(cfg, algorithm)
    run_dir = RunDirectory(out) if out is not None else None
    if resume and run_dir is None:
        raise ConfigError("resume: needs the run directory (out=...) to resume from")
    if run_dir is not None:
        check_run_target(run_dir.path)  # before any data is loaded; writes nothing
    federation = build_federation(cfg, dataset)
    robust = Robustness.build(cfg, federation)
    federation = robust.poison_data(cfg, federation)
    models = build_client_models(cfg, federation, algorithm, model)
    check_federation(cfg, federation, models)
    check_validation(algorithm, federation)
    info = federation_info(federation, models, cfg.seed)
    if privacy is not None:
        privacy.start(info.num_clients, federation.sizes("train").tolist(), info.parameters)
    server = algorithm.init(state_of(models.members[0]), info, numpy_rng(cfg.seed, "init"))
    with run_lock(run_dir.path) if run_dir is not None else contextlib.nullcontext():
        store = make_store(cfg.backend, run_dir.path if run_dir is not None else None)
        counters = _Progress()
        frames: list[pd.DataFrame] = []
        resumed = False
        if run_dir is not None:
            if resume and run_dir.has_checkpoint():
                server, counters = _restore(run_dir, cfg, store, privacy)
                resumed = True
                run_dir.drop_rounds_after(counters.round)
                frames.append(run_dir.read_metrics())
            elif resume:  # no checkpoint (killed in round 1): what was written goes
                run_dir.forget_rounds()
            run_dir.prepare(cfg.to_dict(), resume=resume)
            run_dir.write_json(
                run_dir.federation_path,
                {**federation.describe(), **(robust.describe() if robust.malicious else {})},
            )
        if not resumed:
            store.restore({})  # a fresh run: no states left from an earlier attempt
        train = privacy.train_config(cfg.train) if privacy is not None else cfg.train
        setup = WorkerSetup(
            federation, models, train, cfg.seed, cfg.eval.batch_size, cfg.backend.device
        )
        loop = _Loop(
            cfg, algorithm, federation, store, run_dir, counters, frames, privacy, robust, setup
        )
        bar = ProgressBar(cfg.rounds, counters.round, enabled=progress)
        backend = make_backend(setup, cfg.backend)
        try:
            if run_dir is not None:  # the threads the backend's processes actually use
                threads = getattr(backend, "threads", None)
                run_dir.record_environment(environment_entry(str(device), threads))
            info = run_info(cfg, federation, models, backend, device, run_dir and run_dir.path)
            notify(callbacks, "on_run_info", info)  # e.g. the header `plural run` prints
            keep_states = getattr(backend, "keep_states", None)
            if keep_states is not None:  # client states move to the workers that run the clients
                store = loop.store = keep_states(store)
            notify(
                callbacks, "on_run_start", cfg, run_dir.path if run_dir else None, counters.round
            )
            server = loop.run(server, backend, [bar, *callbacks])
        finally:
            backend.close()
            bar.close()
            store.close()
        results = loop.results(server)
    notify(callbacks, "on_run_end", results)
    return results


def _restore(
    run_dir: RunDirectory, cfg: ExperimentConfig, store: StateStore, privacy: PrivateRun | None
) -> tuple[ServerState, _Progress]:
    checkpoint = run_dir.load_checkpoint()
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"--resume: {run_dir.checkpoint_path} has an unknown checkpoint version")
    _check_resumable(with_defaults(checkpoint["config"]), cfg.to_dict(), run_dir.path)
    progress = _Progress(**checkpoint["progress"])
    if progress.round > cfg.rounds:
        raise ConfigError(
            f"--resume: rounds = {cfg.rounds}, but the run in {str(run_dir.path)!r} has done "
            f"{progress.round} rounds; resuming continues a run, so give rounds >= "
            f"{progress.round} (every round's metrics are in metrics.parquet)"
        )
    store.restore(checkpoint["store"])
    if privacy is not None:
        privacy.restore(checkpoint.get("privacy"))
    return checkpoint["server"], progress


class _Loop:
    """The round loop of one run, with what it writes as it goes."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        algorithm: Algorithm,
        federation: FederatedDataset,
        store: StateStore,
        run_dir: RunDirectory | None,
        counters: _Progress,
        frames: list[pd.DataFrame],
        privacy: PrivateRun | None = None,
        robust: Robustness | None = None,
        setup: WorkerSetup | None = None,
    ) -> None:
        self.cfg = cfg
        self.privacy = privacy
        self.algorithm = algorithm
        self.federation = federation
        self.store = store
        self.run_dir = run_dir
        self.counters = counters
        self.frames = frames
        self.stopped_early = False
        self.diagnostics: list[dict[str, Any]] = (
            run_dir.read_diagnostics() if run_dir is not None else []
        )
        self.robust = robust
        self.setup = setup
        self._robust_record: dict[str, Any] = {}
        self._env: WorkerEnv | None = None

    def run(
        self, server: ServerState, backend: Backend, callbacks: Sequence[Callback]
    ) -> ServerState:
        cfg = self.cfg
        for round_index in range(self.counters.round + 1, cfg.rounds + 1):
            started = time.perf_counter()
            robust = self.robust if self.robust is not None and self.robust.active else None
            available = robust.available(round_index, cfg.sampling.round_hours) if robust else None
            cohort = sample_cohort(
                self.federation.num_clients, cfg.sampling, cfg.seed, round_index, available
            )
            evaluate = round_index % cfg.eval.every == 0 or round_index == cfg.rounds

            context = functools.partial(
                _round_context,
                cfg.train,
                *(round_index, cfg.seed, server, self.algorithm, self.store, backend, evaluate),
            )
            if robust is not None:
                server, ctx, self._robust_record = robust.play_round(
                    self.algorithm,
                    server,
                    round_index,
                    cohort,
                    available,
                    self.diagnostics,
                    context,
                )
            else:
                ctx = context()
                if cohort:  # a Poisson-sampled round may have no client
                    server = self.algorithm.round(server, cohort, ctx)
            check_server(server.params, round_index, cfg.train.lr)
            rows = _training_rows(round_index, ctx.ledger)
            if evaluate:
                rows += _evaluation_rows(
                    round_index,
                    self.algorithm,
                    server,
                    self.store,
                    backend,
                    self.federation.num_clients,
                    cfg.eval.splits,
                )
                check_scores(rows, round_index, cfg.train.lr)
            if robust is not None and evaluate:
                env = self._env = self._env or (WorkerEnv(self.setup) if self.setup else None)
                self._robust_record.update(
                    robust.round_metrics(rows, self.algorithm, server, self.store, env)
                )
            self._record_diagnostics(round_index, server, ctx, backend)
            self._write_artifacts(server)
            self._record(round_index, rows, ctx, time.perf_counter() - started, evaluate, server)
            self._checkpoint(server)
            round_summary = summarize_round(self.frames[-1], round_index) if evaluate else {}
            if any([cb.on_round_end(round_index, round_summary) for cb in callbacks]):
                self.stopped_early = round_index < cfg.rounds
                break
        return server

    def _record(
        self,
        round_index: int,
        rows: list[dict[str, Any]],
        ctx: EngineRoundContext,
        seconds: float,
        evaluated: bool,
        server: ServerState,
    ) -> None:
        frame = pd.DataFrame(rows, columns=METRIC_COLUMNS)
        self.frames.append(frame)
        counters = self.counters
        counters.round = round_index
        counters.bytes_up += sum(ctx.ledger.up.values())
        counters.bytes_down += sum(ctx.ledger.down.values())
        counters.wall_time += seconds
        counters.flops += sum(ctx.ledger.flops.values())
        if evaluated:
            counters.last_eval = round_index
        if self.run_dir is not None:
            self.run_dir.write_round_metrics(round_index, rows)
            self.run_dir.append_record(
                self.run_dir.timeline_path,
                {
                    "round": round_index,
                    "wall_time_s": round(counters.wall_time, 4),
                    "bytes_up": counters.bytes_up,
                    "bytes_down": counters.bytes_down,
                    "train_flops": counters.flops,
                },
            )
            if evaluated:
                self.run_dir.write_json(self.run_dir.summary_path, self._summary(frame, server))

    def _record_diagnostics(
        self, round_index: int, server: ServerState, ctx: EngineRoundContext, backend: Backend
    ) -> None:
        record: dict[str, Any] = {"round": round_index, **drift_summary(ctx.ledger.drift)}
        if ctx.ledger.dropped:
            record["dropped_nonfinite"] = sorted(ctx.ledger.dropped)
        record.update(self._robust_record)
        self._robust_record = {}
        assignment = self.algorithm.cluster_assignment(server)
        if assignment is not None:
            previous = self._previous_assignment()
            record.update(cluster_quality(assignment, self.federation.groups, previous))
        every = self.cfg.diagnostics.gradient_every
        if every is not None and round_index % every == 0:
            record.update(self._gradient_dissimilarity(round_index, server, backend))
        if self.privacy is not None:
            record.update(self.privacy.after_round(ctx.ledger.fit, ctx.ledger.privacy_steps))
        self.diagnostics.append(record)
        if self.run_dir is not None:
            self.run_dir.append_diagnostics(record)

    def _write_artifacts(self, server: ServerState) -> None:
        """Save the algorithm's new artifacts; draw clients x clients matrices as heatmaps."""
        if self.run_dir is None:
            return
        n = self.federation.num_clients
        for name, value in self.algorithm.artifacts(server).items():
            if self.run_dir.has_artifact(name):
                continue
            if isinstance(value, np.ndarray) and value.shape == (n, n):
                plot_similarity(
                    value,
                    self.run_dir.artifact_path(name, ".png"),
                    groups=self.federation.groups,
                    title=name.replace("_", " "),
                    limit=None,
                    label="value",
                )
            self.run_dir.write_artifact(name, value)

    def _previous_assignment(self) -> np.ndarray | None:
        for record in reversed(self.diagnostics):
            if "assignment" in record:
                return np.asarray(record["assignment"])
        return None

    def _gradient_dissimilarity(
        self, round_index: int, server: ServerState, backend: Backend
    ) -> dict[str, float]:
        moments = GradientMoments()
        clients = list(range(self.federation.num_clients))
        for start in range(0, len(clients), GRADIENT_CHUNK):
            work = [
                GradientWork(c, round_index, server.params)
                for c in clients[start : start + GRADIENT_CHUNK]
            ]
            for samples, gradient in backend.map(client_gradient, work):
                moments.add(gradient, float(samples))
        return moments.result()

    def _checkpoint(self, server: ServerState) -> None:
        if self.run_dir is None:
            return
        self.run_dir.save_checkpoint(
            {
                "version": CHECKPOINT_VERSION,
                "config": self.cfg.to_dict(),
                "server": server,
                "store": self.store.snapshot(),
                "progress": dataclasses.asdict(self.counters),
                **({"privacy": self.privacy.ledger.to_dict()} if self.privacy else {}),
            }
        )
        self.store.commit()

    def _summary(self, metrics: pd.DataFrame, server: ServerState) -> dict[str, Any]:
        c = self.counters
        details = self.algorithm.summary(server)
        return {
            "name": self.cfg.name,
            "algorithm": self.cfg.algorithm.name,
            "dataset": self.federation.name,
            "seed": self.cfg.seed,
            "clients": self.federation.num_clients,
            "round": c.last_eval,
            "rounds": self.cfg.rounds,
            "rounds_done": c.round,
            "complete": c.round == self.cfg.rounds,
            "stopped_early": self.stopped_early,
            **summarize_round(metrics, c.last_eval),
            **self._cluster_summary(),
            **self._privacy_summary(),
            **(
                self.robust.summary(self.cfg, self.diagnostics, metrics, c.last_eval)
                if self.robust is not None and self.robust.active
                else {}
            ),
            **({self.cfg.algorithm.name: details} if details else {}),
            "bytes": {"up": c.bytes_up, "down": c.bytes_down, "total": c.bytes_up + c.bytes_down},
            "train_flops": c.flops,
            "wall_time_s": round(c.wall_time, 3),
        }

    def _privacy_summary(self) -> dict[str, Any]:
        if self.privacy is None:
            return {}
        return {"privacy": self.privacy.summary()}

    def _cluster_summary(self) -> dict[str, Any]:
        """The last round's cluster quality, for methods that cluster clients."""
        for record in reversed(self.diagnostics):
            if "assignment" in record:
                keys = ("clusters", "ari", "nmi", "changed")
                return {"clustering": {k: record[k] for k in keys if k in record}}
        return {}

    def results(self, server: ServerState) -> Results:
        if self.run_dir is not None:
            metrics = self.run_dir.consolidate_metrics()
        else:
            metrics = (
                pd.concat(self.frames, ignore_index=True)
                if self.frames
                else pd.DataFrame(columns=METRIC_COLUMNS)
            )
        summary = self._summary(metrics, server)
        if self.run_dir is not None:
            self.run_dir.write_json(self.run_dir.summary_path, summary)
        return Results(
            self.cfg,
            summary,
            metrics,
            server,
            self.run_dir.path if self.run_dir else None,
            pd.DataFrame(self.diagnostics),
        )
