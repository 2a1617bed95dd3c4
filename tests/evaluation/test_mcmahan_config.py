"""The McMahan et al. 2017 reproduction config states the paper's protocol and runs."""

from __future__ import annotations

from pathlib import Path

import plural
from plural.runner import build_federation

CONFIG = Path(__file__).parents[2] / "examples" / "papers" / "mcmahan2017_mnist_2nn.yaml"


def test_the_config_is_the_papers_protocol() -> None:
    cfg = plural.load_config(CONFIG)
    assert cfg.model.name == "mlp" and tuple(cfg.model.settings.hidden) == (200, 200)
    assert cfg.partition.name == "iid" and cfg.partition.settings.num_clients == 100
    assert cfg.sampling.fraction == 0.1
    assert cfg.train.batch_size == 10 and cfg.train.local_epochs == 1
    assert cfg.split.server == "official" and cfg.split.val == cfg.split.test == 0.0
    federation = build_federation(cfg)
    assert len(federation.server) == 10_000  # MNIST's official test images
    assert set(federation.sizes("train").tolist()) == {600}  # 100 clients of 600


def test_the_config_runs_and_scores_the_server_set() -> None:
    small = ["rounds=1", "dataset.max_samples=2000", "partition.num_clients=10"]
    results = plural.run(CONFIG, overrides=small)
    server = results.metrics.query("split == 'server'")
    assert len(server) == 1 and server["client"].item() == -1
    assert results.summary["server"]["accuracy"]["mean"] == server["accuracy"].item()
