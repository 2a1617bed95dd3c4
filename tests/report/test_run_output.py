"""``plural run``'s header and what it does with an existing run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from plural.cli import main
from plural.config import ConfigError
from plural.report.output import choose_output, next_free

CONFIG: dict[str, Any] = {
    "name": "again",
    "rounds": 1,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 3},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "split": {"val": 0.1, "test": 0.2},
    "train": {"batch_size": 64},
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["run", "again.yaml", "--quiet", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_header_says_what_runs_where(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys)
    assert code == 0
    header = out.split("algorithm   mean")[0]
    assert "digits: 3 clients, 10 classes" in header
    assert "mlp, 610 parameters" in header  # 64*8 + 8 + 8*10 + 10
    assert "fedavg, 1 round" in header
    assert "sequential on cpu, 1 torch thread per process" in header
    assert "run dir:   runs/again" in header
    sizes = header.split("samples ")[1].splitlines()[0]
    counts = [int(part.split()[0]) for part in sizes.split(", ")]
    assert sum(counts) == 1797 and counts[0] > counts[2] > counts[1] > 0  # train > test > val


def test_running_twice_takes_a_new_name_and_says_why(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys)[0] == 0
    first = (workdir / "runs/again/summary.json").read_text()
    for expected in ("again-2", "again-3"):
        code, out, err = _run(capsys)
        assert code == 0
        assert "'runs/again' already holds a run (finished, 1 round)" in err
        assert f"goes to 'runs/{expected}'" in err and "--resume" in err and "--overwrite" in err
        assert f"run dir:   runs/{expected}" in out
        assert (workdir / "runs" / expected / "summary.json").is_file()
    assert (workdir / "runs/again/summary.json").read_text() == first


def test_overwrite_replaces_only_what_plural_wrote(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys)[0] == 0
    mine = workdir / "runs/again/my-notes.txt"
    mine.write_text("keep me")
    code, out, err = _run(capsys, "--overwrite")
    assert code == 0
    assert "--overwrite replaced it; kept files plural did not write: my-notes.txt" in err
    assert mine.read_text() == "keep me"
    assert "run dir:   runs/again\n" in out
    assert not (workdir / "runs/again-2").exists()
    code, _, err = _run(capsys, "--overwrite", "--resume")
    assert code == 2 and "give one" in err


def test_an_explicit_out_with_a_run_offers_resume_and_overwrite(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "--out", "mine")[0] == 0
    code, out, err = _run(capsys, "--out", "mine")
    assert code == 2 and out == ""
    assert "--resume" in err and "--overwrite" in err


def test_choices_for_folders_without_a_run(tmp_path: Path) -> None:
    assert choose_output(None, tmp_path / "new").path == tmp_path / "new"
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("x")  # not plural's: left for the run to refuse
    choice = choose_output(str(other), tmp_path / "unused", overwrite=True)
    assert choice.path == other and choice.message is None
    assert (other / "data.csv").read_text() == "x"
    (tmp_path / "r-2").mkdir()
    assert next_free(tmp_path / "r") == tmp_path / "r-3"
    with pytest.raises(ConfigError, match="give one"):
        choose_output(None, tmp_path / "x", resume=True, overwrite=True)
