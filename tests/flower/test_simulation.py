"""plural.flower in Flower's simulation engine gives the sequential backend's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flower_helpers import (
    ALGORITHMS,
    assert_same_metrics,
    assert_same_run_directory,
    config,
    without_timing,
)

import plural

pytestmark = pytest.mark.flower
flower = pytest.importorskip("plural.flower")
pytest.importorskip("flwr")

NODES = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every registered algorithm (and FedAvg at another scale and seed) run sequentially
    and through Flower, all Flower jobs in one simulation (the nodes start once)."""
    from tiny_config import TINY_CONFIG

    jobs = {name: config(TINY_CONFIG, name) for name in ALGORITHMS}
    jobs["fedavg-9"] = config(
        TINY_CONFIG,
        "fedavg",
        seed=11,
        partition={"name": "dirichlet", "num_clients": 9, "alpha": 1.0, "min_samples": 20},
    )
    root = tmp_path_factory.mktemp("flower")
    sequential = {k: plural.run(c, out=root / f"seq-{k}") for k, c in jobs.items()}
    simulated = flower.simulate_all(
        [(c, root / f"flower-{k}") for k, c in jobs.items()], nodes=NODES
    )
    return {
        "root": root,
        "sequential": sequential,
        "flower": dict(zip(jobs, simulated, strict=True)),
    }


@pytest.mark.parametrize("name", [*ALGORITHMS, "fedavg-9"])
def test_simulation_equals_sequential(runs: dict[str, Any], name: str) -> None:
    expected, got = runs["sequential"][name], runs["flower"][name]
    assert_same_metrics(expected.metrics, got.metrics)
    root: Path = runs["root"]
    assert_same_run_directory(root / f"seq-{name}", root / f"flower-{name}")


def test_personal_states_stay_on_the_nodes(runs: dict[str, Any]) -> None:
    """Ditto's personal models are in the nodes' Context.state: the server's checkpoint
    holds no client state, while the sequential run's holds one per client that trained."""
    from plural.report.rundir import RunDirectory

    root: Path = runs["root"]
    sequential = RunDirectory(root / "seq-ditto").load_checkpoint()["store"]
    flower_store = RunDirectory(root / "flower-ditto").load_checkpoint()["store"]
    assert len(sequential) > 0
    assert flower_store == {}


def test_pfedlia_peer_exchange_is_counted(runs: dict[str, Any]) -> None:
    """The models relayed between clients in pFedLIA's scoring phase go through the server
    and are charged to the round, as in the sequential run."""
    got = runs["flower"]["pfedlia"].summary["pfedlia"]["lazy_cost"]
    assert got["peer_exchange_bytes"] > 0
    expected = runs["sequential"]["pfedlia"].summary["pfedlia"]["lazy_cost"]
    assert without_timing(got) == without_timing(expected)


def test_cli_flower_run_writes_the_sequential_run_directory(tmp_path: Path) -> None:
    import yaml

    from plural.cli import main
    from tiny_config import TINY_CONFIG

    cfg = config(TINY_CONFIG, "ditto", seed=5)
    path = tmp_path / "ditto.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "flower"
    assert main(["flower", "run", str(path), "--nodes", "2", "--out", str(out)]) == 0
    plural.run(cfg, out=tmp_path / "sequential")
    assert_same_run_directory(tmp_path / "sequential", out)
