"""Hostile and mistaken inputs: no file plural did not write is deleted or overwritten, no
config runs code it was not allowed to, two runs never share a directory, and a resume never
writes a round twice."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import plural
from plural.cli import main
from plural.config import ConfigError
from plural.data.datasets import DataError, from_arrays
from plural.data.partitioners import _apportion, _law_sizes
from plural.engine.store import DiskStateStore
from plural.experiment import load_config
from plural.report.rundir import RunDirectory, deterministic
from plural.safety import diskio, runlock
from plural.safety.checks import PluralWarning
from plural.safety.numerics import DivergedError, all_finite, check_scores
from plural.safety.runlock import MARKER, RunDirectoryError, run_lock

TESTS = Path(__file__).parent

CONFIG: dict[str, Any] = {
    "name": "rel",
    "seed": 1,
    "rounds": 2,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 3},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "train": {"batch_size": 64},
    "backend": {"threads_per_worker": 1},
}


def config(**changes: Any) -> dict[str, Any]:
    return {**CONFIG, **changes}


def write_config(path: Path, raw: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump(raw or CONFIG))
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- state_dir


def test_disk_state_dir_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    folder = tmp_path / "states"
    folder.mkdir()
    (folder / "important_model.pt").write_bytes(b"precious")
    disk = config(algorithm={"name": "ditto"}, backend={"state": "disk", "state_dir": str(folder)})
    with pytest.raises(ConfigError, match=r"state_dir.*did not write.*important_model\.pt"):
        plural.run(disk, out=tmp_path / "run")
    assert (folder / "important_model.pt").read_bytes() == b"precious"


def test_two_runs_cannot_share_a_state_dir_and_a_resume_keeps_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "states"
    disk = config(algorithm={"name": "ditto"}, backend={"state": "disk", "state_dir": str(folder)})
    plural.run(disk, out=tmp_path / "a")
    kept = sorted(p.name for p in folder.glob("*.pt"))
    assert len(kept) == 3  # one personal model per client
    with pytest.raises(ConfigError, match="another run"):
        plural.run(disk, out=tmp_path / "b")
    assert sorted(p.name for p in folder.glob("*.pt")) == kept
    more = plural.run({**disk, "rounds": 3}, out=tmp_path / "a", resume=True)
    assert more.summary["rounds_done"] == 3


def test_disk_store_deletes_only_listed_files(tmp_path: Path) -> None:
    store = DiskStateStore(tmp_path / "s", owner="me")
    store.put(0, {"w": 1})
    foreign = tmp_path / "s" / "1.0123456789abcdef.pt"  # looks like a state file
    foreign.write_bytes(b"not mine")
    store.restore({})
    assert foreign.exists() and not any(p.name.startswith("0.") for p in (tmp_path / "s").iterdir())


# ----------------------------------------------------------------------------- --out and lock


def test_out_refuses_a_folder_that_is_not_a_run_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("mine: true\n")
    (out / "notes.txt").write_text("keep")
    code, err = cli(capsys, "run", str(write_config(tmp_path / "c.yaml")), "--out", str(out))
    assert code == 2 and "not a plural run directory" in err and "notes.txt" in err
    assert (out / "config.yaml").read_text() == "mine: true\n"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = cli(capsys, "run", str(tmp_path / "c.yaml"), "--out", str(a_file))
    assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_refuses_a_read_only_folder(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(RunDirectoryError, match="read-only"):
            plural.run(CONFIG, out=out)
    finally:
        out.chmod(0o700)


def test_out_in_a_folder_without_write_permission_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runlock.os, "access", lambda path, mode: False)  # as for non-root
    with pytest.raises(RunDirectoryError, match="read-only"):
        plural.run(CONFIG, out=tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    refused = pytest.raises(RunDirectoryError, match=rf"in use by pid {os.getpid()} on host")
    with run_lock(out), refused:
        plural.run(CONFIG, out=out)
    results = plural.run(CONFIG, out=out)  # released: the run goes ahead
    assert results.summary["complete"]


def test_a_lock_held_by_another_process_is_refused_and_a_dead_ones_taken_over(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    code = (
        "import sys, time; from pathlib import Path; from plural.safety.runlock import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=rf"in use by pid {holder.pid}"):
            plural.run(CONFIG, out=out)
    finally:
        holder.kill()
        holder.wait()
    assert str(holder.pid) in (out / MARKER).read_text()  # its marker stays, stale
    assert plural.run(CONFIG, out=out).summary["complete"]


# ----------------------------------------------------------------------------- imports


def test_a_config_that_imports_code_is_refused_unless_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_config(tmp_path / "c.yaml")
    evil = "model={name: 'os:system', command: 'echo pwned > pwned.txt'}"
    code, err = cli(capsys, "run", str(path), "--set", evil, "--out", str(tmp_path / "r"))
    assert code == 2 and "not allowed" in err and "--allow-import os" in err
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "r").exists()
    tiny = "model={name: 'helpers_models:tiny_net', hidden: 4}"
    code, err = cli(capsys, "run", str(path), "--set", tiny, "--out", str(tmp_path / "r"))
    assert code == 2 and "--allow-import helpers_models" in err
    args = ["run", str(path), "--set", tiny, "--quiet", "--set", "rounds=1"]
    assert main([*args, "--out", str(tmp_path / "a"), "--allow-import", "helpers_models"]) == 0
    assert (
        main([*args, "--out", str(tmp_path / "b"), "--set", "allow_import=[helpers_models]"]) == 0
    )
    err = capsys.readouterr().err
    assert "allows importing code from: helpers_models" in err
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["allow_import"] == ["helpers_models"]


def test_python_callers_import_without_an_allow_list() -> None:
    cfg = load_config(config(model={"name": "helpers_models:tiny_net", "hidden": 3}))
    assert cfg.model.name == "helpers_models:tiny_net" and cfg.allow_import == ()
    with pytest.raises(ConfigError, match="allow_import"):
        load_config(config(allow_import="helpers_models"))


# ----------------------------------------------------------------------------- resume


def test_resume_without_a_checkpoint_starts_afresh_writing_each_round_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    reference = plural.run(CONFIG, out=tmp_path / "ref")
    out = tmp_path / "run"
    plural.run(CONFIG, out=out)
    (out / "checkpoint.pt").unlink()  # as if killed before its first checkpoint
    with (out / "timeline.jsonl").open("a") as handle:
        handle.write('{"round": 3, "wall_')  # and cut short in a write
    path = write_config(tmp_path / "c.yaml")
    code, err = cli(capsys, "run", str(path), "--out", str(out), "--resume", "--quiet")
    assert code == 0 and "no checkpoint" in err and "starting a new run" in err
    timeline = RunDirectory(out).read_timeline()
    assert [r["round"] for r in timeline] == [1, 2]
    assert [r["round"] for r in RunDirectory(out).read_diagnostics()] == [1, 2]
    metrics = pd.read_parquet(out / "metrics.parquet")
    pd.testing.assert_frame_equal(deterministic(metrics), deterministic(reference.metrics))


def test_resume_on_a_new_folder_says_it_starts_a_new_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.yaml")
    code, err = cli(capsys, "run", str(path), "--out", str(tmp_path / "new"), "--resume")
    assert code == 0 and "starting a new run" in err


def test_lowering_rounds_of_a_finished_run_is_refused(tmp_path: Path) -> None:
    plural.run(CONFIG, out=tmp_path)
    with pytest.raises(ConfigError, match=r"rounds = 1, but .* has done 2 rounds"):
        plural.run(config(rounds=1), out=tmp_path, resume=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] and summary["rounds_done"] == 2


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", b"\x80\x04garbage"])
def test_a_damaged_checkpoint_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    plural.run(CONFIG, out=tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(RunDirectoryError, match=r"checkpoint\.pt.*empty or damaged"):
        plural.run(CONFIG, out=tmp_path, resume=True)


def test_a_damaged_jsonl_line_inside_the_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text('{"round": 1}\nnot json\n{"round": 2}\n')
    with pytest.raises(RunDirectoryError, match=r"timeline\.jsonl.*line 2"):
        RunDirectory(tmp_path).read_timeline()
    path.write_text('{"round": 1}\n{"round": 2, "x')  # cut short: the tail is left out
    assert RunDirectory(tmp_path).read_timeline() == [{"round": 1}]


# ----------------------------------------------------------------------------- disk full


def test_disk_full_names_the_file_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plural.run(CONFIG, out=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real = diskio.os.replace

    def full(src: Any, dst: Any) -> None:
        if str(dst).endswith("checkpoint.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(diskio.os, "replace", full)
    with pytest.raises(diskio.WriteError, match=r"no space left on device.*checkpoint\.pt"):
        plural.run(config(rounds=3), out=tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_disk_full_in_torch_save_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(diskio.WriteError, match=r"no space left on device.*checkpoint\.pt"):
        RunDirectory(tmp_path).save_checkpoint({"a": 1})


def test_summary_json_is_strict_json(tmp_path: Path) -> None:
    plural.run(config(eval={"splits": ["test"]}), out=tmp_path)
    text = (tmp_path / "summary.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in summary.json"))
    RunDirectory(tmp_path).write_json(tmp_path / "x.json", {"a": float("nan"), "b": [np.inf]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None]}


def test_round_records_are_strict_json(tmp_path: Path) -> None:
    """diagnostics.jsonl and timeline.jsonl hold null where a number is not finite (an
    infinite epsilon, a NaN statistic), never a bare NaN that strict readers refuse."""
    plural.run(config(eval={"splits": ["test"]}), out=tmp_path)
    directory = RunDirectory(tmp_path)
    record = {
        "round": 9,
        "x": float("nan"),
        "eps": np.float64(np.inf),
        "t": torch.tensor([1.0, np.nan]),
    }
    directory.append_diagnostics(record)
    for name in ("diagnostics.jsonl", "timeline.jsonl"):
        for line in (tmp_path / name).read_text().splitlines():
            json.loads(line, parse_constant=lambda c, file=name: pytest.fail(f"bare {c} in {file}"))
    assert directory.read_diagnostics()[-1] == {
        "round": 9,
        "x": None,
        "eps": None,
        "t": [1.0, None],
    }


# ----------------------------------------------------------------------------- partitioners


@pytest.mark.parametrize("sigma", [50.0, 1000.0, 1e6])
@pytest.mark.parametrize(("clients", "min_samples"), [(5, 1), (40, 10), (200, 2)])
def test_size_laws_end_with_any_sigma_and_keep_min_samples(
    sigma: float, clients: int, min_samples: int
) -> None:
    for seed in range(5):
        rng = np.random.default_rng(seed)
        sizes = _law_sizes("lognormal", clients, 1000, min_samples, rng, sigma=sigma, exponent=1.0)
        assert sizes.sum() == 1000 and sizes.min() >= min_samples


def test_apportion_of_overflowing_weights_ends() -> None:
    rng = np.random.default_rng(0)
    counts = _apportion(np.array([np.inf, 1.0, np.inf]), 7, rng)
    assert counts.sum() == 7 and counts[1] == 0
    counts = _apportion(np.array([1e308, 1e308, 1.0]), 10, rng)
    assert counts.sum() == 10 and counts[2] == 0


@pytest.mark.parametrize(
    "partition",
    [
        {"name": "quantity", "num_clients": 8, "sigma": 1000.0, "min_samples": 5},
        {"name": "dirichlet", "num_clients": 8, "sizes": "lognormal", "sigma": 1000.0},
    ],
)
def test_huge_sigma_partitions_end(partition: dict[str, Any]) -> None:
    results = plural.run(config(partition=partition, rounds=1))
    assert results.summary["clients"] == 8


# ----------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("rounds=[", "not valid YAML"),
        ("name=*a", "not valid YAML"),
        ("seed==", "seed"),
        ("model.hidden.²=3", "not an index"),
        ("algorithm.name=[fedavg]", "algorithm.name: expected a name"),
        ("partition={name: {iid: 1}}", "partition.name: expected a name"),
        ("model.name=[mlp]", "model.name: expected a model name"),
        ("model.hidden=[1000000000]", "model"),
        ("backend.threads_per_worker=1000000", "threads_per_worker"),
    ],
)
def test_bad_overrides_are_config_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, override: str, expected: str
) -> None:
    path = write_config(tmp_path / "c.yaml")
    code, err = cli(capsys, "run", str(path), "--set", override, "--out", str(tmp_path / "r"))
    assert code == 2 and expected in err and "Traceback" not in err


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (bomb(9), "alias bomb"),
        ("a: &a [*a]\n", "recursive"),
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper"),
        ("x: " + "[" * 60 + "]" * 60 + "\n", "nests deeper"),
        ("seed: 1\nseed: 2\n", "'seed' is given twice"),
    ],
    ids=["alias-bomb", "recursive", "very-deep", "deep", "duplicate-key"],
)
def test_hostile_yaml_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_yaml_merge_keys_still_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    base = yaml.safe_dump(CONFIG)
    path.write_text(base + "train: &t {lr: 0.1, batch_size: 8}\n".replace("train", "defaults"))
    raw = "base: &b {lr: 0.1, batch_size: 8}\n"
    assert load_config(config(train={"lr": 0.2})).train.lr == 0.2
    from plural.experiment import load_yaml

    assert load_yaml(raw + "t: {<<: *b, lr: 0.5}\n")["t"] == {"lr": 0.5, "batch_size": 8}


def test_a_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# ----------------------------------------------------------------------------- divergence


def test_divergence_stops_the_run_naming_round_and_clients(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.yaml")
    out = tmp_path / "r"
    code, err = cli(capsys, "run", str(path), "--set", "train.lr=1e30", "--out", str(out))
    assert code == 2 and "diverged in round 1" in err and "client(s) 0, 1, 2" in err
    assert "Traceback" not in err and not (out / "summary.json").exists()
    with pytest.raises(DivergedError, match="round 1"):
        plural.run(config(algorithm={"name": "qfedavg", "q": 1000.0}))


@pytest.mark.parametrize("name", ["fedavg", "ditto", "pfedlia"])
def test_divergence_stops_every_kind_of_algorithm(name: str) -> None:
    algorithm = {"name": name, **({"warmup_rounds": 1} if name == "pfedlia" else {})}
    with pytest.raises(DivergedError, match="diverged"):
        plural.run(config(algorithm=algorithm, train={"lr": 1e30, "batch_size": 64}))


def test_dropped_updates_leave_the_model_as_it_was_and_are_recorded(tmp_path: Path) -> None:
    train = {"lr": 1e30, "batch_size": 64, "on_nonfinite": "drop"}
    results = plural.run(config(train=train), out=tmp_path)
    records = RunDirectory(tmp_path).read_diagnostics()
    assert [r["dropped_nonfinite"] for r in records] == [[0, 1, 2], [0, 1, 2]]
    fresh = plural.run(config(rounds=1, train={"lr": 1e-30, "batch_size": 64}))
    for name, value in results.server.params.items():  # no step taken: the initial model
        assert np.allclose(value.numpy(), fresh.server.params[name].numpy())
    accuracy = results.summary["test"]["accuracy"]["mean"]
    assert np.isfinite(accuracy)


def test_finiteness_is_exact_where_a_norm_overflows() -> None:
    huge = torch.full((10,), 3e38)  # finite entries, an infinite float32 norm
    assert all_finite({"w": huge, "b": torch.ones(3), "count": torch.tensor([1, 2])})
    assert all_finite({"half": torch.full((4,), 6e4, dtype=torch.float16), "empty": torch.zeros(0)})
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not all_finite({"w": torch.tensor([1.0, bad]), "b": torch.ones(3)})
        assert not all_finite([torch.ones(2), bad])  # a float beside the tensors
    assert not all_finite({"w": torch.tensor([float("inf")], dtype=torch.bfloat16)})


def test_non_finite_scores_are_never_reported() -> None:
    rows = [{"client": 3, "split": "test", "samples": 5, "loss": float("nan")}]
    with pytest.raises(DivergedError, match=r"client.*3.*not scored"):
        check_scores(rows, 4, 0.1)
    check_scores([{**rows[0], "samples": 0}], 4, 0.1)  # an empty split has no loss: fine


# ----------------------------------------------------------------------------- meaningless runs


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"eval": {"splits": []}}, "nothing would be scored"),
        ({"split": {"val": 0.1, "test": 0.0}}, "split.test = 0"),
        ({"eval": {"splits": ["val"]}, "split": {"val": 0.0, "test": 0.2}}, "nothing would be"),
        ({"partition": {"name": "iid", "num_clients": 1797}}, "fewer than 2 training"),
        ({"train": {"loss": "mse"}}, "'mse' is for regression"),
    ],
)
def test_runs_that_would_measure_nothing_are_refused(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        plural.run(config(**changes), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_no_local_training_is_a_warning() -> None:
    with pytest.warns(PluralWarning, match="local_epochs = 0"):
        plural.run(config(rounds=1, train={"local_epochs": 0}))


def test_small_clients_are_a_warning() -> None:
    with pytest.warns(PluralWarning, match="too small to have val samples"):
        plural.run(config(rounds=1, partition={"name": "iid", "num_clients": 400}))


def test_a_model_without_trainable_parameters_is_refused() -> None:
    model = torch.nn.Linear(64, 10)
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        plural.run(config(model={"name": "python"}), model=model)


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (np.ones((4, 2), np.complex64), [0, 1, 0, 1], "complex"),
        (np.ones((4, 0)), [0, 1, 0, 1], "no features"),
        (np.ones((0, 3)), [], "no samples"),
        (np.ones((4, 2)), [0.5, 1.25, 2.0, 3.5], "continuous"),
        (np.ones((4, 2)), [0.0, 1.0, np.inf, 1.0], "infinite"),
        (np.ones((4, 2)), [0, 1, 10**9, 1], "class ids must be"),
    ],
)
def test_arrays_that_are_not_a_classification_dataset_are_data_errors(
    x: Any, y: Any, expected: str
) -> None:
    with pytest.raises(DataError, match=expected):
        from_arrays(x, np.asarray(y))


def good_table() -> pd.DataFrame:
    gen = np.random.default_rng(0)
    return pd.DataFrame({"a": gen.normal(size=40), "b": gen.normal(size=40), "y": [0, 1] * 20})


def corruptions(path: Path, good: bytes) -> list[tuple[str, bytes]]:
    flipped = bytearray(good)
    for i in range(len(flipped) // 3, len(flipped), max(len(flipped) // 17, 1)):
        flipped[i] ^= 0xFF
    return [
        ("empty", b""),
        ("truncated", good[: len(good) // 2]),
        ("bit-flipped", bytes(flipped)),
        ("garbage", b"\x00\xff" * 64),
    ]


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet"])
def test_damaged_data_files_are_data_errors_naming_the_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, x=good_table()[["a", "b"]].to_numpy(), y=good_table()["y"].to_numpy())
        dataset = {"name": "npz", "path": str(path)}
    elif suffix == ".csv":
        good_table().to_csv(path, index=False)
        dataset = {"name": "table", "path": str(path), "label_column": "y"}
    else:
        good_table().to_parquet(path, index=False)
        dataset = {"name": "table", "path": str(path), "label_column": "y"}
    good = path.read_bytes()
    for label, content in corruptions(path, good):
        path.write_bytes(content)
        try:
            plural.run(config(dataset=dataset, rounds=1))
        except (DataError, ConfigError) as err:
            assert path.name in str(err), (label, str(err))


def test_an_npy_named_npz_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with path.open("wb") as handle:
        np.save(handle, np.ones((4, 2)))
    with pytest.raises(DataError, match=r"single \.npy array"):
        plural.run(config(dataset={"name": "npz", "path": str(path)}, rounds=1))


# ----------------------------------------------------------------------------- sweeps


def test_sweep_seeds_are_bounded_and_grid_names_must_be_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.yaml")
    out = str(tmp_path / "sweep")
    code, err = cli(capsys, "sweep", str(path), "--seeds", "0-1000000000", "--out", out)
    assert code == 2 and "more than 10000 seeds" in err
    code, err = cli(capsys, "sweep", str(path), "--grid", "algorithm=[fedavg],ditto", "--out", out)
    assert code == 2 and "algorithm" in err and "Traceback" not in err
    evil = "model={name: 'os:system', command: 'touch pwned'}"
    code, err = cli(capsys, "sweep", str(path), "--grid", evil, "--out", out)
    assert code == 2 and "not allowed" in err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_of_zero_rows_is_an_error_naming_the_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    frame = good_table().iloc[:0]
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    dataset = {"name": "table", "path": str(path), "label_column": "y"}
    with pytest.raises(DataError, match=rf"{path.name}.*no samples"):
        plural.run(config(dataset=dataset, rounds=1))


def test_a_damaged_metrics_file_on_resume_is_an_error_naming_it(tmp_path: Path) -> None:
    plural.run(config(rounds=1), out=tmp_path)
    part = tmp_path / "metrics" / "round_000001.parquet"
    part.write_bytes(part.read_bytes()[:40])
    with pytest.raises(RunDirectoryError, match=r"round_000001\.parquet.*damaged"):
        plural.run(config(rounds=2), out=tmp_path, resume=True)
