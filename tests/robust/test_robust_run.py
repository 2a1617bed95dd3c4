"""Faults, attackers and robust rules in whole (tiny) runs: dropouts and raising clients are
recorded and the round goes on, availability windows are honoured exactly, deadlines cut off
slow clients, and everything resumes exactly."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from plural.algorithms.fedavg import FedAvg
from plural.config import ConfigError
from plural.experiment import load_config
from plural.report.rundir import deterministic
from plural.robust.runtime import Robustness, TooManyFailures
from plural.runner import build_federation


def _config(tiny_config: dict[str, Any], **sections: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(tiny_config)
    cfg["partition"]["num_clients"] = 10
    cfg["rounds"] = 3
    cfg.update(sections)
    return cfg


def _participants(results: Any) -> dict[int, set[int]]:
    fit = results.metrics[(results.metrics["split"] == "fit") & (results.metrics["bytes_up"] > 0)]
    return {int(r): set(g["client"].astype(int)) for r, g in fit.groupby("round")}


@pytest.fixture
def raising_client(monkeypatch: pytest.MonkeyPatch) -> int:
    """Client 4's code raises whenever it trains."""
    original = FedAvg.client_update

    def client_update(self: Any, message: Any, state: Any, client: Any, *args: Any) -> Any:
        if client.client_id == 4:
            raise ValueError("disk full on client 4")
        return original(self, message, state, client, *args)

    monkeypatch.setattr(FedAvg, "client_update", client_update)
    return 4


@pytest.mark.parametrize("algorithm", ["fedavg", "ifca", "fedper"])
def test_dropout_and_a_raising_client_are_recorded_and_the_run_finishes(
    tiny_config: dict[str, Any], tmp_path: Path, raising_client: int, algorithm: str
) -> None:
    cfg = _config(
        tiny_config,
        algorithm={"name": algorithm},
        sampling={"count": 10},
        faults={"dropout": 0.3, "max_failures": 5},
    )
    results = plural.run(cfg, out=tmp_path)
    diagnostics = results.diagnostics
    assert diagnostics["dropouts"].sum() > 0
    failed = [f for record in diagnostics["failed"] for f in record]
    assert failed and all(f["client"] == raising_client for f in failed)
    assert "disk full on client 4" in failed[0]["error"] and failed[0]["phase"] == "client_update"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["robustness"]["failures"] == len(failed)
    assert summary["robustness"]["dropouts"] == int(diagnostics["dropouts"].sum())
    if algorithm == "ifca":
        return  # IFCA asks every client for its cluster on evaluated rounds (not training)
    # dropped and failed clients downloaded the model but sent nothing back
    fit = results.metrics[results.metrics["split"] == "fit"]
    for _, row in diagnostics.iterrows():
        sent = set(fit[(fit["round"] == row["round"]) & (fit["bytes_up"] > 0)]["client"])
        assert raising_client not in sent
        assert len(sent) == 10 - row["dropouts"] - row["failures"]
    loaded = fit[(fit["bytes_down"] > 0) & (fit["bytes_up"] == 0)]
    assert len(loaded) == int(diagnostics["dropouts"].sum() + diagnostics["failures"].sum())


def test_too_many_failures_stop_the_run_with_the_message(
    tiny_config: dict[str, Any], raising_client: int
) -> None:
    cfg = _config(tiny_config, sampling={"count": 10}, faults={"max_failures": 1})
    with pytest.raises(TooManyFailures, match=r"2 client failures exceed the 1 allowed.*disk full"):
        plural.run(cfg)


def test_without_max_failures_client_errors_stop_the_run_as_before(
    tiny_config: dict[str, Any], raising_client: int
) -> None:
    cfg = _config(tiny_config, sampling={"count": 10})
    with pytest.raises(ValueError, match=r"disk full on client 4"):
        plural.run(cfg)


def test_availability_windows_are_honoured_exactly(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    # round r starts at hour (r - 1) * 2: hours 0, 2, 4, 6
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "client,start,end\n0,0,2\n1,0,100\n2,2,4\n3,4,4.5\n3,6,7\n5,1.9,2.1\n7,0,1\n7,6,8\n"
    )
    expected = {1: {0, 1, 7}, 2: {1, 2, 5}, 3: {1, 3}, 4: {1, 3, 7}}
    for sampling, check in (({"count": 10}, "all"), ({"count": 2}, "subset")):
        cfg = _config(
            tiny_config,
            rounds=4,
            sampling={**sampling, "availability": str(trace), "round_hours": 2.0},
        )
        results = plural.run(cfg)
        seen = _participants(results)
        for r, clients in expected.items():
            if check == "all":
                assert seen[r] == clients
            else:
                assert seen[r] <= clients and len(seen[r]) == min(2, len(clients))
        assert list(results.diagnostics["available"]) == [len(expected[r]) for r in range(1, 5)]


def test_a_round_without_available_clients_is_lost_not_fatal(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("client,start,end\n0,0,1\n1,2,3\n")
    cfg = _config(tiny_config, sampling={"availability": str(trace)})
    results = plural.run(cfg)
    assert list(results.diagnostics["round_lost"]) == [False, True, False]
    assert results.summary["robustness"]["rounds_lost"] == 1


def test_diurnal_availability_follows_each_clients_day(tiny_config: dict[str, Any]) -> None:
    cfg = _config(tiny_config, rounds=4, sampling={"availability": "diurnal", "round_hours": 6.0})
    config = load_config(cfg)
    federation = build_federation(config)
    robust = Robustness.build(config, federation)
    results = plural.run(cfg)
    seen = _participants(results)
    offsets = robust.availability.offsets  # type: ignore[union-attr]
    for r in range(1, 5):
        local = ((r - 1) * 6.0 + offsets - 22.0) % 24.0
        assert seen.get(r, set()) == set(np.flatnonzero(local < 8.0).tolist())


@pytest.mark.parametrize("deadline", [0.5, 2.0])
def test_deadline_cuts_off_exactly_the_slow_clients(
    tiny_config: dict[str, Any], deadline: float
) -> None:
    cfg = _config(
        tiny_config, sampling={"count": 10}, faults={"deadline": deadline, "throughput": 50.0}
    )
    config = load_config(cfg)
    robust = Robustness.build(config, build_federation(config))
    results = plural.run(cfg)
    seen = _participants(results)
    for r in range(1, 4):
        fast = {c for c in range(10) if robust.client_seconds(c, r) <= deadline}
        assert seen.get(r, set()) == fast
    assert results.summary["robustness"]["deadline_missed"] == sum(
        10 - len(seen.get(r, set())) for r in range(1, 4)
    )


def test_malicious_clients_are_recorded_and_left_out_of_clean_accuracy(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = _config(tiny_config, attack={"name": "sign_flip", "clients": [2, 7]})
    results = plural.run(cfg, out=tmp_path)
    described = json.loads((tmp_path / "federation.json").read_text())
    assert described["malicious"] == [2, 7]
    final = results.final("test")
    clean = final[~final["client"].isin([2, 7])]
    summary = results.summary["robustness"]
    assert summary["clean"]["test"]["mean"] == pytest.approx(clean["accuracy"].mean())
    assert summary["clean"]["test"]["clients"] == 8
    assert results.diagnostics["poisoned"].sum() > 0
    assert summary["omniscient"] is False and "omniscient_attack" not in described


@pytest.mark.parametrize("attack", ["alie", "ipm", "min_max"])
def test_omniscient_attacks_say_so_in_the_header_summary_and_federation(
    tiny_config: dict[str, Any], tmp_path: Path, attack: str
) -> None:
    from plural.report.header import HeaderPrinter

    cfg = _config(tiny_config, attack={"name": attack, "clients": [2, 7]})
    cfg["rounds"] = 1
    printer = HeaderPrinter(io.StringIO())
    results = plural.run(cfg, out=tmp_path, callbacks=[printer])
    assert printer.info is not None
    lines = printer.info.lines()
    assert results.summary["robustness"]["omniscient"] is True
    described = json.loads((tmp_path / "federation.json").read_text())
    assert "every honest update" in described["omniscient_attack"]
    assert any(f"attack {attack} is omniscient" in line for line in lines)


def test_attack_and_faults_settings_are_checked_before_training(
    tiny_config: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError, match=r"needs fraction or clients"):
        plural.run(_config(tiny_config, attack={"name": "alie"}))
    with pytest.raises(ConfigError, match=r"not clients of this federation"):
        plural.run(_config(tiny_config, attack={"name": "alie", "clients": [12]}))
    with pytest.raises(ConfigError, match=r"pixel trigger on images.*synthetic"):
        cfg = _config(tiny_config, attack={"name": "backdoor", "fraction": 0.2})
        cfg["dataset"] = {"name": "synthetic"}
        cfg["model"] = {"name": "logreg"}
        plural.run(cfg)
    with pytest.raises(ConfigError, match=r"krum with f=2 needs more than 2f"):
        plural.run(_config(tiny_config, aggregator={"name": "krum", "f": 2}))
    with pytest.raises(ConfigError, match=r"sampling.availability.*does not exist"):
        plural.run(_config(tiny_config, sampling={"availability": "/nonexistent/trace.csv"}))


RESUMED = [
    (
        "fedavg",
        {
            "aggregator": {"name": "centered_clip", "tau": 0.5},
            "attack": {"name": "alie", "fraction": 0.2, "start_round": 2},
            "faults": {"dropout": 0.2, "max_failures": 10},
        },
    ),
    (
        "ifca",
        {
            "aggregator": {"name": "trimmed_mean", "trim": 0.2},
            "attack": {"name": "backdoor", "fraction": 0.2},
            "faults": {"deadline": 1.0, "throughput": 50.0},
        },
    ),
]


@pytest.mark.parametrize(("algorithm", "sections"), RESUMED)
def test_resume_with_attack_faults_and_robust_rule_is_exact(
    tiny_config: dict[str, Any],
    tmp_path: Path,
    crash_after: Any,
    raising_client: int,
    algorithm: str,
    sections: dict[str, Any],
) -> None:
    cfg = _config(tiny_config, rounds=4, algorithm={"name": algorithm}, sampling={"count": 8})
    cfg.update(sections)
    straight = plural.run(cfg, out=tmp_path / "straight")
    with pytest.raises(RuntimeError, match=r"simulated crash"):
        plural.run(cfg, out=tmp_path / "run", callbacks=[crash_after(2)])
    resumed = plural.run(cfg, out=tmp_path / "run", resume=True)
    pd.testing.assert_frame_equal(deterministic(straight.metrics), deterministic(resumed.metrics))
    for name, tensor in straight.server.params.items():
        assert (tensor == resumed.server.params[name]).all()
    assert straight.summary["robustness"] == resumed.summary["robustness"]


def _server_tensors(server: Any) -> dict[str, torch.Tensor]:
    """Every floating tensor the server state holds (the global model, cluster models, ...),
    by its path in the state."""
    found: dict[str, torch.Tensor] = {}

    def collect(path: str, value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found[path] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(f"{path}/{key}", item)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                collect(f"{path}/{index}", item)

    collect("params", server.params)
    collect("extra", server.extra)
    return found


@pytest.mark.parametrize(
    "algorithm",
    [
        "fedavg",
        "fedprox",
        "fedper",
        "fedrep",
        "fedbn",
        "lg_fedavg",
        "ditto",
        "ifca",
        "cfl",
        "oracle",
        "pfedlia",
        "finetune",
    ],
)
@pytest.mark.parametrize("rule", ["median", "centered_clip"])
def test_robust_rules_apply_to_every_averaging_algorithm(
    tiny_config: dict[str, Any], algorithm: str, rule: str
) -> None:
    """The shared part of personalized methods and each cluster's model are aggregated by
    the rule: the server's models change when it does."""
    cfg = _config(tiny_config, rounds=2, algorithm={"name": algorithm}, sampling={"count": 6})
    if algorithm == "fedbn":
        cfg["model"] = {"name": "mlp", "hidden": [16], "batch_norm": True}
    if algorithm == "oracle":  # true groups: two rotations
        cfg["transforms"] = [{"name": "rotation", "groups": 2}]
    if algorithm == "pfedlia":  # one warm-up round, then per-cluster models
        cfg["algorithm"] = {"name": "pfedlia", "warmup_rounds": 1}
    plain = plural.run(cfg)
    settings = {"tau": 0.05} if rule == "centered_clip" else {}
    robust = plural.run({**cfg, "aggregator": {"name": rule, **settings}})
    assert robust.summary["robustness"]["aggregator"] == rule
    before, after = _server_tensors(plain.server), _server_tensors(robust.server)
    models = [path for path in before if path in after and before[path].shape == after[path].shape]
    assert models
    assert any(not torch.equal(before[path], after[path]) for path in models)


def test_faults_and_attacks_give_the_same_run_on_the_vectorized_backend(
    tiny_config: dict[str, Any], raising_client: int
) -> None:
    cfg = _config(
        tiny_config,
        sampling={"count": 10},
        faults={"dropout": 0.2, "max_failures": 5},
        attack={"name": "ipm", "clients": [1, 6]},
        aggregator={"name": "geometric_median"},
    )
    sequential = plural.run(cfg)
    vectorized = plural.run({**cfg, "backend": {"name": "vectorized", "vectorize": "always"}})
    for key in ("dropouts", "failures", "poisoned"):
        assert list(sequential.diagnostics[key]) == list(vectorized.diagnostics[key])
    for name, tensor in sequential.server.params.items():
        assert float((tensor - vectorized.server.params[name]).abs().max()) < 1e-4


def test_rules_and_attacks_that_would_not_act_are_refused(tiny_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"'qfedavg' combines clients its own way"):
        plural.run(_config(tiny_config, algorithm={"name": "qfedavg"}, aggregator={"name": "krum"}))
    with pytest.raises(ConfigError, match=r"'fedproto' clients do not send a model"):
        plural.run(
            _config(
                tiny_config, algorithm={"name": "fedproto"}, attack={"name": "ipm", "clients": [1]}
            )
        )
    results = plural.run(
        _config(
            tiny_config,
            rounds=2,
            algorithm={"name": "finetune", "epochs": 1},
            attack={"name": "sign_flip", "clients": [1, 2, 3]},
        )
    )
    assert results.diagnostics["poisoned"].sum() > 0  # fine-tuning's base updates are attacked
