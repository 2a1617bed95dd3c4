"""The ``plural`` command, called in-process through ``plural.cli.main``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from plural.cli import REGISTRIES, SECTIONS, demo_algorithms, main
from plural.config import describe
from plural.experiment import load_config
from plural.report.rundir import METRIC_COLUMNS

CONFIG: dict[str, Any] = {
    "name": "cli",
    "seed": 2,
    "rounds": 2,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 3},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "train": {"batch_size": 64},
    "backend": {"threads_per_worker": 1},
}
TABLE_HEADER = ["algorithm", "mean", "worst10%", "best10%", "std", "weighted", "clients"]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the results table in ``text``, by algorithm name."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["algorithm"])
    assert lines[start].split()[: len(TABLE_HEADER)] == TABLE_HEADER
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- list


def _default_text(default: Any) -> str:
    return repr(list(default) if isinstance(default, tuple) else default)


def test_list_prints_every_component_with_settings_and_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    for kind, registry in REGISTRIES.items():
        assert f"{kind}:" in lines
        assert len(registry.names()) > 0
        for entry in registry:
            assert f"  {entry.name} - {entry.description}" in lines
            for info in describe(entry.config_cls):
                line = f"    {info.name}: {info.type} = {_default_text(info.default)}"
                assert any(ln.startswith(line) for ln in lines), line
    for name in ("fedavg", "local", "digits", "npz", "table", "iid", "natural", "logreg", "mlp"):
        assert any(ln.startswith(f"  {name} - ") for ln in lines), name
    assert any(ln.startswith("  package.module:factory - ") for ln in lines)
    # the experiment's own sections, with their defaults
    assert "experiment sections:" in lines
    for section, cls in SECTIONS.items():
        assert f"  {section}" in lines
        for info in describe(cls):
            assert any(
                ln.startswith(f"    {info.name}: {info.type} = {_default_text(info.default)}")
                for ln in lines
            ), (section, info.name)
    assert "    lr: float = 0.05  # local SGD learning rate" in lines
    assert "    rounds: int = 20  # communication rounds" in lines


def test_list_marks_required_settings(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "list", "datasets")
    npz = out.split("  npz - ", 1)[1]
    path_line = next(ln for ln in npz.splitlines() if ln.strip().startswith("path:"))
    assert "(required)" in path_line


def test_list_one_kind(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list", "algorithms")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "algorithms:"
    entries = [ln for ln in lines if ln.startswith("  ") and not ln.startswith("    ")]
    names = [ln.split(" - ")[0].strip() for ln in entries]
    assert names == REGISTRIES["algorithms"].names()
    assert (
        "    weighting: 'samples' | 'uniform' | 'capped' | 'private_samples' | 'fair' = 'samples'"
        in out
    )
    for other in ("datasets:", "partitioners:", "models:", "experiment sections:"):
        assert other not in lines
    assert "digits" not in out


def test_list_rejects_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["list", "gizmos"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------- run


def test_run_writes_the_run_directory_and_prints_a_table(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "run"
    code, out, err = cli(
        capsys, "run", str(config_file), "--set", "train.lr=0.2", "--out", str(out_dir), "--quiet"
    )
    assert code == 0, err
    for name in ("config.yaml", "federation.json", "metrics.parquet", "summary.json"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "checkpoint.pt").is_file()

    # config.yaml: the resolved config, override included
    expected = load_config(config_file, ["train.lr=0.2"])
    saved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.2
    assert load_config(saved) == expected

    federation = json.loads((out_dir / "federation.json").read_text())
    assert federation["num_clients"] == 3
    assert federation["num_classes"] == 10
    assert sum(sum(federation["sizes"][s]) for s in ("train", "val", "test")) == 1797

    metrics = pd.read_parquet(out_dir / "metrics.parquet")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert list(metrics.columns) == [
        "round",
        "client",
        "split",
        "loss",
        "accuracy",
        "samples",
        "bytes_up",
        "bytes_down",
        "drift",
        "flops",
        "seconds",
    ]
    assert set(metrics["round"]) == {1, 2}
    assert set(metrics["split"]) == {"fit", "val", "test"}
    assert set(metrics["client"]) == {0, 1, 2}
    assert len(metrics) == 2 * 3 * 3  # rounds x clients x (fit, val, test)
    test_rows = metrics[(metrics["split"] == "test") & (metrics["round"] == 2)]
    assert test_rows["samples"].tolist() == federation["sizes"]["test"]

    summary = json.loads((out_dir / "summary.json").read_text())
    accuracy = summary["test"]["accuracy"]
    for key in ("mean", "weighted_mean", "std", "worst10", "best10"):
        assert 0.0 <= accuracy[key] <= 1.0, key
    assert accuracy["mean"] == pytest.approx(test_rows["accuracy"].mean())
    assert accuracy["worst10"] == pytest.approx(test_rows["accuracy"].min())
    assert accuracy["best10"] == pytest.approx(test_rows["accuracy"].max())
    assert accuracy["worst10"] <= accuracy["mean"] <= accuracy["best10"]
    weights = test_rows["samples"].to_numpy()
    assert accuracy["weighted_mean"] == pytest.approx(
        float(np.average(test_rows["accuracy"], weights=weights))
    )
    bytes_ = summary["bytes"]
    assert bytes_["up"] == metrics["bytes_up"].sum() > 0
    assert bytes_["down"] == metrics["bytes_down"].sum() > 0
    assert bytes_["total"] == bytes_["up"] + bytes_["down"]
    assert summary["wall_time_s"] >= 0
    assert summary["rounds_done"] == 2 and summary["complete"] is True

    checkpoint = torch.load(out_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["progress"]["round"] == 2
    assert checkpoint["config"] == expected.to_dict()

    rows = table_rows(out)
    assert list(rows) == ["fedavg"]
    assert float(rows["fedavg"][0]) == pytest.approx(accuracy["mean"], abs=5e-4)
    assert rows["fedavg"][5] == "3"
    assert f"Run files: {out_dir}" in out


def test_config_error_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "run"
    code, out, err = cli(
        capsys, "run", str(config_file), "--set", "train.lrr=0.1", "--out", str(out_dir)
    )
    assert code == 2
    assert err.startswith("plural: error: train.lrr: unknown setting")
    assert "Did you mean 'lr'?" in err
    assert "Traceback" not in err
    assert out == ""
    assert not out_dir.exists()


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "run", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "r"))
    assert code == 2
    assert err.startswith("plural: error: config file")
    assert "absent.yaml" in err and "does not exist" in err


def test_missing_dataset_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    missing = tmp_path / "absent.npz"
    path.write_text(yaml.safe_dump({**CONFIG, "dataset": {"name": "npz", "path": str(missing)}}))
    code, _, err = cli(capsys, "run", str(path), "--out", str(tmp_path / "r"))
    assert code == 2
    assert err.startswith("plural: error: npz: file")
    assert "absent.npz" in err


def test_wrong_data_key_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((10, 2), np.float32), y=np.arange(10) % 2)
    path = tmp_path / "exp.yaml"
    dataset = {"name": "npz", "path": str(data), "client_key": "cid"}
    path.write_text(
        yaml.safe_dump({**CONFIG, "dataset": dataset, "partition": {"name": "natural"}})
    )
    code, _, err = cli(capsys, "run", str(path), "--out", str(tmp_path / "r"))
    assert code == 2
    assert err.startswith("plural: error:")
    assert "'cid'" in err


def test_second_run_into_the_same_directory_is_refused(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "run"
    assert cli(capsys, "run", str(config_file), "--out", str(out_dir), "--quiet")[0] == 0
    summary = (out_dir / "summary.json").read_text()
    metrics = (out_dir / "metrics.parquet").read_bytes()

    code, out, err = cli(capsys, "run", str(config_file), "--out", str(out_dir), "--quiet")
    assert code == 2
    assert err.startswith("plural: error: run directory")
    assert str(out_dir) in err
    assert "already holds a run" in err and "--resume" in err
    assert out == ""
    # the first run is untouched
    assert (out_dir / "summary.json").read_text() == summary
    assert (out_dir / "metrics.parquet").read_bytes() == metrics


def test_resume_of_a_finished_run_gives_the_same_summary(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "run"
    assert cli(capsys, "run", str(config_file), "--out", str(out_dir), "--quiet")[0] == 0
    first = json.loads((out_dir / "summary.json").read_text())
    rows = len(pd.read_parquet(out_dir / "metrics.parquet"))

    code, out, err = cli(
        capsys, "run", str(config_file), "--out", str(out_dir), "--resume", "--quiet"
    )
    assert code == 0, err
    second = json.loads((out_dir / "summary.json").read_text())
    assert second["test"]["accuracy"] == first["test"]["accuracy"]
    assert second["bytes"] == first["bytes"]
    assert second["rounds_done"] == 2
    assert len(pd.read_parquet(out_dir / "metrics.parquet")) == rows
    assert float(table_rows(out)["fedavg"][0]) == pytest.approx(
        first["test"]["accuracy"]["mean"], abs=5e-4
    )


def test_resume_continues_to_more_rounds_like_an_uninterrupted_run(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli(capsys, "run", str(config_file), "--out", str(straight), "--quiet")[0] == 0
    args = ["run", str(config_file), "--out", str(split), "--quiet"]
    assert cli(capsys, *args, "--set", "rounds=1")[0] == 0
    assert cli(capsys, *args, "--resume")[0] == 0
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((split / "summary.json").read_text())
    assert b["test"]["accuracy"] == a["test"]["accuracy"]
    assert b["bytes"] == a["bytes"]
    cols = ["round", "client", "split", "loss", "accuracy", "samples"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(split / "metrics.parquet")[cols],
        pd.read_parquet(straight / "metrics.parquet")[cols],
    )


def test_resume_with_a_changed_setting_is_refused(
    capsys: pytest.CaptureFixture[str], config_file: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "run"
    assert cli(capsys, "run", str(config_file), "--out", str(out_dir), "--quiet")[0] == 0
    code, _, err = cli(
        capsys,
        "run",
        str(config_file),
        "--out",
        str(out_dir),
        "--resume",
        "--set",
        "train.lr=0.5",
    )
    assert code == 2
    assert err.startswith("plural: error: --resume:")
    assert "train" in err


# --------------------------------------------------------------------------- demo


def test_demo_prints_a_row_per_algorithm(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "demo"
    code, out, err = cli(capsys, "demo", "--rounds", "2", "--out", str(out_dir), "--quiet")
    assert code == 0, err
    names = demo_algorithms()
    assert {"fedavg", "local"} <= set(names)
    assert "2 rounds" in out
    rows = table_rows(out)
    assert list(rows) == names
    for name, cells in rows.items():
        mean, worst, best, std, weighted = map(float, cells[:5])
        assert 0.0 <= worst <= mean <= best <= 1.0, name
        assert std >= 0.0 and 0.0 <= weighted <= 1.0, name
        assert cells[5] == "20"  # clients
        summary = json.loads((out_dir / name / "summary.json").read_text())
        assert summary["rounds_done"] == 2
        assert summary["algorithm"] == name
        assert mean == pytest.approx(summary["test"]["accuracy"]["mean"], abs=5e-4)
    assert float(rows["local"][6]) == 0.0  # MB sent: local communicates nothing
    assert float(rows["fedavg"][6]) > 0.0


# --------------------------------------------------------------------------- the console script


def test_console_script_help() -> None:
    script = Path(sys.executable).with_name("plural")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "plural.cli"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for word in ("demo", "run", "list"):
        assert word in done.stdout


def test_run_shows_cluster_quality_for_clustering_methods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run",
            "examples/rotated_digits.yaml",
            "--out",
            str(tmp_path),
            "--quiet",
            "--set",
            "algorithm={name: oracle}",
            "--set",
            "rounds=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "clusters (ARI)" in out and "4 (1.00)" in out
