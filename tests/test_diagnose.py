"""`plural diagnose`: runs on every bundled dataset, finds known groups, writes its report."""

from __future__ import annotations

import json
from typing import Any

import pytest

import plural
from plural.cli import main
from plural.runner.diagnose import diagnose

SMALL = {
    "rounds": 1,
    "partition": {"name": "dirichlet", "num_clients": 6, "alpha": 0.5, "min_samples": 20},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedavg"},
    "train": {"batch_size": 32},
    "backend": {"threads_per_worker": 1},
}
BUNDLED: dict[str, dict[str, Any]] = {
    "digits": {"name": "digits"},
    "mnist": {"name": "mnist", "max_samples": 1500},
    "fashion_mnist": {"name": "fashion_mnist", "max_samples": 1500},
    "synthetic": {"name": "synthetic", "num_devices": 6, "max_samples_per_device": 300},
}


@pytest.mark.parametrize("dataset", sorted(BUNDLED))
def test_diagnose_runs_on_every_bundled_dataset(dataset: str, tmp_path) -> None:
    config = {**SMALL, "dataset": BUNDLED[dataset]}
    if dataset == "synthetic":
        config["partition"] = {"name": "natural"}
    result = diagnose(config, out=tmp_path)
    assert result.label_skew is not None and result.label_skew.num_clients == 6
    assert result.dissimilarity.b2 >= 1.0 and result.drift.mean_drift > 0
    assert result.recommendation.family and result.recommendation.reasons
    saved = json.loads((tmp_path / "diagnosis.json").read_text())
    assert saved["recommendation"]["family"] == result.recommendation.family
    for name in ("label_histogram", "sizes", "gradient_deviation", "drift", "update_similarity"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "Recommendation" in (tmp_path / "diagnosis.md").read_text()


def test_rotation_groups_are_found_and_clustered_fl_recommended() -> None:
    result = diagnose("examples/rotated_digits.yaml", overrides=["rounds=1"])
    assert result.cluster is not None and result.cluster.k == 4
    assert result.cluster_ari == pytest.approx(1.0)
    assert result.recommendation.family == "clustered"


def test_iid_federation_gets_fedavg(tiny_config: dict[str, Any]) -> None:
    tiny_config.update(partition={"name": "iid", "num_clients": 6}, model={"name": "logreg"})
    assert diagnose(tiny_config).recommendation.family == "fedavg"


def test_every_client_starts_from_the_same_model(tiny_config: dict[str, Any]) -> None:
    # Clients with identical data and one full batch (so batch order cannot matter) must drift
    # identically: the starting model must not move from one client to the next.
    tiny_config.update(partition={"name": "iid", "num_clients": 1})
    tiny_config["train"]["batch_size"] = 10_000
    federation = plural.runner.build_federation(plural.load_config(tiny_config))
    same = federation.clients[0]
    clones = [plural.data.ClientData(k, same.train, same.val, same.test) for k in range(3)]
    twins = plural.data.FederatedDataset("twins", clones, 10, federation.input_shape)
    result = diagnose(tiny_config, dataset=twins)
    assert result.drift.drift.max() - result.drift.drift.min() < 1e-5
    assert result.dissimilarity.g2 == pytest.approx(0.0, abs=1e-10)


def test_probe_ranks_the_available_candidates(tiny_config: dict[str, Any]) -> None:
    result = diagnose(tiny_config, probe=True, probe_rounds=2)
    assert result.probe is not None
    assert {"fedavg", "local"} <= set(result.probe["algorithm"])
    # one method of every other available family is tried too, so the rules can be contradicted
    assert {"finetune", "fedper"} <= set(result.probe["algorithm"])
    assert result.probe["mean"].is_monotonic_decreasing


def test_diagnose_command(tmp_path, capsys) -> None:
    code = main(["diagnose", "examples/rotated_digits.yaml", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Recommendation: clustered" in out and "ARI against the true groups 1.000" in out
    assert (tmp_path / "diagnosis.json").is_file()


def test_diagnose_rejects_bad_options(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["diagnose", "examples/rotated_digits.yaml", "--probe-rounds", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_probe_gives_clustered_candidates_the_detected_groups_and_time() -> None:
    from plural.runner.diagnose import candidate_settings

    assert candidate_settings("ifca", 10, 4) == {"k": 4}
    assert candidate_settings("ifca", 10, None) == {}
    assert candidate_settings("cfl", 12, 4)["min_rounds"] == 4  # splits can happen in the probe
    assert candidate_settings("pfedlia", 10, 4)["warmup_rounds"] < 10 // 2
    assert candidate_settings("fedavg", 10, 4) == {}


def test_probe_runs_ifca_with_the_detected_k(monkeypatch: pytest.MonkeyPatch) -> None:
    import plural.runner.diagnose as diagnose_module

    seen: dict[str, Any] = {}
    original = diagnose_module.probe_methods

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(diagnose_module, "probe_methods", spy)
    result = diagnose("examples/rotated_digits.yaml", probe=True, probe_rounds=2)
    assert result.recommendation.family == "clustered"
    assert seen["groups"] == result.cluster.k == 4  # the example's 4 rotation groups
    assert {"ifca", "cfl", "pfedlia"} <= set(result.probe["algorithm"])
