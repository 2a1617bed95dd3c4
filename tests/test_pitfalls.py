"""No silent data pitfalls: client id mapping, channel-last images, unimportable model
factories, empty validation splits, ``--mlflow`` before the config path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import plural
from plural.cli import parse_args
from plural.config import ConfigError
from plural.data import from_arrays
from plural.data.datasets import channels_first

BASE: dict[str, Any] = {
    "rounds": 1,
    "partition": {"name": "natural"},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "split": {"val": 0.2, "test": 0.2},
    "backend": {"threads": 1},
}


@pytest.mark.parametrize("seed", [0, 1])
def test_client_ids_of_any_type_are_mapped_and_the_mapping_saved(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = ["zoe", 7, "alice", 3.5, "bob"]
    sizes = rng.integers(20, 40, len(names))
    ids = np.array(
        [name for name, size in zip(names, sizes, strict=True) for _ in range(size)], object
    )
    ids[:3] = "tiny"  # a client with 3 samples, dropped by min_samples below
    n = len(ids)
    data = from_arrays(rng.normal(size=(n, 4)), rng.integers(0, 2, n), client_ids=ids)
    assert data.client_names is not None and len(data.client_names) == 6
    config = {**BASE, "partition": {"name": "natural", "min_samples": 10}}
    results = plural.run(config, dataset=data, out=tmp_path)
    federation = json.loads((tmp_path / "federation.json").read_text())
    kept = [name for name in data.client_names if name != "tiny"]
    assert federation["client_names"] == kept
    for k, name in enumerate(kept):  # client k holds exactly the samples with that id
        held = sum(federation["sizes"][s][k] for s in ("train", "val", "test"))
        assert held == int((ids.astype(str) == name).sum())
    assert results.summary["complete"]


@pytest.mark.parametrize(
    ("shape", "expected"), [((5, 8, 6, 3), (5, 3, 8, 6)), ((4, 9, 9, 1), (4, 1, 9, 9))]
)
def test_channel_last_images_are_transposed_with_a_note(shape: tuple, expected: tuple) -> None:
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    data = from_arrays(x, np.arange(shape[0]) % 2)
    assert data.x.shape == expected and data.input_shape == expected[1:]
    np.testing.assert_array_equal(data.x, np.transpose(x, (0, 3, 1, 2)))
    assert len(data.notes) == 1 and "channel-last" in data.notes[0]


@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (5, 3, 4, 3), (5, 8, 8), (5, 10)])
def test_channels_first_and_ambiguous_layouts_are_kept(shape: tuple) -> None:
    x = np.zeros(shape, np.float32)
    kept, notes = channels_first(x, "x")
    assert kept is x and notes == ()


def test_a_run_records_the_transposition_note(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 6, 6, 3)).astype(np.float32)
    data = from_arrays(x, rng.integers(0, 2, 60), client_ids=np.arange(60) % 3)
    plural.run(BASE, dataset=data, out=tmp_path)
    federation = json.loads((tmp_path / "federation.json").read_text())
    assert federation["input_shape"] == [3, 6, 6]
    assert any("transposed" in note for note in federation["notes"])


def _factory_config(module: str) -> dict[str, Any]:
    return {
        **BASE,
        "dataset": {"name": "digits"},
        "partition": {"name": "iid", "num_clients": 3},
        "model": {"name": f"{module}:build"},
    }


def test_a_model_module_outside_sys_path_suggests_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_local_models.py").write_text("def build(): ...\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    with pytest.raises(
        ConfigError, match=r"current folder, which is not on sys.path.*PYTHONPATH=\."
    ):
        plural.load_config(_factory_config("my_local_models"))
    with pytest.raises(ConfigError, match=r"not in any folder on sys.path.*PYTHONPATH=\."):
        plural.load_config(_factory_config("no_such_models_anywhere"))


def test_a_model_module_that_fails_inside_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_models_x.py").write_text("import not_a_real_dependency_x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"is on sys.path .* so the error is inside it"):
        plural.load_config(_factory_config("broken_models_x"))


@pytest.mark.filterwarnings("ignore:.*too small to have val samples")
def test_empty_validation_split_is_an_error_before_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from plural.engine import loop

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("training started")

    monkeypatch.setattr(loop.RoundLoop, "run", no_training)
    config = {
        **BASE,
        "rounds": 4,
        "dataset": {"name": "digits"},
        "partition": {"name": "dirichlet", "num_clients": 40, "alpha": 1.0, "min_samples": 10},
        "split": {"val": 0.01, "test": 0.2},
        "algorithm": {"name": "pfedlia", "warmup_rounds": 1},
    }
    with pytest.raises(ConfigError, match=r"no validation samples.*split.val"):
        plural.run(config)


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_mlflow_without_a_uri_leaves_the_config_path(tmp_path: Path, command: str) -> None:
    args = parse_args([command, "--mlflow", "experiment.yaml"])
    assert args.config == "experiment.yaml" and args.mlflow == ""
    config = tmp_path / "conf"
    config.write_text("{}")
    args = parse_args([command, "--mlflow", str(config)])
    assert args.config == str(config) and args.mlflow == ""
    args = parse_args([command, "--mlflow", "sqlite:///m.db", "c.yaml"])
    assert args.config == "c.yaml" and args.mlflow == "sqlite:///m.db"
    args = parse_args([command, "c.yaml", "--mlflow"])
    assert args.config == "c.yaml" and args.mlflow == ""


def test_the_report_shows_the_client_id_mapping_and_notes() -> None:
    from plural.report.html import MAX_CLIENT_NAMES, _federation_html

    names = [f"writer-{i}" for i in range(MAX_CLIENT_NAMES + 5)]
    fed = {"dataset": "d", "num_clients": len(names), "client_names": names, "notes": ["moved"]}
    text = _federation_html(None, fed, ["fedavg (seed 0)"], 0)  # type: ignore[arg-type]
    assert "0: writer-0, 1: writer-1" in text
    assert f"... ({len(names)} in federation.json)" in text
    assert "<th>note</th><td>moved</td>" in text
