"""Which packages a config may import code from.

A config can name a model factory by import path (``model: {name: "pkg.mod:factory"}``);
importing it runs the package's code, so a config that imports code is code. Python callers
(``plural.run(config)``) are trusted: they could run the code themselves. The CLI reads
configs from files, so it restricts imports to the packages the user allows with
``--allow-import PACKAGE`` or the config's top-level ``allow_import: [PACKAGE, ...]``, which the
CLI prints before anything runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from plural.config import ConfigError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass(frozen=True)
class ImportPolicy:
    """``allowed``: packages whose modules may be imported (``None``: any, as for Python
    callers); ``announce`` is told which packages a config allows itself."""

    allowed: frozenset[str] | None = None
    announce: Callable[[Sequence[str]], None] | None = None

    def permits(self, module: str) -> bool:
        if self.allowed is None:
            return True
        return any(module == p or module.startswith(p + ".") for p in self.allowed)


_TRUSTED = ImportPolicy()
_POLICY: contextvars.ContextVar[ImportPolicy | None] = contextvars.ContextVar(
    "plural_import_policy", default=None
)


def _current() -> ImportPolicy:
    return _POLICY.get() or _TRUSTED


@contextlib.contextmanager
def restricted_imports(
    allowed: Iterable[str], announce: Callable[[Sequence[str]], None] | None = None
) -> Iterator[None]:
    """Within the block only the packages ``allowed`` (and those a config allows) import."""
    token = _POLICY.set(
        ImportPolicy(frozenset(check_packages(allowed, "--allow-import")), announce)
    )
    try:
        yield
    finally:
        _POLICY.reset(token)


@contextlib.contextmanager
def config_allows(packages: Sequence[str]) -> Iterator[None]:
    """Within the block the packages a config's ``allow_import`` names import too."""
    policy = _current()
    if policy.allowed is None or not packages:
        yield
        return
    if policy.announce is not None:
        policy.announce(packages)
    token = _POLICY.set(dataclasses.replace(policy, allowed=policy.allowed | set(packages)))
    try:
        yield
    finally:
        _POLICY.reset(token)


def check_packages(value: Any, key: str) -> tuple[str, ...]:
    """A list of dotted package names (``allow_import``), or a ConfigError naming the key."""
    if isinstance(value, str) or not isinstance(value, (list, tuple, frozenset, set)):
        raise ConfigError(
            f"{key}: expected a list of package names, e.g. [mypackage], got {value!r}"
        )
    for item in value:
        if not isinstance(item, str) or not _NAME.match(item):
            raise ConfigError(f"{key}: {item!r} is not a package name like mypackage.models")
    return tuple(value)


def check_import(module: str, key: str) -> None:
    """ConfigError unless the current policy lets ``module`` be imported."""
    if _current().permits(module):
        return
    package = module.split(".")[0]
    raise ConfigError(
        f"{key}: importing {module!r} runs code from the package {package!r}, which is not "
        f"allowed: a config that imports code is code. If you trust it, allow it with "
        f"--allow-import {package} (or a top-level `allow_import: [{package}]` in the config)"
    )
