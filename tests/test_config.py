"""Config validation: every mistake stops a run before any training, naming key and remedy."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import plural
from plural.config import ConfigError
from plural.experiment import TOP_LEVEL_KEYS, apply_overrides, load_config
from plural.registry import ALGORITHMS, DATASETS, MODELS, PARTITIONERS
from plural.runner import assembly, session

BASE: dict[str, Any] = {
    "name": "cfg",
    "seed": 1,
    "rounds": 1,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 3},
    "model": {"name": "logreg"},
    "algorithm": {"name": "fedavg"},
    "backend": {"threads_per_worker": 1},
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load data, build the model or start workers fails the test."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the run went past config validation")

    monkeypatch.setattr(session, "build_federation", forbidden)
    monkeypatch.setattr(assembly, "build_model", forbidden)
    monkeypatch.setattr(session, "make_backend", forbidden)


def run_error(overrides: list[str], tmp_path: Path, raw: dict[str, Any] | None = None) -> str:
    """The ConfigError message of a run; checks that no run directory was created."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        plural.run(base() if raw is None else raw, overrides=overrides, out=out)
    assert not out.exists()
    return str(info.value)


# --------------------------------------------------------------------------- bad settings

BAD_SETTINGS = [
    # unknown keys, with a close-match suggestion and the allowed names
    (["round=2"], ["round:", "unknown setting", "Did you mean 'rounds'?"]),
    (["train.lrr=0.1"], ["train.lrr", "unknown setting", "Did you mean 'lr'?", "batch_size"]),
    (["dataset.standardise=true"], ["dataset.standardise", "Did you mean 'standardize'?"]),
    (["model={name: mlp, hiden: [8]}"], ["model.hiden", "Did you mean 'hidden'?", "dropout"]),
    # wrong types
    (["train.lr=fast"], ["train.lr", "expected a number", "'fast'"]),
    (["rounds=1.5"], ["rounds", "expected an integer", "1.5"]),
    (["rounds=true"], ["rounds", "expected an integer", "True"]),
    (["train.batch_size=false"], ["train.batch_size", "expected an integer", "False"]),
    (["rounds='3'"], ["rounds", "expected an integer", "'3'"]),
    (["name=3"], ["name", "expected a string"]),
    (["train=3"], ["train", "expected a mapping"]),
    (["eval.splits=val"], ["eval.splits", "expected a list"]),
    (["dataset.standardize=1"], ["dataset.standardize", "expected true or false"]),
    (["train.local_steps=1.5"], ["train.local_steps", "int | null", "1.5"]),
    # choices
    (["eval.splits=[val, bogus]"], ["eval.splits[1]", "'train', 'val', 'test'", "'bogus'"]),
    (["backend.name=threads"], ["backend.name", "'sequential', 'vectorized', 'process'", "'ray'"]),
    (["algorithm.weighting=equal"], ["algorithm.weighting", "'samples', 'uniform', 'capped'"]),
    # out of range
    (["train.lr=0"], ["train.lr", "must be > 0"]),
    (["train.lr=-0.1"], ["train.lr", "must be > 0"]),
    (["train.momentum=1"], ["train.momentum", "must be < 1"]),
    (["rounds=0"], ["rounds", "must be >= 1"]),
    (["seed=-1"], ["seed", "must be >= 0"]),
    (["split.val=1.2"], ["split.val", "must be < 1", "1.2"]),
    (["split.test=-0.1"], ["split.test", "must be >= 0"]),
    (["split.val=0.5", "split.test=0.5"], ["split", "val + test must be < 1"]),
    (["split.val=0.7", "split.test=0.4"], ["split", "val + test must be < 1"]),
    (["sampling.fraction=0"], ["sampling.fraction", "must be > 0"]),
    (["sampling.fraction=1.5"], ["sampling.fraction", "must be <= 1"]),
    (["sampling.count=0"], ["sampling.count", "must be >= 1"]),
    (["sampling.fraction=0.5", "sampling.count=2"], ["sampling", "either fraction or count"]),
    (["partition.num_clients=0"], ["partition.num_clients", "must be >= 1"]),
    (["model={name: mlp, hidden: [8, 0]}"], ["model.hidden[1]", "must be >= 1"]),
    # sections that are not {name: ...}
    (["model=[mlp]"], ["model", "needs a 'name'", "logreg", "mlp"]),
    (["dataset=null"], ["dataset", "needs a 'name'", "digits", "npz"]),
    # a dataset's required settings
    (["dataset={name: npz}"], ["dataset.path", "required setting is missing"]),
    (["dataset={name: table, path: t.csv}"], ["dataset.label_column", "required"]),
    (["dataset={name: table, path: t.txt, label_column: y}"], ["dataset", ".csv", ".parquet"]),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_SETTINGS, ids=lambda v: str(v))
def test_bad_setting_stops_the_run_before_training(
    no_training: None, tmp_path: Path, overrides: list[str], expected: list[str]
) -> None:
    message = run_error(overrides, tmp_path)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_unknown_top_level_key_lists_every_allowed_key(no_training: None, tmp_path: Path) -> None:
    message = run_error(["round=2"], tmp_path)
    allowed = message.split("Allowed:", 1)[1]
    for key in TOP_LEVEL_KEYS:
        assert key in allowed


def test_an_unknown_key_far_from_any_name_gets_no_suggestion(tmp_path: Path) -> None:
    message = run_error(["zzzzzz=1"], tmp_path)
    assert "Did you mean" not in message
    assert "zzzzzz: unknown setting" in message


@pytest.mark.parametrize(
    ("section", "registry", "typo", "suggestion"),
    [
        ("dataset", DATASETS, "digitz", "digits"),
        ("partition", PARTITIONERS, "dirichlett", "dirichlet"),
        ("algorithm", ALGORITHMS, "fedavgg", "fedavg"),
        ("model", MODELS, "mlpp", "mlp"),
    ],
)
def test_unknown_component_name_lists_the_registered_names(
    no_training: None,
    tmp_path: Path,
    section: str,
    registry: Any,
    typo: str,
    suggestion: str,
) -> None:
    message = run_error([f"{section}={{name: {typo}}}"], tmp_path)
    assert message.startswith(f"{section}.name: unknown")
    assert repr(typo) in message
    assert f"Did you mean {suggestion!r}?" in message
    allowed = message.split("Allowed:", 1)[1]
    assert [n.strip() for n in allowed.split(",")] == registry.names()


@pytest.mark.parametrize("section", ["dataset", "partition", "model", "algorithm"])
def test_missing_required_section(no_training: None, tmp_path: Path, section: str) -> None:
    raw = base()
    del raw[section]
    message = run_error([], tmp_path, raw)
    assert message.startswith(f"{section}: required section is missing")


def test_a_valid_config_does_reach_training(tmp_path: Path) -> None:
    """The control for the tests above: the same base config runs."""
    results = plural.run(base(), out=tmp_path / "run")
    assert results.summary["rounds_done"] == 1
    assert (tmp_path / "run" / "summary.json").is_file()


# --------------------------------------------------------------------------- --set overrides


def test_overrides_are_yaml_typed_and_create_nested_sections() -> None:
    raw = {"train": {"lr": 0.1}, "rounds": 2}
    result = apply_overrides(
        raw,
        [
            "rounds=5",
            "train.lr=0.25",
            "train.momentum=0",
            "eval.splits=[val, test]",
            "sampling.count=null",
            "name=my run",
            "model={name: mlp, hidden: [8]}",
            "a.b.c=true",
        ],
    )
    assert result == {
        "train": {"lr": 0.25, "momentum": 0},
        "rounds": 5,
        "eval": {"splits": ["val", "test"]},
        "sampling": {"count": None},
        "name": "my run",
        "model": {"name": "mlp", "hidden": [8]},
        "a": {"b": {"c": True}},
    }
    assert type(result["rounds"]) is int
    assert type(result["train"]["lr"]) is float
    assert raw == {"train": {"lr": 0.1}, "rounds": 2}  # the input is not mutated


def test_override_value_may_contain_equals_signs() -> None:
    assert apply_overrides({}, ["name=a=b"]) == {"name": "a=b"}


def test_overrides_reach_the_validated_config() -> None:
    cfg = load_config(base(), ["train.lr=0.5", "rounds=3", "model={name: mlp, hidden: [8]}"])
    assert cfg.train.lr == 0.5
    assert cfg.rounds == 3
    assert cfg.model.name == "mlp"
    assert cfg.model.settings.hidden == (8,)


def test_a_component_given_by_name_alone_takes_default_settings() -> None:
    cfg = load_config(base(), ["algorithm=ditto", "model=mlp"])
    assert cfg.algorithm == load_config(base(), ["algorithm={name: ditto}"]).algorithm
    assert cfg.model.name == "mlp"
    with pytest.raises(ConfigError, match=r"algorithm\.name: unknown algorithm 'dito'\. Did you"):
        load_config(base(), ["algorithm=dito"])


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("train.lr", "expected key.path=value"),
        ("=3", "expected key.path=value"),
        (" =3", "expected key.path=value"),
        ("rounds.x=3", "'rounds' is a value, not a section"),
    ],
)
def test_bad_override_syntax(no_training: None, tmp_path: Path, item: str, expected: str) -> None:
    message = run_error([item], tmp_path)
    assert message.startswith(f"--set {item!r}")
    assert expected in message


@pytest.mark.parametrize("text", ["1e-3", "5E-4"])
def test_exponent_notation_numbers_are_numbers(text: str, tmp_path: Path) -> None:
    value = float(text)
    assert load_config(base(), [f"train.lr={text}"]).train.lr == value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()) + f"train:\n  lr: {text}\n")
    assert load_config(path).train.lr == value


# --------------------------------------------------------------------------- round trip


def test_to_dict_round_trips_to_an_equal_config() -> None:
    cfg = load_config(
        base(),
        [
            "model={name: mlp, hidden: [8, 4], dropout: 0.1}",
            "train.lr=0.2",
            "sampling.count=2",
            "eval.splits=[test]",
            "partition={name: dirichlet, num_clients: 4, alpha: 0.3}",
        ],
    )
    data = cfg.to_dict()
    assert load_config(data) == cfg
    # through YAML text, as config.yaml stores it: tuples became lists, still equal
    assert load_config(yaml.safe_load(yaml.safe_dump(data))) == cfg
    # every default is filled in
    assert data["train"]["batch_size"] == 32
    assert data["model"] == {"name": "mlp", "hidden": [8, 4], "dropout": 0.1, "batch_norm": False}
    assert data["eval"]["splits"] == ["test"]


def test_load_config_accepts_a_config_and_overrides_it() -> None:
    cfg = load_config(base())
    assert load_config(cfg) is cfg
    changed = load_config(cfg, ["rounds=4"])
    assert changed.rounds == 4
    assert changed == load_config({**base(), "rounds": 4})


def test_different_settings_give_unequal_configs() -> None:
    assert load_config(base()) != load_config(base(), ["train.lr=0.01"])


# --------------------------------------------------------------------------- YAML files


def test_yaml_file_loads_like_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(base()))
    expected = load_config(base(), ["train.lr=0.3"])
    assert load_config(path, ["train.lr=0.3"]) == expected
    assert load_config(str(path), ["train.lr=0.3"]) == expected


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml.* does not exist"):
        load_config(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("dataset: {name: digits\nrounds: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml.* is not valid YAML"):
        load_config(path)


def test_empty_yaml_names_the_first_missing_section(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match=r"^dataset: required section is missing"):
        load_config(path)


def test_yaml_file_errors_stop_run_before_training(no_training: None, tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**base(), "train": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number"):
        plural.run(path, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["- dataset\n- model\n", "just text\n"])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


CLASSIFIER_METHODS = ["fedas", "fedcp", "feddbe", "fedpac", "fedproto", "fedrod", "fml", "gpfl"]


@pytest.mark.parametrize("name", CLASSIFIER_METHODS)
def test_methods_built_on_classes_refuse_a_regression_loss(name: str) -> None:
    from plural.experiment import parse_config
    from plural.runner import build_algorithm

    config = parse_config({**base(), "algorithm": {"name": name}, "train": {"loss": "mse"}})
    with pytest.raises(ConfigError, match=rf"^train\.loss: {name}\b.*needs 'cross_entropy'"):
        build_algorithm(config).check(config)
    fine = parse_config({**base(), "algorithm": {"name": name}})
    build_algorithm(fine).check(fine)  # classification passes
