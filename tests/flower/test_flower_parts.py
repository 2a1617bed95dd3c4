"""plural.flower's parts that need no Flower process: data specs, node configs, SecAgg+
refusals, the client states kept in Context.state, the CLI's early errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from plural.config import ConfigError
from plural.data.federated import SPLITS
from plural.experiment import load_config
from plural.flower.client import node_clients
from plural.flower.data import export_clients, load_client, local_federation
from plural.flower.secagg import check_secagg, secagg_refusal
from plural.runner import build_federation
from tiny_config import TINY_CONFIG


def cfg_with(**changes: Any) -> Any:
    raw = copy.deepcopy(TINY_CONFIG)
    raw.update(changes)
    return load_config(raw)


# ---- data specs


@pytest.mark.parametrize("seed", [3, 8])
def test_exported_specs_give_each_client_its_splits(tmp_path: Path, seed: int) -> None:
    cfg = cfg_with(seed=seed)
    federation = build_federation(cfg)
    paths = export_clients(federation, tmp_path)
    assert [p.name for p in paths] == [f"client-{k}.npz" for k in range(federation.num_clients)]
    for cid in (0, federation.num_clients - 1):
        loaded = load_client(paths[cid], cfg, cid)
        for split in SPLITS:
            torch.testing.assert_close(loaded.split(split).x, federation.client(cid).split(split).x)
            assert torch.equal(loaded.split(split).y, federation.client(cid).split(split).y)
    with pytest.raises(ConfigError, match="exists"):
        export_clients(federation, tmp_path)


def raw_samples(n: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % classes


@pytest.mark.parametrize("n", [30, 101])
def test_raw_samples_are_split_with_the_config(tmp_path: Path, n: int) -> None:
    x, y = raw_samples(n)
    cfg = cfg_with(split={"val": 0.1, "test": 0.2})
    np.savez(tmp_path / "c.npz", x=x, y=y)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)]).assign(label=y)
    frame.to_parquet(tmp_path / "c.parquet")
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"x": x.tolist(), "label": y.tolist()})
    hf.save_to_disk(str(tmp_path / "c-hf"))
    for name in ("c.npz", "c.parquet", "c-hf"):
        client = load_client(tmp_path / name, cfg, client_id=4)
        sizes = [len(client.split(s)) for s in SPLITS]
        assert sum(sizes) == n
        assert sizes[1] == round(0.1 * n) and sizes[2] == round(0.2 * n)
        rows = torch.cat([client.split(s).x for s in SPLITS])
        assert len(torch.unique(rows, dim=0)) == n  # each sample in exactly one split
    again = load_client(tmp_path / "c.npz", cfg, client_id=4)
    for name in ("c.parquet", "c-hf"):  # the same samples give the same splits
        other = load_client(tmp_path / name, cfg, 4)
        assert torch.equal(again.test.y, other.test.y)
        torch.testing.assert_close(again.test.x, other.test.x)


def test_bad_data_specs_say_what_is_wrong(tmp_path: Path) -> None:
    cfg = cfg_with()
    with pytest.raises(ConfigError, match="does not exist on this node"):
        load_client(tmp_path / "missing.npz", cfg, 0)
    np.savez(tmp_path / "odd.npz", features=np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="needs train_x"):
        load_client(tmp_path / "odd.npz", cfg, 0)
    pd.DataFrame({"a": [1.0, 2.0]}).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(ConfigError, match="'label' column"):
        load_client(tmp_path / "nolabel.parquet", cfg, 0)
    (tmp_path / "data.csv").write_text("x,y\n")
    with pytest.raises(ConfigError, match=r"\.npz file, a \.parquet file"):
        load_client(tmp_path / "data.csv", cfg, 0)


def test_a_device_federation_holds_only_its_clients(tmp_path: Path) -> None:
    cfg = cfg_with()
    federation = build_federation(cfg)
    held = [federation.clients[1], federation.clients[4]]
    local = local_federation(held, federation.num_clients, federation.num_classes)
    assert local.num_clients == federation.num_clients
    assert torch.equal(local.client(4).train.y, federation.client(4).train.y)
    assert [len(local.client(c).train) for c in (0, 2, 3, 5)] == [0, 0, 0, 0]


# ---- node configs


@pytest.mark.parametrize(
    ("node_config", "clients"),
    [
        ({"partition-id": 1, "num-partitions": 3}, [1, 4]),
        ({"partition-id": 0, "num-partitions": 4}, [0, 4]),
        ({"clients": "5, 2"}, [2, 5]),
    ],
)
def test_node_config_names_the_clients(node_config: dict[str, Any], clients: list[int]) -> None:
    assert node_clients(node_config, 6) == clients


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({}, "say which clients"),
        ({"clients": "a,b"}, "separated by commas"),
        ({"clients": "7"}, "not in the federation"),
        ({"partition-id": 3, "num-partitions": 3}, "not in"),
    ],
)
def test_bad_node_configs_are_refused(node_config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        node_clients(node_config, 6)


# ---- SecAgg+


def test_secagg_refusals_say_why() -> None:
    assert secagg_refusal(cfg_with()) is None
    assert secagg_refusal(cfg_with(algorithm={"name": "ditto"})) is None
    ifca = secagg_refusal(cfg_with(algorithm={"name": "ifca"}))
    assert ifca is not None and "one by one" in ifca
    median = secagg_refusal(cfg_with(aggregator={"name": "median"}))
    assert median is not None and "'median'" in median and "only their sum" in median
    bound = secagg_refusal(cfg_with(aggregator={"name": "norm_bound", "bound": 1.0}))
    assert bound is not None and "each client's update" in bound
    uniform = {"name": "fedavg", "weighting": "uniform"}  # what user-level DP needs
    dp_client = {"level": "client", "clip": 1.0, "noise_multiplier": 1.0}
    poisson = {"fraction": 0.5, "poisson": True}
    dp = secagg_refusal(cfg_with(algorithm=uniform, privacy=dp_client, sampling=poisson))
    assert dp is not None and "privacy.level 'client'" in dp
    # plural clips 'local' uploads in the server's aggregation chain: refused too
    local = {"level": "local", "clip": 1.0, "noise_multiplier": 1.0}
    assert secagg_refusal(cfg_with(algorithm=uniform, privacy=local)) is not None
    sample = {"level": "sample", "clip": 1.0, "noise_multiplier": 1.0}  # DP-SGD on the clients
    assert secagg_refusal(cfg_with(algorithm=uniform, privacy=sample)) is None


def test_secagg_refuses_what_it_cannot_mask_and_admits_the_rest() -> None:
    check_secagg(cfg_with(), secagg=False)
    with pytest.raises(ConfigError, match="robust aggregation rule"):
        check_secagg(cfg_with(aggregator={"name": "median"}), secagg=True)
    check_secagg(cfg_with(), secagg=True)  # FedAvg: masked
    check_secagg(cfg_with(algorithm={"name": "finetune", "base": {"name": "ditto"}}), True)
    with pytest.raises(ConfigError, match="'scaffold' does not average"):
        check_secagg(cfg_with(algorithm={"name": "finetune", "base": {"name": "scaffold"}}), True)
    with pytest.raises(ConfigError, match="weighting 'capped'"):
        check_secagg(cfg_with(algorithm={"name": "fedavg", "weighting": "capped"}), True)
    with pytest.raises(ConfigError, match="attack 'ipm' is simulated"):
        check_secagg(cfg_with(attack={"name": "ipm", "clients": [1]}), True)
    check_secagg(cfg_with(attack={"name": "label_flip", "clients": [1]}), True)  # on the data


def _update(params: dict[str, torch.Tensor], samples: int, complete: bool = True) -> Any:
    from plural.core.algorithm import Update
    from plural.engine.backends import PhaseCost

    return Update(samples, params, loss=0.5, complete=complete), None, PhaseCost(1.0, 0.1)


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
def test_a_node_masks_the_weighted_mean_of_its_clients(weighting: str) -> None:
    """The node's vector is its clients' weighted mean with their total weight, so the
    weighted mean over nodes is the weighted mean over clients; what travels in the clear
    holds no floating entry; the server puts the mean back into every update."""
    from plural.core.algorithm import ModelMessage
    from plural.flower.secure import node_mean, template_of, with_mean

    cfg = cfg_with(algorithm={"name": "fedavg", "weighting": weighting, "drop_stragglers": True})
    generator = torch.Generator().manual_seed(0)
    models = [
        {"w": torch.randn(3, 2, generator=generator), "steps": torch.tensor(k)} for k in (1, 2, 3)
    ]
    results = [_update(models[0], 10), _update(models[1], 30), _update(models[2], 5, False)]
    template = template_of(ModelMessage(models[0]))
    assert template == {"w": ((3, 2), "float32")}
    vector, weight, share = node_mean(cfg, results, template)
    weights = [10, 30] if weighting == "samples" else [1, 1]  # the straggler is dropped
    assert weight == sum(weights)
    first, second = models[0]["w"].double(), models[1]["w"].double()
    expected = (weights[0] * first + weights[1] * second) / sum(weights)
    np.testing.assert_allclose(vector[0], expected.numpy(), rtol=1e-12)
    for reply, *_ in share.replies:
        assert set(reply.params) == {"steps"}  # integer entries only, in the clear
    restored = with_mean(share, [np.full((3, 2), 0.25)])
    for (reply, *_), model in zip(restored, models, strict=True):
        assert reply.params["w"].dtype == torch.float32
        assert torch.equal(reply.params["w"], torch.full((3, 2), 0.25))
        assert torch.equal(reply.params["steps"], model["steps"])
    empty_vector, empty_weight, _ = node_mean(cfg, [], template)  # a node without clients
    assert empty_weight == 0 and not np.any(empty_vector[0])


def test_a_node_leaves_diverged_updates_out_and_refuses_what_flower_would_clip() -> None:
    from plural.flower.secure import CLIPPING_RANGE, node_mean, with_mean

    cfg = cfg_with()
    template = {"w": ((2,), "float32")}
    good, bad = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([float("nan"), 0.0])}
    vector, weight, share = node_mean(cfg, [_update(good, 4), _update(bad, 4)], template)
    assert weight == 4 and np.allclose(vector[0], [1.0, 2.0])
    restored = with_mean(share, vector)
    assert torch.isnan(restored[1][0].params["w"]).all()  # the engine sees it diverged
    assert torch.equal(restored[0][0].params["w"], torch.tensor([1.0, 2.0]))
    huge = {"w": torch.tensor([2 * CLIPPING_RANGE, 0.0])}
    with pytest.raises(ValueError, match="outside Flower's clipping range"):
        node_mean(cfg, [_update(huge, 1)], template)
    with pytest.raises(ValueError, match="other floating entries"):
        node_mean(cfg, [_update({"v": torch.zeros(2)}, 1)], template)


def test_cli_refuses_secagg_before_flower_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("flwr")
    import yaml

    from plural.cli import main

    raw = copy.deepcopy(TINY_CONFIG)
    raw["algorithm"] = {"name": "ifca"}
    path = tmp_path / "ifca.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["flower", "run", str(path), "--secagg", "--out", str(tmp_path / "run")]) == 2
    assert "flower secagg: algorithm 'ifca'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_refuses_more_nodes_than_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("flwr")
    import yaml

    from plural.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(TINY_CONFIG)))  # 6 clients
    assert main(["flower", "run", str(path), "--nodes", "7", "--out", str(tmp_path / "r")]) == 2
    assert "nodes: 7; give 1 to 6" in capsys.readouterr().err


# ---- client states in Context.state


@pytest.mark.flower
def test_context_states_survive_rounds_and_restart_a_replayed_round() -> None:
    pytest.importorskip("flwr")
    from flwr.app import RecordDict

    from plural.flower.client import ContextStates

    record = RecordDict()
    states = ContextStates(record)
    states.begin(1, 0)
    states.put(0, {"w": torch.ones(2)})
    states.put(3, torch.zeros(1))
    assert list(states) == [0, 3] and 0 in states and len(states) == 2
    states.begin(2, 0)  # round 2: round 1's states are its start
    states.put(0, {"w": torch.full((2,), 5.0)})
    states.put(3, None)
    assert list(states) == [0]
    again = ContextStates(record)  # a new ClientApp process reads the same Context.state
    again.begin(2, 1)  # round 2 played again without failed clients
    assert torch.equal(again.get(0)["w"], torch.ones(2)) and list(again) == [0, 3]
    again.begin(2, 1)
    again.put(0, {"w": torch.full((2,), 7.0)})
    again.begin(3, 0)
    assert torch.equal(again.get(0)["w"], torch.full((2,), 7.0))
