"""The experiment config: one validated, frozen description of a run.

Loaded from YAML, a dict or keyword arguments, with ``key.path=value`` overrides. Every
section is checked before any data is loaded or any model trained.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from plural.config import ConfigError, build, setting, to_dict, unknown_key_error
from plural.core.trainer import TrainConfig
from plural.models.zoo import ModelSpec, parse_model
from plural.privacy.settings import PrivacyConfig
from plural.registry import ALGORITHMS, DATASETS, PARTITIONERS, TRANSFORMS, Registry
from plural.robust.config import AggregatorConfig, AttackConfig, FaultsConfig
from plural.safety.imports import check_packages, config_allows
from plural.safety.yamlsafe import BoundedSafeLoader, load_bounded


@dataclasses.dataclass(frozen=True)
class Component:
    """A registered component chosen by name, with its validated settings."""

    name: str
    settings: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **to_dict(self.settings)}


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    val: float = setting(0.1, help="fraction of each client's samples for validation", ge=0, lt=1)
    test: float = setting(0.2, help="fraction of each client's samples for testing", ge=0, lt=1)
    order: Literal["auto", "stratified", "sequential"] = setting(
        "auto",
        help="how each client's samples are split: 'stratified' at random by label; "
        "'sequential' in stored order, train first, then val, then test; 'auto': sequential "
        "for datasets stored in time order (text), stratified otherwise",
    )
    server: float | Literal["official"] | None = setting(
        None,
        help="a server-side test set scored with the global model each evaluated round: "
        "'official' keeps a built-in dataset's official test set apart (mnist, fashion_mnist, "
        "cifar10), a fraction holds out that share of the pool before partitioning (null: none)",
        gt=0,
        lt=1,
    )
    unseen_clients: float | None = setting(
        None,
        help="share of the clients kept out of training entirely and served as newcomers at "
        "each evaluation (their rows have unseen == True; null: none)",
        gt=0,
        lt=1,
    )
    from_data: bool = setting(
        False,
        help="set by plural: true when each client's train/val/test split came from the data "
        "(split_key, split_column, split=, leaf, pfllib) and val/test above were not used",
    )

    def __post_init__(self) -> None:
        if self.val + self.test >= 1:
            raise ValueError(
                "val + test must be < 1 so clients keep training data; "
                f"got {self.val} + {self.test}"
            )


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    fraction: float | None = setting(
        None, help="fraction of clients sampled per round (default: all clients)", gt=0, le=1
    )
    count: int | None = setting(None, help="number of clients sampled per round", ge=1)
    poisson: bool = setting(
        False,
        help="each client joins a round independently with probability fraction (Poisson "
        "sampling, which differential privacy's amplification analysis assumes); cohorts vary "
        "in size and may be empty",
    )
    availability: str | None = setting(
        None,
        help="when clients can be sampled: a CSV of available time windows (columns client, "
        "start, end; hours), or 'diurnal' (each client online 8 hours a day from a seeded "
        "local time zone); clients are drawn among those available (null: always available)",
    )
    round_hours: float = setting(
        1.0, help="availability: hours between rounds (round r starts at (r - 1) x this)", gt=0
    )

    def __post_init__(self) -> None:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give either fraction or count, not both")
        if self.poisson and self.fraction is None:
            raise ValueError("poisson: true needs fraction (each client's probability to join)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = setting(1, help="evaluate every N rounds (the last round always)", ge=1)
    splits: tuple[Literal["train", "val", "test"], ...] = setting(
        ("val", "test"), help="client splits to evaluate each time"
    )
    batch_size: int = setting(1024, help="evaluation batch size", ge=1)


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """Where client work runs and where client state lives. None of these settings changes
    the results (beyond floating-point rounding for ``vectorized``), so they may change when
    a run is resumed."""

    name: Literal["sequential", "vectorized", "process", "ray"] = setting(
        "sequential",
        help="'sequential': clients one after another in this process; 'vectorized': the "
        "cohort's local training batched into one model with torch.func (vmap), where that "
        "wins; 'process': a pool of worker processes on this machine; 'ray': Ray actors, each "
        "owning a shard of the clients, on a local or remote Ray cluster (extra: plural[ray])",
    )
    workers: int | None = setting(
        None, help="process / ray workers (default: CPU cores, or the Ray cluster's CPUs)", ge=1
    )
    threads: int | None = setting(
        None,
        help="torch threads per process (default: chosen from the cores this process may use, "
        "the workers sharing them and the model's size, never more than the cores; see "
        "plural.engine.threads; at most 256)",
        ge=1,
        le=256,
    )
    threads_per_worker: int | None = setting(
        None, help="the same as threads (its former name)", ge=1, le=256
    )
    device: Literal["cpu", "cuda", "mps", "auto"] = setting(
        "cpu",
        help="where clients train: 'cpu', 'cuda', 'mps' (Apple GPUs), or 'auto' (cuda, else "
        "mps, else cpu); client data and models are placed there once",
    )
    vectorize: Literal["auto", "always"] = setting(
        "auto",
        help="'vectorized' backend: 'auto' batches only the trainings where it is measured to "
        "pay (small dense models, head- or adapter-only training, any model on a GPU) and runs "
        "the rest one by one; 'always' batches every training it can",
    )
    max_batch_clients: int = setting(
        256, help="'vectorized': most clients trained in one batch", ge=1
    )
    address: str | None = setting(
        None,
        help="'ray': the cluster to join, e.g. 'auto' or 'ray://head:10001' (null: start a "
        "local Ray instance)",
    )
    state: Literal["memory", "disk"] = setting(
        "memory",
        help="where per-client state (personal heads, control variates, ...) lives between "
        "rounds: 'memory', or 'disk' (one file per client, only the active cohort in memory; "
        "for 10^4+ clients)",
    )
    state_dir: str | None = setting(
        None,
        help="'disk' state: the folder (default: client_state/ in the run directory, or a "
        "temporary folder for runs without one)",
    )

    def __post_init__(self) -> None:
        if None not in (self.threads, self.threads_per_worker) and (
            self.threads != self.threads_per_worker
        ):
            raise ValueError(
                f"threads ({self.threads}) and threads_per_worker ({self.threads_per_worker}) "
                "name the same setting; give one"
            )

    @property
    def thread_override(self) -> int | None:
        """The threads the config asks for (``threads`` or ``threads_per_worker``), or None."""
        return self.threads if self.threads is not None else self.threads_per_worker


@dataclasses.dataclass(frozen=True)
class DiagnosticsConfig:
    gradient_every: int | None = setting(
        None,
        help="every N rounds, measure gradient dissimilarity (G^2, B^2) of all clients at the "
        "global model; costs one full-batch gradient per client (null: never)",
        ge=1,
    )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run. Two equal configs give identical results."""

    dataset: Component
    partition: Component
    model: ModelSpec
    algorithm: Component
    name: str = "experiment"
    seed: int = 0
    rounds: int = 20
    data_seed: int | None = None
    """Seeds the dataset, partition, split and transforms (None: ``seed``)."""
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    backend: BackendConfig = dataclasses.field(default_factory=BackendConfig)
    diagnostics: DiagnosticsConfig = dataclasses.field(default_factory=DiagnosticsConfig)
    aggregator: AggregatorConfig = dataclasses.field(default_factory=AggregatorConfig)
    attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)
    faults: FaultsConfig = dataclasses.field(default_factory=FaultsConfig)
    transforms: tuple[Component, ...] = ()
    allow_import: tuple[str, ...] = ()
    """Packages the config lets the CLI import code from (model factories by import path)."""
    privacy: PrivacyConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`load_config` turns back into an equal config."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, "rounds": self.rounds}
        if self.data_seed is not None:
            out["data_seed"] = self.data_seed
        if self.allow_import:
            out["allow_import"] = list(self.allow_import)
        for section in ("dataset", "partition", "algorithm"):
            out[section] = getattr(self, section).to_dict()
        out["model"] = {"name": self.model.name, **to_dict(self.model.settings)}
        for section in PLAIN_SECTIONS:
            out[section] = to_dict(getattr(self, section))
        out["transforms"] = [t.to_dict() for t in self.transforms]
        if self.privacy is not None:
            out["privacy"] = to_dict(self.privacy)
        return out


_COMPONENTS: dict[str, Registry[Any]] = {
    "dataset": DATASETS,
    "partition": PARTITIONERS,
    "algorithm": ALGORITHMS,
}
PLAIN_SECTIONS: dict[str, type] = {
    "split": SplitConfig,
    "train": TrainConfig,
    "sampling": SamplingConfig,
    "eval": EvalConfig,
    "backend": BackendConfig,
    "diagnostics": DiagnosticsConfig,
    "aggregator": AggregatorConfig,
    "attack": AttackConfig,
    "faults": FaultsConfig,
}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The top-level scalar settings of an experiment."""

    name: str = setting("experiment", help="a name for the run (shown in summaries)")
    seed: int = setting(0, help="the seed every random draw of the run derives from", ge=0)
    rounds: int = setting(20, help="communication rounds", ge=1)
    data_seed: int | None = setting(
        None,
        help="the seed of the dataset, partition, split and transforms (null: seed); fix it "
        "and sweep seed to compare methods on one federation",
        ge=0,
    )


_SCALARS = [f.name for f in dataclasses.fields(RunSettings)]
TOP_LEVEL_KEYS = [
    *_SCALARS,
    *_COMPONENTS,
    "model",
    *PLAIN_SECTIONS,
    "transforms",
    "allow_import",
    "privacy",
]


def parse_config(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Validate plain data (from YAML or Python) into an :class:`ExperimentConfig`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise unknown_key_error(str(key), TOP_LEVEL_KEYS, "")
    for key in (*_COMPONENTS, "model"):
        if key not in raw:
            raise ConfigError(f"{key}: required section is missing (e.g. {key}: {{name: ...}})")
    scalars = build(RunSettings, {k: raw[k] for k in _SCALARS if k in raw}, "")
    values: dict[str, Any] = dataclasses.asdict(scalars)
    values["allow_import"] = check_packages(raw.get("allow_import", []), "allow_import")
    for key, registry in _COMPONENTS.items():
        entry, settings = registry.parse(_named(raw[key]), key)
        values[key] = Component(entry.name, settings)
    with config_allows(values["allow_import"]):
        values["model"] = parse_model(_named(raw["model"]))
    for key, cls in PLAIN_SECTIONS.items():
        if key in raw:
            values[key] = build(cls, raw[key], key)
    values["transforms"] = _parse_transforms(raw.get("transforms"))
    if raw.get("privacy") is not None:
        values["privacy"] = build(PrivacyConfig, raw["privacy"], "privacy")
    return ExperimentConfig(**values)


def _named(section: Any) -> Any:
    """A component section given by its name alone (``algorithm: ditto``, or
    ``--set algorithm=ditto``) stands for ``{name: ditto}`` with default settings."""
    return {"name": section} if isinstance(section, str) else section


def _parse_transforms(raw: Any) -> tuple[Component, ...]:
    """The ``transforms`` list: client transforms applied in order after partitioning."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping) or not isinstance(raw, (list, tuple)):
        raise ConfigError(
            f"transforms: expected a list of {{name: ...}} entries (one of "
            f"{', '.join(TRANSFORMS.names())}), got {raw!r}"
        )
    parsed = []
    for index, section in enumerate(raw):
        entry, settings = TRANSFORMS.parse(section, f"transforms[{index}]")
        parsed.append(Component(entry.name, settings))
    return tuple(parsed)


class _YamlLoader(BoundedSafeLoader):
    """PyYAML's safe loader, reading numbers the YAML 1.2 way: ``1e-3`` is a float, not text."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text (numbers as in YAML 1.2)."""
    return load_bounded(text, _YamlLoader)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``raw``."""
    result = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.lr=0.1")
        try:
            value = load_yaml(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {err}") from err
        node: Any = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = _child(node, part, item)
        if isinstance(node, list):
            node[_list_index(node, parts[-1], item)] = value
        else:
            node[parts[-1]] = value
    return result


def _list_index(node: list[Any], part: str, item: str) -> int:
    if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
        raise ConfigError(
            f"--set {item!r}: {part!r} is not an index of a list of {len(node)} entries "
            f"(use 0..{len(node) - 1})"
        )
    return int(part)


def _child(node: Any, part: str, item: str) -> Any:
    """The section ``part`` of ``node`` (a mapping, or a list indexed by number)."""
    if isinstance(node, list):
        child = node[_list_index(node, part, item)]
    else:
        child = node.setdefault(part, {})
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
    return child


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [_deep_copy(v) for v in raw]
    return raw


PYTHON_OBJECT = "python"
"""The dataset / model name that stands for an object passed to ``plural.run`` directly."""


def load_config(
    source: str | Path | Mapping[str, Any] | ExperimentConfig,
    overrides: Sequence[str] = (),
    *,
    provided: Sequence[str] = (),
) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML path, a mapping or a config, plus overrides.

    ``provided`` names sections (``dataset``, ``model``) whose objects the caller passes
    directly; when the config leaves them out they are recorded as ``{name: python}``.
    """
    if isinstance(source, ExperimentConfig):
        if not overrides:
            return source
        source = source.to_dict()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            source = load_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({err})") from err
        except OSError as err:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {err}") from err
    if not isinstance(source, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(source).__name__}")
    raw = apply_overrides(source, overrides)
    for section in provided:
        raw.setdefault(section, {"name": PYTHON_OBJECT})
    return parse_config(raw)


def with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier run (plain data) with the settings added to plural since
    it was written filled in by default, so it compares equal to today's ``to_dict()``."""
    try:
        return load_config(saved).to_dict()
    except ConfigError:
        return dict(saved)  # a setting was removed: a comparison then names its section


def differing_sections(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[str]:
    """Top-level config sections whose values differ, leaving out those in ``ignore``."""
    keys = (set(saved) | set(current)) - set(ignore)
    return sorted(k for k in keys if saved.get(k) != current.get(k))
