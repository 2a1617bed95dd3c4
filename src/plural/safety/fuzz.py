"""A seeded fuzzer for plural's inputs: random mutations of the example configs and random
corruptions of data files, checkpoints and run records.

Every case must end in a result or a clean error (``plural: error: ...``, a ConfigError,
DataError, ...); a Python traceback, a hang (each case runs under a time cap) or a run that
exits 0 with a non-finite metric is a failure. ``tests/test_fuzz.py`` runs a few hundred
cases per CI run; ``benchmarks/reliability.py`` runs a larger campaign and prints the counts.
A hand-written generator rather than Hypothesis: the cases are whole files and command lines
whose mutations are picked from plural's own hostile-value tables, and the counts per
category are the report, which Hypothesis's shrinking search does not give.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import signal
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from plural.config import ConfigError
from plural.data.datasets import DataError, DatasetUnavailable
from plural.safety.numerics import DivergedError

CLEAN_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    DatasetUnavailable,
    DivergedError,
)
HOSTILE_VALUES: list[Any] = [
    -1, 0, 1, 2, -(10**12), 10**12, 10**9, 0.5, -0.5, 1e30, -1e30, 1e-30, 1e308,
    float("nan"), float("inf"), float("-inf"), "", "x", "ñ²", "os:system", "../../etc/passwd",
    None, True, False, [], {}, [0], [1e9], [[[]]], {"name": "x"}, {"name": ["a"]},
    list(range(200)), "1e3", "*", "&a",
]  # fmt: skip
"""Values a mutation may put anywhere (validation only: some would take hours to run)."""
CHEAP_VALUES: list[Any] = [
    -1, 0, 1, 2, 3, 0.5, 1e-30, float("nan"), float("inf"), "", "x", None, True, [], {},
    [0], [1, 2], {"name": "x"},
]  # fmt: skip
"""Values for mutations that are run for a round: hostile, but never slow or huge."""
TEXT_SNIPPETS = [
    "\t", ": :", "- [", "{", "&a [*a]", "*undefined", "!!python/object:os.system {}",
    "seed: 1\nseed: 2", "x: " + "[" * 80 + "]" * 80, "\x00", "%YAML 9.9", "---\n---",
]  # fmt: skip


class CaseTimeout(BaseException):
    """A case ran past its time cap (a BaseException, so library code cannot swallow it)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one case ended: ``ok``, ``clean`` (a clean error), or a failure: ``traceback``,
    ``hang``, ``nonfinite`` (exit 0 with a non-finite metric)."""

    kind: str
    case: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in ("traceback", "hang", "nonfinite")


@contextlib.contextmanager
def time_cap(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the block after ``seconds`` (main thread, POSIX)."""

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(case: str, action: Callable[[], str | None], seconds: float) -> Outcome:
    """Run ``action`` under a time cap; it returns None for success or a failure detail."""
    try:
        with time_cap(seconds):
            problem = action()
    except CaseTimeout as err:
        return Outcome("hang", case, str(err))
    except CLEAN_ERRORS as err:
        return Outcome("clean", case, str(err)[:300])
    except Exception:  # anything else is a traceback: the failure the fuzzer looks for
        return Outcome("traceback", case, traceback.format_exc()[-2000:])
    return Outcome("nonfinite", case, problem) if problem else Outcome("ok", case)


# ----------------------------------------------------------------------------- configs


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a nested config (mappings and lists), parents included."""
    found = [prefix] if prefix else []
    if isinstance(node, Mapping):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _delete(node: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def mutate(raw: Mapping[str, Any], rng: np.random.Generator, values: list[Any]) -> dict[str, Any]:
    """``raw`` with 1-3 random structural mutations: a value replaced, a key deleted or
    added, a section replaced by a scalar, a component renamed."""
    out = copy.deepcopy(dict(raw))
    for _ in range(int(rng.integers(1, 4))):
        paths = _paths(out)
        if not paths:
            break
        kind = int(rng.choice(5, p=[0.55, 0.1, 0.1, 0.1, 0.15]))
        if kind == 0:  # mostly a setting's value: what validation has to check
            paths = [p for p in paths if not isinstance(_get(out, p), (dict, list))] or paths
        path = paths[int(rng.integers(len(paths)))]
        value = copy.deepcopy(values[int(rng.integers(len(values)))])
        if kind == 0 or (kind == 1 and len(path) == 1 and path[0] in ("dataset", "model")):
            _set(out, path, value)
        elif kind == 1:
            _delete(out, path)
        elif kind == 2:
            parent = out
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict):
                parent[f"extra_{int(rng.integers(100))}"] = value
        elif kind == 3:
            _set(out, path[:1], value)
        else:
            section = out.get(path[0])
            if isinstance(section, dict):
                section["name"] = value if rng.random() < 0.5 else f"{section.get('name')}x"
    return out


def mutate_text(text: str, rng: np.random.Generator) -> bytes:
    """YAML text with a random textual mutation (cut, spliced, doubled, bad bytes)."""
    kind = int(rng.integers(5))
    at = int(rng.integers(len(text) + 1))
    if kind == 0:
        return text[:at].encode()
    if kind == 1:
        snippet = TEXT_SNIPPETS[int(rng.integers(len(TEXT_SNIPPETS)))]
        return (text[:at] + snippet + text[at:]).encode()
    if kind == 2:
        lines = text.splitlines(keepends=True) or [""]
        line = lines[int(rng.integers(len(lines)))]
        return (text + line).encode()
    if kind == 3:
        return (
            text.encode()[:at] + bytes(rng.integers(0, 256, 8, dtype=np.uint8)) + text.encode()[at:]
        )
    depth = int(rng.integers(5, 12))  # an alias bomb appended
    bomb = ["b0: &b0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return (text + "\n" + "\n".join(bomb) + "\n").encode()


def validate(path: Path) -> str | None:
    """What ``plural run`` checks before loading data, as the CLI does (imports restricted)."""
    from plural.experiment import load_config
    from plural.runner import build_algorithm
    from plural.safety.checks import check_config
    from plural.safety.imports import restricted_imports

    with restricted_imports([]):
        cfg = load_config(path)
        algorithm = build_algorithm(cfg)
        algorithm.check(cfg)
        check_config(cfg)
        load_config(cfg.to_dict())  # what a resume or a sweep reads back
    return None


def run_cli(path: Path, out: Path) -> str | None:
    """``plural run`` in this process; a non-finite reported metric after exit 0 is named."""
    from plural.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["run", str(path), "--out", str(out), "--quiet"])
    if code != 0:
        if "plural: error:" in stderr.getvalue():
            raise ConfigError(stderr.getvalue().strip())
        return f"exit {code} without a clean error: {stderr.getvalue()[-500:]}"
    return nonfinite_metric(out / "summary.json")


def nonfinite_metric(summary_path: Path) -> str | None:
    """A description of the first reported mean that is not a finite number, if any."""
    summary = json.loads(summary_path.read_text())
    for split, value in summary.items():
        if isinstance(value, dict) and "accuracy" in value and "loss" in value:
            for metric in ("accuracy", "loss"):
                mean = value[metric].get("mean")
                if mean is None or not math.isfinite(mean):
                    return f"exit 0 but {split} {metric} mean is {mean}"
    return None


def config_cases(
    examples: list[Path],
    tiny: Mapping[str, Any],
    folder: Path,
    rng: np.random.Generator,
    count: int,
    runs: int,
) -> Iterator[tuple[str, Callable[[], str | None]]]:
    """``count`` config cases: ``runs`` of them mutations of ``tiny`` run for a round, the
    rest mutations of the example configs (structural or textual) validated."""
    folder.mkdir(parents=True, exist_ok=True)
    run_at = set(np.linspace(0, count - 1, runs).astype(int).tolist()) if runs else set()
    for index in range(count):
        path = folder / f"case{index}.yaml"
        if index in run_at:
            raw = mutate(tiny, rng, CHEAP_VALUES)
            if rng.random() < 0.2:  # and some runs that diverge or meet a hostile setting
                raw = {**raw, "train": {**_mapping(raw.get("train")), "lr": 1e30}}
            path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
            out = folder / f"run{index}"
            yield f"run {raw}", lambda path=path, out=out: run_cli(path, out)
            continue
        example = examples[int(rng.integers(len(examples)))]
        if rng.random() < 0.25:
            path.write_bytes(mutate_text(example.read_text(), rng))
            label = f"text mutation of {example.name}"
        else:
            raw = mutate(yaml.safe_load(example.read_text()), rng, HOSTILE_VALUES)
            path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
            label = f"{example.name}: {raw}"
        yield label[:400], lambda path=path: validate(path)


# ----------------------------------------------------------------------------- files


def corrupt_bytes(good: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """A random corruption of a file's bytes and its name."""
    kind = int(rng.integers(6))
    at = int(rng.integers(max(len(good), 1)))
    if kind == 0:
        return "empty", b""
    if kind == 1:
        return f"truncated at {at}", good[:at]
    if kind == 2:
        flipped = bytearray(good)
        for i in rng.integers(0, max(len(good), 1), int(rng.integers(1, 16))):
            if len(flipped):
                flipped[int(i)] ^= 1 << int(rng.integers(8))
        return "bits flipped", bytes(flipped)
    if kind == 3:
        block = int(rng.integers(1, 512))
        return f"zeroed {block} bytes at {at}", good[:at] + bytes(block) + good[at + block :]
    if kind == 4:
        return "junk appended", good + bytes(rng.integers(0, 256, 64, dtype=np.uint8))
    return "random bytes", bytes(rng.integers(0, 256, max(len(good), 1), dtype=np.uint8))


def _load_dataset(section: Mapping[str, Any]) -> str | None:
    from plural.registry import DATASETS

    entry, settings = DATASETS.parse(dict(section), "dataset")
    dataset = entry.target(settings, np.random.default_rng(0))
    if not np.isfinite(dataset.x).all():
        return "a dataset with non-finite features was accepted"
    return None


def _good_data(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    import pandas as pd

    gen = np.random.default_rng(0)
    x = gen.normal(size=(60, 4)).astype(np.float32)
    y = np.arange(60) % 3
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(label=y)
    files = {
        "npz": folder / "data.npz",
        "csv": folder / "data.csv",
        "parquet": folder / "data.parquet",
    }
    np.savez(files["npz"], x=x, y=y)
    frame.to_csv(files["csv"], index=False)
    frame.to_parquet(files["parquet"], index=False)
    table = {"name": "table", "label_column": "label"}
    return {
        "npz": (files["npz"], {"name": "npz", "path": str(files["npz"])}),
        "csv": (files["csv"], {**table, "path": str(files["csv"])}),
        "parquet": (files["parquet"], {**table, "path": str(files["parquet"])}),
    }


def _read_checkpoint(folder: Path) -> str | None:
    from plural.report.rundir import RunDirectory

    RunDirectory(folder).load_checkpoint()
    return None


def _read_records(path: Path) -> str | None:
    from plural.report.rundir import RunDirectory

    RunDirectory(path.parent).read_records(path)
    return None


def file_cases(
    folder: Path, rng: np.random.Generator, count: int
) -> Iterator[tuple[str, Callable[[], str | None]]]:
    """``count`` corrupted files: data files (npz, CSV, Parquet) loaded as datasets, and
    checkpoints and JSON-lines records read back as a resume does."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    good = _good_data(folder)
    checkpoint = io.BytesIO()
    torch.save({"version": 1, "progress": {"round": 1}, "w": torch.ones(4)}, checkpoint)
    records = b'{"round": 1, "a": 0.5}\n{"round": 2, "a": 0.25}\n'
    for index in range(count):
        case = folder / f"file{index}"
        case.mkdir(exist_ok=True)
        kind = index % 5
        if kind < 3:
            name = ("npz", "csv", "parquet")[kind]
            source, section = good[name]
            target = case / source.name
            how, content = corrupt_bytes(source.read_bytes(), rng)
            target.write_bytes(content)
            yield (
                f"{name} {how}",
                lambda section=section, target=target: _load_dataset(
                    {**section, "path": str(target)}
                ),
            )
        elif kind == 3:
            how, content = corrupt_bytes(checkpoint.getvalue(), rng)
            (case / "checkpoint.pt").write_bytes(content)
            yield f"checkpoint.pt {how}", lambda case=case: _read_checkpoint(case)
        else:
            how, content = corrupt_bytes(records, rng)
            (case / "timeline.jsonl").write_bytes(content)
            yield (
                f"timeline.jsonl {how}",
                lambda path=case / "timeline.jsonl": _read_records(path),
            )


def summarize(outcomes: list[Outcome]) -> dict[str, int]:
    """Counts by kind."""
    counts = {"tried": len(outcomes)}
    for kind in ("ok", "clean", "traceback", "hang", "nonfinite"):
        counts[kind] = sum(o.kind == kind for o in outcomes)
    return counts


TINY_CONFIG: dict[str, Any] = {
    "name": "fuzz",
    "seed": 0,
    "rounds": 1,
    "dataset": {"name": "digits"},
    "partition": {"name": "iid", "num_clients": 4},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "fedavg"},
    "train": {"batch_size": 64},
    "eval": {"every": 1},
    "backend": {"threads_per_worker": 1},
}
"""The config whose mutations are run for a round (digits, 4 clients, a small MLP)."""


def campaign(
    examples: list[Path],
    folder: Path,
    *,
    seed: int,
    configs: int,
    runs: int,
    files: int,
    seconds: float = 60.0,
) -> list[Outcome]:
    """Run ``configs`` config cases (``runs`` of them for a round) and ``files`` file cases."""
    rng = np.random.default_rng(seed)
    cases = list(config_cases(examples, TINY_CONFIG, folder / "configs", rng, configs, runs))
    cases += list(file_cases(folder / "files", rng, files))
    return [run_case(label, action, seconds) for label, action in cases]


def main(argv: list[str] | None = None) -> int:
    """``python -m plural.safety.fuzz``: run a campaign, print its counts (and failures) as
    JSON; run it with a memory limit (``resource.RLIMIT_AS``) and a working folder to spare."""
    import argparse
    import os
    import warnings

    import torch

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("examples", type=Path, help="folder of example configs")
    parser.add_argument("folder", type=Path, help="scratch folder for the cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--files", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the cases warn on purpose
    args.folder.mkdir(parents=True, exist_ok=True)
    os.chdir(args.folder)  # relative paths a mutation writes land in the scratch folder
    examples = sorted(args.examples.resolve().glob("*.yaml"))
    outcomes = campaign(
        examples,
        args.folder.resolve(),
        seed=args.seed,
        configs=args.configs,
        runs=args.runs,
        files=args.files,
    )
    report = {
        "seed": args.seed,
        "configs": summarize(outcomes[: args.configs]),
        "files": summarize(outcomes[args.configs :]),
        "failures": [dataclasses.asdict(o) for o in outcomes if o.failed],
    }
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
