"""The README stays true: its numbers, paths, commands and Python examples, run on tiny
settings (one round)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plural
from plural.cli import demo_algorithms, main, parse_args
from plural.experiment import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
NUMBER_WORDS = {
    word: n
    for n, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
            "twenty-one",
            "twenty-two",
            "twenty-three",
            "twenty-four",
            "twenty-five",
        ]
    )
}
CONFIG_COMMANDS = ("run", "sweep", "diagnose", "config")


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``."""
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def plural_commands() -> list[list[str]]:
    """Every ``plural ...`` command of the README's bash blocks, as arguments."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("plural "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_demo_count_is_true() -> None:
    match = re.search(r"runs every algorithm that suits it \((\S+) today\)", README)
    assert match, "the README no longer says how many algorithms the demo runs"
    said = match.group(1)
    assert (int(said) if said.isdigit() else NUMBER_WORDS[said]) == len(demo_algorithms())


def test_every_example_path_exists() -> None:
    texts = [README, plural.__doc__ or "", (ROOT / "src/plural/cli.py").read_text()]
    paths = {p.rstrip(".,:;)`'\"") for t in texts for p in re.findall(r"examples/[\w./-]+", t)}
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


@pytest.mark.parametrize("argv", plural_commands(), ids=" ".join)
def test_every_command_parses_and_its_config_is_valid(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.command in CONFIG_COMMANDS:
        overrides = args.set or []
        if args.command == "sweep":  # every grid point's first value must be valid too
            overrides += [g.split(",", 1)[0] for g in args.grid or []]
        load_config(ROOT / args.config, overrides)


@pytest.fixture
def readme_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the examples, as the README's commands expect, that runs go into."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY = ["--set", "rounds=1", "--set", "eval.every=1", "--quiet"]


def test_the_first_run_commands_run(readme_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [c for c in plural_commands() if c[:2] == ["run", "examples/digits_dirichlet.yaml"]]
    assert len(runs) >= 3
    for argv in runs[:2]:
        tracking = {"--tensorboard", "--mlflow", "--resume"}
        if tracking & set(argv):
            continue
        assert main([*argv, *TINY]) == 0, argv
    assert (readme_dir / "runs/digits/summary.json").is_file()
    for argv in (c for c in plural_commands() if c[0] == "list"):
        assert main(argv) == 0
    assert "algorithms:" in capsys.readouterr().out


def _tiny_run(real: Any) -> Any:
    def run(config: Any, **kwargs: Any) -> Any:
        overrides = [*kwargs.pop("overrides", ()), "rounds=1"]
        return real(config, overrides=overrides, **kwargs)

    return run


def test_the_python_examples_run(readme_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    python = blocks("python")
    assert python
    for block in python:
        compile(block, "README.md", "exec")
    monkeypatch.setattr(plural, "run", _tiny_run(plural.run))
    rng = np.random.default_rng(0)
    api = next(b for b in python if 'plural.run("examples/digits_dirichlet.yaml"' in b)
    exec(api, {})
    assert (readme_dir / "runs/d/summary.json").is_file()
    own = next(b for b in python if "from_arrays(x, y, client_ids=writer_ids)" in b)
    namespace = {
        "x": rng.normal(size=(90, 784)).astype(np.float32),
        "y": rng.integers(0, 10, 90),
        "writer_ids": rng.choice(["w1", "w2", "w3"], 90),
    }
    exec(own, namespace)
    assert namespace["results"].summary["complete"]


def test_sweep_example_names_real_functions() -> None:
    block = next(b for b in blocks("python") if "run_sweep" in b)
    imports = "\n".join(line for line in block.splitlines() if line.startswith("from "))
    exec(imports, {})
    assert os.path.isfile(ROOT / "examples/digits_dirichlet.yaml")
