"""Model-heterogeneous baselines: FedProto (Tan et al. 2022) and FML (Shen et al. 2020), on a
tiny three-architecture ``cnn_family`` federation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import plural
from helpers_family import CLASSES, TINY_FAMILY, WIDTH, family
from plural.algorithms.fedproto import (
    COUNTS_KEY,
    PROTOTYPES_KEY,
    FedProto,
    FedProtoConfig,
    FedProtoState,
    PrototypeMessage,
    fedproto_state,
)
from plural.config import ConfigError
from plural.core.algorithm import FederationInfo, ServerState, Update
from plural.core.params import Params, max_abs_difference, nbytes
from plural.core.rng import derive_seed
from plural.engine.backends import ClientWork, WorkerEnv, WorkerSetup, run_client_phase
from plural.experiment import load_config
from plural.models.adapters import ADAPTER_PREFIX, LOCAL_PREFIX, parallel_network
from plural.models.zoo import BodyHeadCNN
from plural.report.rundir import RunDirectory, deterministic
from plural.runner import build_algorithm, build_client_models, build_federation

EVALUATED = ["round", "client", "split", "loss", "accuracy", "samples"]


def evaluation(results: plural.Results) -> pd.DataFrame:
    """The evaluation rows (every split but 'fit'): loss, accuracy, samples."""
    rows = results.metrics[results.metrics["split"] != "fit"]
    return rows[EVALUATED].sort_values(["round", "client", "split"]).reset_index(drop=True)


def fit_rows(results: plural.Results) -> pd.DataFrame:
    return results.metrics[results.metrics["split"] == "fit"].reset_index(drop=True)


def client_states(run_dir: Path) -> dict[int, Any]:
    return RunDirectory(run_dir).load_checkpoint()["store"]


def assert_same_params(a: Params, b: Params) -> None:
    assert a.keys() == b.keys() and max_abs_difference(a, b) == 0.0


# ---- FedProto ------------------------------------------------------------------------------


def test_fedproto_without_prototype_term_is_local_and_sends_prototypes_only(
    tmp_path: Path,
) -> None:
    local = plural.run(family({"name": "local"}), out=tmp_path / "local")
    proto = plural.run(family({"name": "fedproto", "lam": 0.0}), out=tmp_path / "proto")
    own = evaluation(proto)
    own = own[~own["split"].str.endswith("@prototypes")].reset_index(drop=True)
    pd.testing.assert_frame_equal(own, evaluation(local))
    assert fit_rows(proto)["loss"].tolist() == fit_rows(local)["loss"].tolist()
    local_states, proto_states = (
        client_states(tmp_path / "local"),
        client_states(tmp_path / "proto"),
    )
    assert local_states.keys() == proto_states.keys() and len(local_states) > 1
    for cid, state in proto_states.items():
        assert_same_params(state, local_states[cid])  # the whole model, never sent
    # Uplink: C x d prototypes and C counts in float32; downlink: C x d prototypes and a
    # C-entry boolean mask. No model entry ever crosses.
    fits = fit_rows(proto)
    assert (fits["bytes_up"] == (CLASSES * WIDTH + CLASSES) * 4).all()
    assert (fits["bytes_down"] == CLASSES * WIDTH * 4 + CLASSES).all()
    assert set(proto.server.params) == set()


def test_fedproto_regularises_towards_the_global_prototypes() -> None:
    everyone = {"fraction": 1.0}
    local = plural.run(family({"name": "local"}, sampling=everyone))
    proto = plural.run(family({"name": "fedproto"}, sampling=everyone))
    server = fedproto_state(proto.server)
    # Every client reported in round 1, so every digit has a prototype from round 2 on.
    assert server.present.all() and server.prototypes.shape == (CLASSES, WIDTH)
    assert torch.isfinite(server.prototypes).all()
    assert (server.prototypes >= 0).all()  # the representation ends in a ReLU
    assert proto.summary["fedproto"] == {"classes_with_prototype": CLASSES}
    # Round 1 has no prototype term, so it is Local's round; later rounds differ from Local.
    proto_fits, local_fits = fit_rows(proto), fit_rows(local)
    first = proto_fits["round"] == 1
    assert proto_fits[first]["loss"].tolist() == local_fits[first]["loss"].tolist()
    later = ~first
    assert (proto_fits[later]["loss"] != local_fits[later]["loss"]).all()
    assert not evaluation(proto).equals(evaluation(local))


def test_fedproto_client_sends_the_class_means_of_its_trained_representations() -> None:
    cfg = load_config(family({"name": "fedproto"}))
    federation = build_federation(cfg)
    algorithm = build_algorithm(cfg)
    env = WorkerEnv(
        WorkerSetup(
            federation, build_client_models(cfg, federation, algorithm), cfg.train, cfg.seed
        )
    )
    draw = torch.Generator().manual_seed(0)
    message = PrototypeMessage(
        torch.rand(CLASSES, WIDTH, generator=draw), torch.rand(CLASSES, generator=draw) < 0.5
    )
    for cid in (0, 1, 2):  # one client of each architecture
        work = ClientWork(algorithm, "client_update", cid, 1, message, None)
        update, state, _ = run_client_phase(env, work)
        assert update.params is None and set(update.extra) == {PROTOTYPES_KEY, COUNTS_KEY}
        model = env.trainer_for(cid).model
        model.load_state_dict(state)
        model.eval()
        train = federation.client(cid, 1).train
        with torch.no_grad():
            h = model.body(train.x)
        counts = torch.bincount(train.y, minlength=CLASSES)
        assert update.extra[COUNTS_KEY].tolist() == counts.tolist()
        assert (counts > 0).sum() == 3  # each client holds three digits
        for c in range(CLASSES):
            expected = h[train.y == c].mean(dim=0) if counts[c] else torch.zeros(WIDTH)
            assert torch.allclose(update.extra[PROTOTYPES_KEY][c], expected, atol=1e-6)


def test_fedproto_scores_each_client_by_its_nearest_global_prototype_too(tmp_path: Path) -> None:
    """Rows ``test@prototypes``: the paper's inference, the class whose global prototype is
    nearest to the representation, computed here by hand from the client's model."""
    cfg = family({"name": "fedproto"}, sampling={"fraction": 1.0})
    results = plural.run(cfg, out=tmp_path)
    server = fedproto_state(results.server)
    states = client_states(tmp_path)
    parsed = load_config(cfg)
    federation = build_federation(parsed)
    models = build_client_models(parsed, federation, build_algorithm(parsed))
    rows = results.final("test@prototypes").set_index("client")
    assert set(rows.index) == set(states)
    differs = 0
    for cid, state in states.items():
        model = models.members[models.index_of(cid)]
        model.load_state_dict(state)
        model.eval()
        test = federation.client(cid).test
        with torch.no_grad():
            h = model.body(test.x).double()
            nearest = torch.cdist(h, server.prototypes.double()).argmin(dim=1)
            own = model(test.x).argmax(dim=1)
        expected = (nearest == test.y).double().mean().item()
        assert rows.loc[cid, "accuracy"] == pytest.approx(expected)
        differs += int((nearest != own).any())
    assert differs > 0  # the two rules are not the same classifier


def update(prototypes: list[list[float]], counts: list[float]) -> Update:
    return Update(
        int(sum(counts)),
        extra={PROTOTYPES_KEY: torch.tensor(prototypes), COUNTS_KEY: torch.tensor(counts)},
    )


@pytest.mark.parametrize(
    ("weighting", "class0", "class1"), [("counts", 2.5, 2.5), ("clients", 2.0, 3.0)]
)
def test_fedproto_server_averages_each_class_over_the_clients_that_have_it(
    weighting: str, class0: float, class1: float
) -> None:
    algorithm = FedProto(FedProtoConfig(proto_weighting=weighting))  # type: ignore[arg-type]
    previous = torch.tensor([[9.0, 9.0], [9.0, 9.0], [7.0, -7.0], [5.0, 5.0]])
    present = torch.tensor([False, False, True, False])
    server = ServerState({}).with_parts(FedProtoState(previous, present))
    updates = [
        update([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]], [1, 3, 0, 0]),
        update([[3.0, 3.0], [4.0, 4.0], [0.0, 0.0], [0.0, 0.0]], [3, 1, 0, 0]),
    ]
    new = fedproto_state(algorithm.aggregate(server, updates, np.random.default_rng(0)))
    expected = torch.tensor([[class0, class0], [class1, class1], [7.0, -7.0], [5.0, 5.0]])
    assert torch.allclose(new.prototypes, expected)
    # Classes 2 and 3 were not reported: 2 keeps its prototype, 3 still has none.
    assert new.present.tolist() == [True, True, True, False]
    assert torch.equal(previous, fedproto_state(server).prototypes)  # inputs untouched


def test_fedproto_needs_one_representation_width_for_every_architecture() -> None:
    def shapes(representation: int) -> dict[str, tuple[int, ...]]:
        model = BodyHeadCNN((1, 28, 28), 4, 8, 32, representation, CLASSES)
        return {n: tuple(t.shape) for n, t in model.state_dict().items()}

    def info(*widths: int) -> FederationInfo:
        members = tuple(shapes(w) for w in widths)
        return FederationInfo(4, CLASSES, (1, 28, 28), None, member_shapes=members)

    model = BodyHeadCNN((1, 28, 28), 4, 8, 32, WIDTH, CLASSES)
    params = {n: t.clone() for n, t in model.state_dict().items()}
    algorithm = FedProto(FedProtoConfig())
    state = algorithm.init(params, info(WIDTH, WIDTH), np.random.default_rng(0))
    assert fedproto_state(state).prototypes.shape == (CLASSES, WIDTH)
    with pytest.raises(ConfigError, match="same representation width"):
        algorithm.init(params, info(WIDTH, 2 * WIDTH), np.random.default_rng(0))


# ---- FML -----------------------------------------------------------------------------------

MEME = {"meme_width": 8, "meme_channels": [2, 4]}


def meme_network(cfg: dict[str, Any]) -> torch.nn.Module:
    """The meme exactly as the engine draws it: prepare_model's seed, meme built first."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg["seed"], "prepare-model"))
        return parallel_network(
            (1, 28, 28), CLASSES, MEME["meme_width"], tuple(MEME["meme_channels"])
        )


def strip(params: Params, prefix: str) -> Params:
    return {n.removeprefix(prefix): t for n, t in params.items() if n.startswith(prefix)}


def test_fml_without_distillation_is_local_beside_fedavg_of_the_meme(tmp_path: Path) -> None:
    cfg = family({"name": "fml", "alpha": 1.0, "beta": 1.0, **MEME})
    fml = plural.run(cfg, out=tmp_path / "fml")
    local = plural.run(family({"name": "local"}), out=tmp_path / "local")
    # The local models, and so every evaluation, are Local's.
    pd.testing.assert_frame_equal(evaluation(fml), evaluation(local))
    fml_states, local_states = client_states(tmp_path / "fml"), client_states(tmp_path / "local")
    assert fml_states.keys() == local_states.keys()
    for cid, state in fml_states.items():
        assert not any(n.startswith(ADAPTER_PREFIX) for n in state)  # the meme is not kept
        assert_same_params(strip(state, LOCAL_PREFIX), local_states[cid])
    # The meme is FedAvg run with the meme network as the model.
    reference = {k: v for k, v in cfg.items() if k != "model"}
    reference["algorithm"] = {"name": "fedavg"}
    fedavg = plural.run(reference, model=meme_network(cfg), keep_weights=True)
    assert set(fml.server.params) == {ADAPTER_PREFIX + n for n in fedavg.server.params}
    assert_same_params(strip(fml.server.params, ADAPTER_PREFIX), fedavg.server.params)


def fml_everyone(**settings: Any) -> dict[str, Any]:
    return family({"name": "fml", **MEME, **settings}, sampling={"fraction": 1.0}, rounds=2)


def test_fml_distils_between_the_models_and_sends_only_the_meme() -> None:
    mutual = plural.run(fml_everyone())
    fits = fit_rows(mutual)
    meme_bytes = nbytes(meme_network(TINY_FAMILY).state_dict())
    assert set(fits["client"]) == set(range(6))  # clients of all three architectures trained
    assert (fits["bytes_up"] == meme_bytes).all() and (fits["bytes_down"] == meme_bytes).all()
    assert nbytes(mutual.server.params) == meme_bytes
    assert all(n.startswith(ADAPTER_PREFIX) for n in mutual.server.params)
    # Mutual distillation changes both models against training them apart.
    apart = plural.run(fml_everyone(alpha=1.0, beta=1.0))
    assert max_abs_difference(mutual.server.params, apart.server.params) > 0
    assert not evaluation(mutual).equals(evaluation(apart))


def test_fml_process_backend_equals_sequential_on_a_model_family() -> None:
    cfg = fml_everyone()
    sequential = plural.run(cfg)
    parallel = plural.run(cfg, overrides=["backend.name=process", "backend.workers=2"])
    pd.testing.assert_frame_equal(
        deterministic(sequential.metrics), deterministic(parallel.metrics)
    )
    assert_same_params(sequential.server.params, parallel.server.params)


# ---- configuration -------------------------------------------------------------------------


def test_single_model_methods_reject_a_model_family_and_name_the_alternatives() -> None:
    with pytest.raises(ConfigError, match="3 architectures") as error:
        plural.run(family({"name": "fedavg"}))
    able = str(error.value).rpartition("federations: ")[2]
    assert {"fedproto", "fml", "local", "lg_fedavg"} <= set(able.split(" (")[0].split(", "))


def test_gradient_diagnostics_need_one_architecture() -> None:
    cfg = family({"name": "local"}, diagnostics={"gradient_every": 1})
    with pytest.raises(ConfigError, match="gradient_every"):
        plural.run(cfg)
    cfg["model"]["assignment"] = [1]  # one architecture for all: a plain model again
    assert plural.run(cfg).diagnostics["g2"].notna().all()
