"""Bring your own data and model: user arrays, files, modules and factories."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import plural
from plural.config import ConfigError
from plural.data import from_arrays
from plural.experiment import load_config
from plural.runner import build_federation, session

TESTS_DIR = Path(__file__).resolve().parent

# The user's own clients: unequal sizes, string ids in no sorted order.
CLIENT_SIZES = {"carol": 20, "alice": 60, "bob": 40}
SORTED_SIZES = [60, 40, 20]  # alice, bob, carol: ids map to 0..K-1 in sorted order

BASE: dict[str, Any] = {
    "name": "byod",
    "seed": 0,
    "rounds": 1,
    "dataset": {"name": "digits"},
    "partition": {"name": "natural"},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedavg"},
    "split": {"val": 0.0, "test": 0.25},
    "eval": {"splits": ["test"]},
    "backend": {"threads_per_worker": 1},
}


def config(**sections: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE), **sections}


@pytest.fixture
def helpers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """tests/helpers_models.py, importable as ``helpers_models``, with its call log cleared."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    import helpers_models

    helpers_models.CALLS.clear()
    return helpers_models


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the run went past config validation")

    monkeypatch.setattr(session, "build_federation", forbidden)
    monkeypatch.setattr(session, "make_backend", forbidden)


def user_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, 5), binary labels that depend on the features, and client ids."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([[name] * size for name, size in CLIENT_SIZES.items()])
    ids = ids[rng.permutation(len(ids))]
    x = rng.normal(size=(len(ids), 5)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y, ids


def check_user_clients(results: plural.Results) -> None:
    """Three clients with the user's sizes: 25% test, the rest train."""
    assert results.summary["clients"] == 3
    fit = results.metrics[results.metrics["split"] == "fit"].sort_values("client")
    test = results.final("test").sort_values("client")
    assert fit["client"].tolist() == [0, 1, 2]
    assert test["samples"].tolist() == [s // 4 for s in SORTED_SIZES]
    assert fit["samples"].tolist() == [s - s // 4 for s in SORTED_SIZES]
    assert test["accuracy"].between(0, 1).all()


# --------------------------------------------------------------------------- user data


def test_user_arrays_with_natural_partition_keep_the_users_clients() -> None:
    x, y, ids = user_arrays()
    dataset = from_arrays(x, y, client_ids=ids, name="mine")
    federation = build_federation(load_config(config()), dataset)
    assert federation.num_clients == 3
    assert federation.name == "mine"
    totals = sum(federation.sizes(s) for s in ("train", "val", "test"))
    assert totals.tolist() == SORTED_SIZES
    assert federation.input_shape == (5,)
    assert federation.num_classes == 2
    # each client holds exactly its own samples
    for cid, name in enumerate(sorted(CLIENT_SIZES)):
        mine = np.sort(x[ids == name][:, 0])
        client = federation.client(cid)
        held = torch.cat([client.train.x, client.val.x, client.test.x])[:, 0].numpy()
        np.testing.assert_array_equal(np.sort(held), mine)

    results = plural.run(config(), dataset=dataset)
    check_user_clients(results)
    assert set(results.server.params) == {"1.weight", "1.bias"}
    assert results.server.params["1.weight"].shape == (2, 5)  # logreg built for the user data


def test_natural_partition_without_client_ids_is_a_config_error() -> None:
    x, y, _ = user_arrays()
    with pytest.raises(ConfigError, match=r"natural.*has no natural clients"):
        plural.run(config(), dataset=from_arrays(x, y))


def test_npz_with_a_client_key_runs_end_to_end(tmp_path: Path) -> None:
    x, y, ids = user_arrays()
    path = tmp_path / "data.npz"
    np.savez(path, feats=x, labels=y, who=ids)
    dataset = {
        "name": "npz",
        "path": str(path),
        "x_key": "feats",
        "y_key": "labels",
        "client_key": "who",
    }
    results = plural.run(config(dataset=dataset), out=tmp_path / "run")
    check_user_clients(results)
    federation = json.loads((tmp_path / "run" / "federation.json").read_text())
    assert federation["dataset"] == "npz"
    assert federation["input_shape"] == [5]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_a_client_column_runs_end_to_end(tmp_path: Path, suffix: str) -> None:
    x, y, ids = user_arrays()
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    frame["label"] = np.where(y == 1, "yes", "no")
    frame["user"] = ids
    frame["note"] = "ignored"  # a text column left out through feature_columns
    path = tmp_path / f"table{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    dataset = {
        "name": "table",
        "path": str(path),
        "label_column": "label",
        "client_column": "user",
        "feature_columns": [f"f{i}" for i in range(5)],
    }
    results = plural.run(config(dataset=dataset), out=tmp_path / "run")
    check_user_clients(results)
    federation = json.loads((tmp_path / "run" / "federation.json").read_text())
    assert federation["class_names"] == ["no", "yes"]
    assert federation["input_shape"] == [5]
    assert np.asarray(federation["label_histogram"]).sum(axis=1).tolist() == SORTED_SIZES


def test_summary_names_the_users_dataset(tmp_path: Path) -> None:
    x, y, ids = user_arrays()
    results = plural.run(
        config(), dataset=from_arrays(x, y, client_ids=ids, name="mine"), out=tmp_path / "run"
    )
    assert json.loads((tmp_path / "run" / "federation.json").read_text())["dataset"] == "mine"
    assert results.summary["dataset"] == "mine"


# --------------------------------------------------------------------------- user modules


def test_user_module_is_used_and_not_mutated(helpers: ModuleType) -> None:
    torch.manual_seed(0)
    module = helpers.TwoPart(in_features=5, hidden=6, num_classes=2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x, y, ids = user_arrays()
    dataset = from_arrays(x, y, client_ids=ids)

    results = plural.run(config(), dataset=dataset, model=module, keep_weights=True)
    params = results.server.params
    assert set(params) == set(before)  # the user's names, not the logreg of the config
    assert {"encoder.1.weight", "classifier.weight"} <= set(params)
    assert any(not torch.equal(params[k], before[k]) for k in before)  # it was trained
    after = module.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the user's copy was not
    assert all(p.grad is None for p in module.parameters())

    # with no local training, the server keeps exactly the user's initial weights
    still = plural.run(
        config(train={"local_epochs": 0}), dataset=dataset, model=module, keep_weights=True
    )
    assert all(torch.equal(still.server.params[k], before[k]) for k in before)


def test_user_factory_callable_is_called(helpers: ModuleType) -> None:
    calls = []

    def factory() -> nn.Module:
        calls.append(1)
        return helpers.TwoPart(in_features=64, hidden=4, num_classes=10)

    results = plural.run(config(partition={"name": "iid", "num_clients": 2}), model=factory)
    assert calls == [1]
    assert results.server.params["encoder.1.weight"].shape == (4, 64)


def test_user_factory_that_returns_no_module(helpers: ModuleType) -> None:
    with pytest.raises(ConfigError, match=r"not an nn\.Module"):
        plural.run(config(partition={"name": "iid", "num_clients": 2}), model=helpers.not_a_module)


def test_model_by_import_path_with_kwargs_gets_the_context(helpers: ModuleType) -> None:
    model = {"name": "helpers_models:tiny_net", "hidden": 7}
    cfg = load_config(config(model=model, partition={"name": "iid", "num_clients": 2}))
    assert cfg.model.name == "helpers_models:tiny_net"
    assert load_config(cfg.to_dict()) == cfg  # round-trips like a registered model
    assert cfg.to_dict()["model"] == model

    results = plural.run(cfg)
    # digits: (1, 8, 8) images, 10 classes, passed because the factory accepts them
    assert helpers.CALLS == [{"hidden": 7, "num_classes": 10, "input_shape": (1, 8, 8)}]
    assert results.server.params["1.weight"].shape == (7, 64)
    assert results.server.params["3.weight"].shape == (10, 7)


def test_model_factory_by_import_path_without_context_arguments(helpers: ModuleType) -> None:
    model = {"name": "helpers_models:fixed_net", "in_features": 64, "out_features": 10}
    results = plural.run(config(model=model, partition={"name": "iid", "num_clients": 2}))
    assert helpers.CALLS == [{"in_features": 64, "out_features": 10, "bias": True}]
    assert set(results.server.params) == {"1.weight", "1.bias"}


def test_import_path_model_uses_the_run_seed(helpers: ModuleType) -> None:
    spec = load_config(config(model={"name": "helpers_models:tiny_net", "hidden": 3})).model
    a, b, c = (spec.build((5,), 2, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"name": "no_such_module_xyz:net"}, ["model.name", "cannot import module"]),
        ({"name": "helpers_models:no_such_net"}, ["model.name", "no callable 'no_such_net'"]),
        ({"name": "helpers_models:CALLS"}, ["model.name", "no callable 'CALLS'"]),
        ({"name": "helpers_models:tiny_net"}, ["model:", "do not fit", "'hidden'"]),
        ({"name": "helpers_models:tiny_net", "hidden": 4, "depth": 2}, ["model:", "'depth'"]),
        ({"name": "helpers_models:fixed_net", "in_features": 64}, ["model:", "'out_features'"]),
    ],
    ids=["module", "attribute", "not-callable", "missing-kwarg", "extra-kwarg", "missing-arg"],
)
def test_bad_import_path_model_is_a_config_error_before_training(
    helpers: ModuleType,
    no_training: None,
    tmp_path: Path,
    model: dict[str, Any],
    expected: list[str],
) -> None:
    with pytest.raises(ConfigError) as info:
        plural.run(config(model=model), out=tmp_path / "run")
    for part in expected:
        assert part in str(info.value)
    assert helpers.CALLS == []  # the factory was never called
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", [":tiny_net", "builtins:dict"])
def test_malformed_import_path_is_a_config_error(
    helpers: ModuleType, no_training: None, name: str
) -> None:
    with pytest.raises(ConfigError, match="model"):
        plural.run(config(model={"name": name}))


def test_import_path_factory_that_returns_no_module(helpers: ModuleType) -> None:
    with pytest.raises(ConfigError, match=r"returned object, not a torch\.nn\.Module"):
        plural.run(
            config(
                model={"name": "helpers_models:not_a_module"},
                partition={"name": "iid", "num_clients": 2},
            )
        )


def test_objects_from_python_need_no_placeholder_sections(tmp_path: Path) -> None:
    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(120, 5)).astype(np.float32), gen.integers(0, 3, 120)
    config = {
        "partition": {"name": "iid", "num_clients": 3},
        "algorithm": {"name": "fedavg"},
        "rounds": 1,
        "backend": {"threads_per_worker": 1},
    }
    results = plural.run(config, dataset=from_arrays(x, y), model=nn.Linear(5, 3), out=tmp_path)
    saved = load_config(tmp_path / "config.yaml")
    assert saved.dataset.name == "python" and saved.model.name == "python"
    assert results.summary["test"]["accuracy"]["clients"] == 3
    with pytest.raises(ConfigError, match=r"dataset=\.\.\."):
        plural.run(tmp_path / "config.yaml")  # the data is not in the config: say so
