"""Every setting, discoverable: what ``plural list`` and ``plural config`` print.

``plural list`` shows every config section: the components of each kind (datasets,
partitioners, models, algorithms, transforms) with their settings, and the plain sections
(``split``, ``train``, ``sampling``, ``eval``, ``backend``, ...). Settings that many
components of a kind share (the averaging algorithms' weighting, server optimizer and
stragglers) are shown once, in a block the components refer to. ``plural list SECTION
[NAME]`` shows one section or one component with all its settings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from plural.config import ConfigError, SettingInfo, describe
from plural.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONERS, TRANSFORMS, Registry

REGISTRIES: dict[str, Registry[Any]] = {
    "datasets": DATASETS,
    "partitioners": PARTITIONERS,
    "models": MODELS,
    "algorithms": ALGORITHMS,
    "transforms": TRANSFORMS,
}
KIND_ALIASES = {
    "dataset": "datasets",
    "partition": "partitioners",
    "partitioner": "partitioners",
    "model": "models",
    "algorithm": "algorithms",
    "transform": "transforms",
}
TOP_LEVEL = "top"
SHARED_MIN = 5
"""A setting that this many components of a kind take alike is listed once, as shared."""
FACTORY_LINE = (
    "  package.module:factory - any torch.nn.Module factory by import path; other keys are its "
    "keyword arguments (input_shape/num_classes passed if accepted)"
)


def plain_sections() -> dict[str, type]:
    """The config sections that are not components, by name (``top``: top-level scalars)."""
    from plural.experiment import PLAIN_SECTIONS, RunSettings
    from plural.privacy.settings import PrivacyConfig

    return {TOP_LEVEL: RunSettings, **PLAIN_SECTIONS, "privacy": PrivacyConfig}


PLAIN_SECTION_NAMES = (
    TOP_LEVEL,
    "split",
    "train",
    "sampling",
    "eval",
    "backend",
    "diagnostics",
    "aggregator",
    "attack",
    "faults",
    "privacy",
)
"""The names of :func:`plain_sections`, known without importing them (for ``--help``)."""


def section_names() -> list[str]:
    """What ``plural list SECTION`` accepts (besides the singular kinds of KIND_ALIASES)."""
    return [*REGISTRIES, *PLAIN_SECTION_NAMES]


def setting_line(info: SettingInfo, indent: str = "    ") -> str:
    default = list(info.default) if isinstance(info.default, tuple) else info.default
    return f"{indent}{info.name}: {info.type} = {default!r}  # {info.help}"


def _key(info: SettingInfo) -> tuple[str, str, str, str]:
    return (info.name, info.type, repr(info.default), info.help)


def shared_settings(registry: Registry[Any]) -> list[SettingInfo]:
    """Settings that at least :data:`SHARED_MIN` components of ``registry`` take alike."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    first: dict[tuple[str, str, str, str], SettingInfo] = {}
    for entry in registry:
        for info in describe(entry.config_cls):
            counts[_key(info)] += 1
            first.setdefault(_key(info), info)
    return [first[k] for k, n in counts.items() if n >= SHARED_MIN]


def kind_lines(kind: str) -> list[str]:
    """One kind of component: the shared settings once, then each component's own."""
    registry = REGISTRIES[kind]
    shared = shared_settings(registry)
    shared_keys = {_key(i) for i in shared}
    lines = [f"{kind}:"]
    if shared:
        lines.append(f"shared: settings many {kind} take alike (marked '+ shared' below)")
        lines += [setting_line(i) for i in shared]
    for entry in registry:
        infos = describe(entry.config_cls)
        takes_shared = bool(shared_keys) and shared_keys <= {_key(i) for i in infos}
        lines.append(f"  {entry.name} - {entry.description}")
        if takes_shared:
            lines.append(f"    + shared: {', '.join(i.name for i in shared)}")
        lines += [setting_line(i) for i in infos if not (takes_shared and _key(i) in shared_keys)]
    if kind == "models":
        lines.append(FACTORY_LINE)
    return lines


def _section_title(name: str) -> str:
    return "(top level)" if name == TOP_LEVEL else name


def section_lines(name: str, indent: str = "") -> list[str]:
    """One plain section with its settings."""
    cls = plain_sections()[name]
    title = f"{indent}{_section_title(name)}" + ("" if indent else ":")
    return [title, *[setting_line(i) for i in describe(cls)]]


def component_lines(kind: str, name: str) -> list[str]:
    """One component with every setting it takes (shared ones included)."""
    entry = REGISTRIES[kind].get(name)
    lines = [f"{kind}: {entry.name} - {entry.description}"]
    lines += [setting_line(i) for i in describe(entry.config_cls)]
    doc = getattr(entry.target, "__doc__", None)
    if doc:
        lines += ["", *(f"  {line.strip()}" for line in doc.strip().splitlines())]
    return lines


def canonical_section(section: str) -> str:
    """``section`` with singular names (``algorithm``) turned into the kinds' names."""
    return KIND_ALIASES.get(section, section)


def list_text(section: str | None = None, name: str | None = None) -> str:
    """What ``plural list [SECTION [NAME]]`` prints; ConfigError for an unknown section."""
    if section is not None:
        section = canonical_section(section)
        if section not in section_names():
            raise ConfigError(
                f"plural list: unknown section {section!r}; sections: {', '.join(section_names())}"
            )
        if name is not None:
            if section not in REGISTRIES:
                raise ConfigError(
                    f"plural list {section}: a plain section has no components; "
                    f"run `plural list {section}`"
                )
            return "\n".join(component_lines(section, name))
        lines = kind_lines(section) if section in REGISTRIES else section_lines(section)
        return "\n".join(lines)
    blocks: list[Sequence[str]] = [kind_lines(kind) for kind in REGISTRIES]
    sections = ["experiment sections:"]
    for plain in plain_sections():
        sections += section_lines(plain, indent="  ")
    blocks.append(sections)
    blocks.append(["One section: plural list SECTION; one component: plural list SECTION NAME"])
    return "\n\n".join("\n".join(block) for block in blocks)


def resolved_config_text(config: str, overrides: Sequence[str]) -> str:
    """The config at ``config`` with ``overrides`` and every default filled in, as YAML."""
    import yaml

    from plural.experiment import load_config

    resolved = load_config(config, overrides).to_dict()
    return yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True).rstrip()
