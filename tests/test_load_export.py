"""plural.load(run_dir).model(client) is the module the client was scored with; plural
export writes one safetensors file per client and a manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import plural
from plural.cli import main
from plural.config import ConfigError


def accuracy_of(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return int((module(x).argmax(dim=1) == y).sum()) / len(y)


@pytest.mark.parametrize(
    ("algorithm", "kinds"),
    [
        ({"name": "fedavg"}, {"global"}),
        ({"name": "ditto"}, {"personal", "global"}),  # never sampled: the global model
        ({"name": "ifca", "k": 2}, {"cluster0", "cluster1"}),
        ({"name": "finetune", "epochs": 1}, {"personal"}),
        ({"name": "local"}, {"personal"}),
        ({"name": "fedem", "components": 2}, {"personal"}),  # a mixture module
    ],
)
def test_a_loaded_model_reproduces_the_recorded_accuracy(
    tiny_config: dict[str, Any], tmp_path: Path, algorithm: dict[str, Any], kinds: set[str]
) -> None:
    cfg = {**tiny_config, "algorithm": algorithm, "seed": 5}
    results = plural.run(cfg, out=tmp_path / "run")
    run = plural.load(tmp_path / "run")
    assert run.config == results.config and run.summary == results.summary
    recorded = results.final("test").set_index("client")["accuracy"]
    for client in range(run.federation.num_clients):
        data = run.federation.client(client).test
        assert accuracy_of(run.model(client), data.x, data.y) == recorded[client]
    seen = {run.model_kind(c) for c in range(run.federation.num_clients)}
    assert seen <= kinds and seen


@pytest.mark.parametrize("algorithm", ["ditto", "fedem"])
def test_export_writes_one_file_per_client_and_a_manifest(
    tiny_config: dict[str, Any], tmp_path: Path, algorithm: str
) -> None:
    cfg = {**tiny_config, "algorithm": {"name": algorithm}, "sampling": {"fraction": 1.0}}
    plural.run(cfg, out=tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "models")]) == 0
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    run = plural.load(tmp_path / "run")
    assert [e["client"] for e in manifest["clients"]] == list(range(6))
    for entry in manifest["clients"]:
        tensors = load_file(str(tmp_path / "models" / entry["file"]))
        module = run.model(entry["client"])
        assert tensors.keys() == module.state_dict().keys()
        assert all(torch.equal(tensors[k], v) for k, v in module.state_dict().items())
        data = run.federation.client(entry["client"]).test
        assert accuracy_of(module, data.x, data.y) == entry["test_accuracy"]
        assert entry["model"] == "personal"


def test_export_refuses_a_folder_it_did_not_write(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    plural.run({**tiny_config, "rounds": 1}, out=tmp_path / "run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "mine")]) != 0
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(ConfigError, match="not a run directory"):
        plural.load(tmp_path / "mine")


def test_a_run_on_python_data_loads_with_the_same_data(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=generator).numpy()
    y = (x[:, 0] > 0).astype("int64")
    ids = [i % 3 for i in range(120)]
    data = plural.data.from_arrays(x, y, client_ids=ids)
    cfg = {"rounds": 2, "partition": {"name": "natural"}, "model": "logreg", "algorithm": "fedavg"}
    results = plural.run(cfg, dataset=data, out=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"plural.load\(run_dir, dataset=\.\.\.\)"):
        plural.load(tmp_path / "run").model(0)
    run = plural.load(tmp_path / "run", dataset=data)
    recorded = results.final("test").set_index("client")["accuracy"]
    for client in range(3):
        test = run.federation.client(client).test
        assert accuracy_of(run.model(client), test.x, test.y) == recorded[client]


def test_the_manifest_is_strict_json_when_clients_were_not_scored_on_test(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = {**tiny_config, "eval": {"splits": ["val"]}}
    plural.run(cfg, out=tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "models")]) == 0
    text = (tmp_path / "models" / "manifest.json").read_text()

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in manifest.json")

    manifest = json.loads(text, parse_constant=refuse)
    assert all(entry["test_accuracy"] is None for entry in manifest["clients"])
