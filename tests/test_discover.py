"""Every setting discoverable: ``plural list [SECTION [NAME]]``, ``plural config``, help texts,
and a ``plural --help`` that imports nothing heavy."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plural.cli import build_parser, main
from plural.config import describe
from plural.discover import PLAIN_SECTION_NAMES, REGISTRIES, TOP_LEVEL, shared_settings
from plural.experiment import PLAIN_SECTIONS, load_config

EXAMPLE = "examples/digits_dirichlet.yaml"


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_list_covers_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(capsys, "list")
    for kind in REGISTRIES:
        assert f"{kind}:" in out.splitlines()
    for section in ("train", "split", "sampling", "eval", "backend", "diagnostics", "privacy"):
        assert f"  {section}" in out.splitlines()
    assert set(PLAIN_SECTION_NAMES) == {TOP_LEVEL, *PLAIN_SECTIONS, "privacy"}


def test_shared_settings_are_shown_once(capsys: pytest.CaptureFixture[str]) -> None:
    out = _out(capsys, "list")
    shared = [info.name for info in shared_settings(REGISTRIES["algorithms"])]
    assert {"weighting", "server_optimizer", "stragglers"} <= set(shared)
    block = out.split("algorithms:\n", 1)[1].split("\n\n", 1)[0]
    for name in shared:
        assert sum(line.startswith(f"    {name}: ") for line in block.splitlines()) == 1, name
    takers = [
        e.name
        for e in REGISTRIES["algorithms"]
        if {"weighting", "stragglers"} <= {i.name for i in describe(e.config_cls)}
    ]
    assert len(takers) >= 10
    for name in takers:
        entry = block.split(f"\n  {name} - ", 1)[1]
        assert entry.splitlines()[1].startswith("    + shared: weighting"), name


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "backend"], ["backend:", "    threads: int | null = None"]),
        (["list", "train"], ["train:", "    lr: float = 0.05"]),
        (["list", "top"], ["(top level):", "    rounds: int = 20"]),
        (["list", "algorithms", "ditto"], ["algorithms: ditto - ", "    lam: ", "    weighting: "]),
        (["list", "dataset", "hf"], ["datasets: hf - ", "    label_column: ", "    path: "]),
    ],
)
def test_list_one_section_or_component(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: list[str]
) -> None:
    out = _out(capsys, *argv)
    for text in expected:
        assert any(line.startswith(text) for line in out.splitlines()), text
    assert "digits - " not in out or argv[1] == "datasets"


def test_list_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "algorithms", "nosuch"]) == 2
    assert "unknown algorithm 'nosuch'" in capsys.readouterr().err
    assert main(["list", "split", "x"]) == 2
    assert "no components" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [[], ["--set", "algorithm=ditto", "--set", "rounds=3"]])
def test_config_prints_the_resolved_config(
    capsys: pytest.CaptureFixture[str], overrides: list[str]
) -> None:
    out = _out(capsys, "config", EXAMPLE, *overrides)
    printed = yaml.safe_load(out)
    expected = load_config(EXAMPLE, [o for o in overrides if o != "--set"])
    assert printed == json.loads(json.dumps(expected.to_dict()))
    assert load_config(printed) == expected
    assert printed["backend"]["threads"] is None and "lr" in printed["train"]  # defaults shown


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_has_a_description_and_an_example() -> None:
    parser = build_parser()
    commands = _subcommands(parser)
    assert {"demo", "run", "config", "sweep", "list", "compare", "report", "diagnose"} <= set(
        commands
    )
    for name, sub in commands.items():
        text = sub.format_help()
        assert sub.description and len(sub.description) > 40, name
        assert "examples:\n  plural " + name in text, name
    assert "examples:" in parser.format_help()


def test_examples_in_help_name_files_that_exist() -> None:
    root = Path(__file__).resolve().parents[1]
    for sub in _subcommands(build_parser()).values():
        for word in (sub.epilog or "").split():
            if word.startswith("examples/"):
                assert (root / word).is_file(), word


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from plural.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'sklearn', 'yaml') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
