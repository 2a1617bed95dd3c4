"""Named registries of datasets, partitioners, models and algorithms.

A registry entry pairs a name with the object that builds the component, the frozen config
dataclass of its settings and a one-line description, so that ``plural list`` and config
validation come from one place.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from plural.config import ConfigError, build, unknown_key_error

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component."""

    name: str
    target: T
    config_cls: type
    description: str


COMPONENT_MODULES = ("plural.algorithms", "plural.data", "plural.models", "plural.placeholders")
"""The modules whose import registers plural's own components."""

_loading: list[bool] = []


def load_components() -> None:
    """Import the modules that register plural's components (once; ``import plural`` does not,
    so that ``plural --help`` answers without importing torch)."""
    if _loading:
        return
    _loading.append(True)
    for module in COMPONENT_MODULES:
        importlib.import_module(module)


class Registry(Generic[T]):
    """Components of one kind (``dataset``, ``partition``, ``model``, ``algorithm``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type, description: str) -> Callable[[T], T]:
        """Decorator that registers ``target`` under ``name``."""

        def decorate(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, target, config_cls, description)
            return target

        return decorate

    def get(self, name: str, path: str | None = None) -> Entry[T]:
        """The entry called ``name``; a ConfigError lists the known names otherwise."""
        load_components()
        if not isinstance(name, str):
            raise ConfigError(
                f"{path or self.kind}.name: expected a name (one of "
                f"{', '.join(self.names())}), got {name!r}"
            )
        if name not in self._entries:
            err = unknown_key_error(str(name), self.names(), "")
            where = path or self.kind
            raise ConfigError(f"{where}.name: unknown {self.kind} {name!r}. {_tail(err)}")
        return self._entries[name]

    def names(self) -> list[str]:
        load_components()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        load_components()
        return name in self._entries

    def parse(
        self, section: Mapping[str, Any] | None, path: str | None = None
    ) -> tuple[Entry[T], Any]:
        """Validate a config section ``{name: ..., <settings>}`` into (entry, settings)."""
        path = path or self.kind
        if not isinstance(section, Mapping) or "name" not in section:
            raise ConfigError(
                f"{path}: needs a 'name' (one of {', '.join(self.names())}), got {section!r}"
            )
        entry = self.get(section["name"], path)
        settings = {k: v for k, v in section.items() if k != "name"}
        try:
            return entry, build(entry.config_cls, settings, path)
        except ConfigError as err:
            if "unknown setting" not in str(err):
                raise
            hint = (
                f" (left over from another {self.kind}? replace the whole section, e.g. "
                f"--set '{path}={{name: {entry.name}}}')"
            )
            raise ConfigError(f"{err}{hint}") from err


def _tail(err: ConfigError) -> str:
    """The 'Did you mean ... Allowed: ...' part of an unknown-key error."""
    text = str(err)
    return text.split("unknown setting. ", 1)[-1] if "unknown setting. " in text else text


DATASETS: Registry[Any] = Registry("dataset")
PARTITIONERS: Registry[Any] = Registry("partition")
MODELS: Registry[Any] = Registry("model")
ALGORITHMS: Registry[Any] = Registry("algorithm")
TRANSFORMS: Registry[Any] = Registry("transform")


def aggregating_algorithm(config: Any) -> str:
    """The algorithm whose server aggregates in a run of ``config`` (fine-tuning's base)."""
    name = str(config.algorithm.name)
    if name == "finetune":
        return str(config.algorithm.settings.base.get("name", "fedavg"))
    return name


def aggregating_settings(config: Any) -> Any:
    """The settings of :func:`aggregating_algorithm` (weighting, stragglers, ...)."""
    if config.algorithm.name == "finetune":
        return ALGORITHMS.parse(config.algorithm.settings.base, "algorithm.base")[1]
    return config.algorithm.settings
