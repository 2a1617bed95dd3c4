"""The package's shape (issue 19): no import cycles, an engine that depends on neither the
report nor the diagnostics, a round loop and algorithm files small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "plural"
MAX_ALGORITHM_LINES = 300
MAX_LOOP_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path, *, top_level_only: bool) -> set[str]:
    """The ``plural`` modules ``path`` imports: ``from a import b`` counts ``a.b`` when that
    is a module (a package's own submodule), else ``a``."""
    tree = ast.parse(path.read_text())
    nodes = _top_level(tree) if top_level_only else list(ast.walk(tree))
    known = modules()
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(known)
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "plural" or n.startswith("plural.")}


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements that run when the module is imported (not under ``if TYPE_CHECKING``)."""
    out: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        out.extend(node.body if isinstance(node, ast.Try) else [node])
    return out


def import_graph(*, top_level_only: bool = True) -> nx.DiGraph:
    known = modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(known)
    for name, path in known.items():
        for target in imported(path, top_level_only=top_level_only) & set(known):
            if target != name:
                graph.add_edge(name, target)
    return graph


def test_the_import_graph_is_found() -> None:
    graph = import_graph()
    assert graph.has_edge("plural.runner.session", "plural.engine.loop")
    assert graph.number_of_nodes() > 100


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module level", "with lazy imports"])
def test_there_is_no_import_cycle(top_level_only: bool) -> None:
    """Not even through imports inside functions (a lazy import hides a cycle from Python, not
    from the reader): modules form layers."""
    graph = import_graph(top_level_only=top_level_only)
    cycles = list(nx.simple_cycles(graph, length_bound=8))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_backends_are_chosen_through_a_registry() -> None:
    from typing import get_args, get_type_hints

    from plural.engine.backend_registry import backend_names
    from plural.experiment import BackendConfig

    allowed = get_args(get_type_hints(BackendConfig)["name"])
    assert set(backend_names()) == set(allowed)
    source = (PACKAGE / "engine" / "backends.py").read_text()
    assert "vectorized import" not in source and "ray_backend import" not in source


@pytest.mark.parametrize("outside", ["plural.report", "plural.diagnostics"])
def test_the_engine_imports_neither_report_nor_diagnostics(outside: str) -> None:
    offenders = {
        module_name(path): sorted(
            n for n in imported(path, top_level_only=False) if n.startswith(outside)
        )
        for path in (PACKAGE / "engine").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_round_loop_is_short() -> None:
    lines = len((PACKAGE / "engine" / "loop.py").read_text().splitlines())
    assert lines < MAX_LOOP_LINES


def test_no_algorithm_file_is_over_300_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in (PACKAGE / "algorithms").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_ALGORITHM_LINES
    }
    assert not long, f"split these files: {long}"


def test_algorithms_do_not_import_helpers_from_other_algorithms() -> None:
    """Shared helpers live in ``plural.core``; an algorithm may only subclass another
    (import a class whose name starts with a capital)."""
    found = []
    for path in (PACKAGE / "algorithms").rglob("*.py"):
        own = module_name(path)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module):
                continue
            if not node.module.startswith("plural.algorithms.") or own.startswith(node.module):
                continue
            package = own.rsplit(".", 1)[0]
            if package != "plural.algorithms" and node.module.startswith(package + "."):
                continue  # a module of the same algorithm package (pfedlia/...)
            helpers = [a.name for a in node.names if not a.name[0].isupper()]
            if helpers and path.name != "__init__.py":
                found.append(f"{own}: {node.module}.{helpers}")
    assert not found, found
