"""plural on one GPU: vectorized against sequential clients, the FedAvg speed workload, and
pFedLoRA on the full-size five-CNN family, in one short script with a time budget.

Sections (``--sections`` picks some; each writes its figures as soon as it has them):

* ``throughput``: clients per second of local training, and of whole engine rounds (training
  and evaluation of every client's test split), for the ``vectorized`` backend
  (``vectorize: always``) against the ``sequential`` backend on the same device (one client
  after another), at ``--clients`` (100 and 1,000) clients of Fashion-MNIST (IID, a few
  samples each), for three models: a small MLP, LeNet, and the FedAvg CNN with only its head
  trained (FedRep with ``body_epochs: 0``: the personal classifier fitted, the body frozen).
  Each run is 1 warm-up round, ``--measured-rounds`` training rounds and one last round that
  trains and evaluates: training = median of the measured rounds; engine round = the last
  round; evaluation = the difference. Both backends must end with the same server
  parameters (max |difference| is recorded).
* ``fedavg``: the FedAvg job of ``benchmarks/flower_compare.py`` (LeNet, 20k Fashion-MNIST
  images, 10 Dirichlet(0.5) clients, 3 rounds) through plural's sequential and vectorized
  backends on the device, and through Flower when ``flwr`` imports (skipped otherwise;
  Flower's clients train on the CPU there, as in that script).
* ``pfedlora``: ``examples/fmnist_pfedlora.yaml`` (Yi et al.'s settings: 20 clients with
  2 classes each, the full-size five CNNs, iterative schedule) for Standalone, LG-FedAvg,
  FedProto, FML and pFedLoRA (LoRA and parallel adapters): accuracy, bytes and training
  FLOPs, and the cost to reach ``--target`` mean accuracy beside the paper's claims.

Every run gets a callback that stops it after the round in which its section's time ran
out, so a section ends early with partial figures instead of being killed. During each run
``nvidia-smi`` is sampled in the background (utilisation and memory), and the peak memory
torch allocated is read.

Usage (from the repository root)::

    python benchmarks/gpu.py --device cuda --out OUT --fmnist-dir DIR   # about 6-7 minutes
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu        # smoke run on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import itertools
import json
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pfedlora
import torch
import yaml
from common import RoundClock, machine_info
from flower_compare import make_config, phases, run_flower, run_plural

import plural
from plural.core.params import max_abs_difference
from plural.data.datasets import FASHION_FILES
from plural.report.efficiency import cost_ratios, cost_to_target

ROOT = Path(__file__).resolve().parent.parent
PFEDLORA_EXAMPLE = ROOT / "examples" / "fmnist_pfedlora.yaml"
SECTIONS = ("throughput", "fedavg", "pfedlora")
BACKENDS = ("sequential", "vectorized")
SHARES = {"throughput": 0.35, "fedavg": 0.08, "pfedlora": 0.57}
"""Each section's share of the time left when it starts (renormalised over what is left)."""

THROUGHPUT_MODELS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "mlp64": ({"name": "mlp", "hidden": [64]}, {"name": "fedavg"}),
    "lenet": ({"name": "lenet"}, {"name": "fedavg"}),
    "cnn_head_only": (
        {"name": "cnn"},
        {"name": "fedrep", "personal": ["@last"], "head_epochs": 1, "body_epochs": 0},
    ),
}
"""Throughput workloads: label -> (model, algorithm)."""

PAPER_CLAIMS = {"communication_x": 7.41, "computation_x": 11.81}
"""pFedLoRA (Yi et al. 2023, arXiv 2310.13283): times less than the best baseline."""
REFERENCE = "pFedLoRA (LoRA)"


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="'cuda', 'cuda:N' or 'cpu'")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json, gpu.md")
    parser.add_argument(
        "--fmnist-dir",
        type=Path,
        default=Path("/usr/share/datasets/fashion-mnist"),
        help="folder with Fashion-MNIST's four IDX .gz files (dataset.data_dir)",
    )
    parser.add_argument("--budget-seconds", type=float, default=360.0)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--clients", nargs="+", type=int, default=None, help="default 100 1000")
    parser.add_argument("--samples-per-client", type=int, default=None, help="default 40")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--measured-rounds", type=int, default=2)
    parser.add_argument(
        "--max-batch-clients", type=int, default=None, help="vectorized backend (plural's default)"
    )
    parser.add_argument("--models", nargs="+", choices=tuple(THROUGHPUT_MODELS), default=None)
    parser.add_argument("--fedavg-rounds", type=int, default=None, help="default 3")
    parser.add_argument("--pfedlora-rounds", type=int, default=None, help="default 20")
    parser.add_argument("--pfedlora-max-samples", type=int, default=None, help="default 12000")
    parser.add_argument("--pfedlora-eval-every", type=int, default=1)
    parser.add_argument(
        "--pfedlora-backend", choices=("sequential", "vectorized"), default="sequential"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=tuple(pfedlora.METHODS), default=list(pfedlora.METHODS)
    )
    parser.add_argument("--target", type=float, default=0.85, help="mean test accuracy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "clients": [4, 8] if quick else [100, 1000],
        "samples_per_client": 20 if quick else 40,
        "fedavg_rounds": 3,
        "pfedlora_rounds": 2 if quick else 20,
        "pfedlora_max_samples": 600 if quick else None,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = args.models or list(THROUGHPUT_MODELS)
    if args.measured_rounds < 1 or args.fedavg_rounds < 3 or args.pfedlora_rounds < 1:
        parser.error("--measured-rounds, --pfedlora-rounds must be >= 1, --fedavg-rounds >= 3")
    if args.samples_per_client < 5 or min(args.clients) < 1 or args.budget_seconds <= 0:
        parser.error("--samples-per-client must be >= 5, --clients and --budget-seconds > 0")
    return args


def check_device(name: str) -> torch.device:
    """The device, or SystemExit with what this machine offers when it is absent."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); use --device cpu for a smoke run"
            )
        if (device.index or 0) >= torch.cuda.device_count():
            raise SystemExit(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type != "cpu":
        raise SystemExit(f"--device {name}: allowed 'cuda', 'cuda:N' or 'cpu'")
    return device


def check_fmnist(folder: Path) -> None:
    """Fail before any work when Fashion-MNIST's files are not in ``folder``."""
    missing = [f for f in FASHION_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise SystemExit(f"--fmnist-dir {folder}: missing {', '.join(missing)}")


# --------------------------------------------------------------------------- the device


def device_info(device: torch.device) -> dict[str, Any]:
    """Device name, torch, CUDA and cuDNN versions, driver and memory (nvidia-smi)."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            total_memory_gb=props.total_memory / 1024**3,
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            nvidia_smi=nvidia_smi_query("name,driver_version,memory.total"),
        )
    return info


def nvidia_smi_query(fields: str) -> str | None:
    """One ``nvidia-smi --query-gpu`` line, or None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout.strip() or done.stderr.strip()


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every ``interval_ms`` in a background thread,
    from ``start`` to ``stop``; does nothing on a CPU or without nvidia-smi."""

    def __init__(self, device: torch.device, interval_ms: int = 200) -> None:
        self.enabled = device.type == "cuda" and shutil.which("nvidia-smi") is not None
        self.index = device.index or 0
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float]] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        self._process = subprocess.Popen(
            [
                "nvidia-smi",
                f"--id={self.index}",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                f"--loop-ms={self.interval_ms}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            parts = [p.strip() for p in line.split(",")]
            with contextlib.suppress(ValueError, IndexError):
                self.samples.append((float(parts[0]), float(parts[1])))

    def stop(self) -> dict[str, Any]:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if not self.samples:
            return {}
        utilisation = [u for u, _ in self.samples]
        return {
            "gpu_util_mean_pct": statistics.fmean(utilisation),
            "gpu_util_max_pct": max(utilisation),
            "gpu_mem_used_max_mb": max(m for _, m in self.samples),
            "gpu_samples": len(self.samples),
        }


@contextlib.contextmanager
def measured(device: torch.device, figures: dict[str, Any]) -> Iterator[None]:
    """Sample the GPU and record torch's peak allocated memory into ``figures``."""
    sampler = GpuSampler(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sampler.start()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            figures["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 1024**2
        figures.update(sampler.stop())


def fair_share(deadline: float, parts_left: int) -> float:
    """When the next of ``parts_left`` equal parts must end for all to fit by ``deadline``."""
    now = time.perf_counter()
    return now + max(deadline - now, 0.0) / parts_left


class Deadline:
    """A plural callback that stops the run after the round in which ``at`` passed; the
    device is synchronised first, so round ends stamped after it are true ends."""

    def __init__(self, at: float, device: torch.device) -> None:
        self.at = at
        self.device = device
        self.stopped = False

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stopped = time.perf_counter() > self.at
        return self.stopped


class SyncedClock(RoundClock):
    """common.RoundClock, after waiting for the device's queued work."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def on_round_end(self, round_index: int, summary: dict[str, Any]) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return super().on_round_end(round_index, summary)


# --------------------------------------------------------------------------- throughput


def throughput_config(
    args: argparse.Namespace, label: str, clients: int, backend: str, rounds: int
) -> dict[str, Any]:
    model, algorithm = THROUGHPUT_MODELS[label]
    return {
        "name": f"gpu-{label}-{clients}-{backend}",
        "seed": args.seed,
        "rounds": rounds,
        "dataset": {
            "name": "fashion_mnist",
            "data_dir": str(args.fmnist_dir),
            "max_samples": clients * args.samples_per_client,
        },
        "partition": {"name": "iid", "num_clients": clients},
        "split": {"val": 0.0, "test": 0.2},
        "model": model,
        "algorithm": algorithm,
        "train": {"lr": 0.05, "batch_size": args.batch_size, "local_epochs": 1},
        "eval": {"every": rounds, "splits": ["test"]},
        "backend": backend_section(backend, args.device, args.max_batch_clients),
    }


def backend_section(
    backend: str, device: str, max_batch_clients: int | None = None
) -> dict[str, Any]:
    section: dict[str, Any] = {"name": backend, "device": device, "threads_per_worker": 1}
    if backend == "vectorized":
        section["vectorize"] = "always"
        if max_batch_clients:
            section["max_batch_clients"] = max_batch_clients
    return section


VECTORIZED_BACKENDS: list[Any] = []
"""Every VectorizedBackend built in this process, newest last (see ``watch_vectorized``)."""


def watch_vectorized() -> None:
    """Keep each VectorizedBackend that plural builds, to read how many fits it batched
    (``FitStats``), which plural's results do not report."""
    try:
        from plural.engine.vectorized import VectorizedBackend
    except ImportError as error:  # greenlet, which the vectorized backend needs
        raise SystemExit(
            f"the vectorized backend does not import ({error}); put greenlet on PYTHONPATH "
            "(benchmarks/gpu_run.sh unpacks its wheel from .whl/)"
        ) from error

    original = VectorizedBackend.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        VECTORIZED_BACKENDS.append(self)

    VectorizedBackend.__init__ = init  # type: ignore[method-assign]


def fit_stats(config: dict[str, Any]) -> dict[str, Any]:
    """How the last vectorized run's fits ran (batched or alone); {} for other backends."""
    if config["backend"]["name"] != "vectorized" or not VECTORIZED_BACKENDS:
        return {}
    return {"fits": dataclasses.asdict(VECTORIZED_BACKENDS[-1].stats)}


def throughput_run(
    args: argparse.Namespace, device: torch.device, config: dict[str, Any], deadline: float
) -> tuple[dict[str, Any], plural.Results]:
    """One timed run: seconds of its training rounds and of its last (evaluating) round."""
    clock, stop = SyncedClock(device), Deadline(deadline, device)
    figures: dict[str, Any] = {}
    with measured(device, figures):
        started = time.perf_counter()
        results = plural.run(config, out=None, progress=False, callbacks=[clock, stop])
    rounds = [b - a for a, b in itertools.pairwise([started, *clock.ends])]
    clients = config["partition"]["num_clients"]
    finished = len(rounds) == config["rounds"]
    training = rounds[1:-1] if finished else rounds[1:]
    figures.update(rounds_done=len(rounds), stopped_early=not finished, round_s=rounds)
    figures.update(fit_stats(config))
    if training:
        train_s = statistics.median(training)
        figures.update(train_round_s=train_s, train_clients_per_s=clients / train_s)
    if finished:
        figures.update(
            engine_round_s=rounds[-1],
            engine_clients_per_s=clients / rounds[-1],
            eval_s=rounds[-1] - figures.get("train_round_s", float("nan")),
            test_accuracy=float(results.summary["test"]["accuracy"]["mean"]),
        )
    return figures, results


def warm_up(args: argparse.Namespace, device: torch.device) -> float:
    """One small run of each backend and model, so CUDA's start-up is charged to no cell."""
    started = time.perf_counter()
    for label, backend in itertools.product(args.models, ("sequential", "vectorized")):
        config = throughput_config(args, label, 4, backend, 2)
        plural.run(config, out=None, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def throughput(args: argparse.Namespace, device: torch.device, out: dict, deadline: float) -> None:
    section: dict[str, Any] = out.setdefault("throughput", {})
    section["warm_up_s"] = warm_up(args, device)
    rounds = 2 + args.measured_rounds
    for i, label in enumerate(args.models):
        model_deadline = fair_share(deadline, len(args.models) - i)
        for j, clients in enumerate(args.clients):
            cell_deadline = fair_share(model_deadline, len(args.clients) - j)
            section[f"{label}/{clients}"] = throughput_cell(
                args, device, label, clients, rounds, cell_deadline
            )
            write(args, out)


def throughput_cell(
    args: argparse.Namespace,
    device: torch.device,
    label: str,
    clients: int,
    rounds: int,
    deadline: float,
) -> dict[str, Any]:
    """Both backends on one (model, clients) workload."""
    cell: dict[str, Any] = {"model": label, "clients": clients}
    params = {}
    for j, backend in enumerate(BACKENDS):
        if time.perf_counter() > deadline:
            cell[backend] = {"skipped": "section time budget spent"}
            continue
        config = throughput_config(args, label, clients, backend, rounds)
        stop_at = fair_share(deadline, len(BACKENDS) - j)
        cell[backend], results = throughput_run(args, device, config, stop_at)
        params[backend] = results.server.params
        print(f"  {label} x{clients} {backend}: {brief(cell[backend])}", flush=True)
    if len(params) == 2:
        cell["max_abs_param_diff"] = max_abs_difference(params["sequential"], params["vectorized"])
    for key in ("train_clients_per_s", "engine_clients_per_s"):
        seq, vec = cell["sequential"].get(key), cell["vectorized"].get(key)
        if seq and vec:
            cell[f"speedup_{key.removesuffix('_clients_per_s')}"] = vec / seq
    return cell


def brief(figures: dict[str, Any]) -> str:
    keys = ("train_clients_per_s", "engine_clients_per_s", "gpu_util_mean_pct", "peak_allocated_mb")
    return ", ".join(f"{k} {figures[k]:.1f}" for k in keys if k in figures)


# --------------------------------------------------------------------------- FedAvg workload


def fedavg(args: argparse.Namespace, device: torch.device, out: dict, deadline: float) -> None:
    """benchmarks/flower_compare.py's job through plural's backends on ``device`` (and
    through Flower when it imports)."""
    section: dict[str, Any] = out.setdefault("fedavg", {})
    job = SimpleNamespace(
        seed=args.seed,
        clients=4 if args.quick else 10,
        max_samples=1000 if args.quick else 20000,
        alpha=0.5,
        cpus=2,
    )
    base = make_config(job, args.fedavg_rounds)  # type: ignore[arg-type]
    base["dataset"]["data_dir"] = str(args.fmnist_dir)
    section["config"] = base
    for backend in ("sequential", "vectorized"):
        if time.perf_counter() > deadline:
            section[backend] = {"skipped": "section time budget spent"}
            continue
        config = {**copy.deepcopy(base), "name": f"gpu-fedavg-{backend}"}
        config["backend"] = backend_section(backend, args.device, args.max_batch_clients)
        figures: dict[str, Any] = {}
        with measured(device, figures):
            figures.update(phases(run_plural(config)))
        figures.update(fit_stats(config))
        section[backend] = figures
        print(f"  plural {backend}: total {figures['total_s']:.2f} s", flush=True)
        write(args, out)
    try:
        import flwr  # noqa: F401
    except ImportError:
        section["flower"] = {"skipped": "flwr is not installed here"}
    else:
        if time.perf_counter() > deadline:
            section["flower"] = {"skipped": "section time budget spent"}
        else:
            section["flower"] = phases(run_flower(base, job.cpus))
            section["flower"]["note"] = "Flower's clients train on the CPU (Ray actors)"
    write(args, out)


# --------------------------------------------------------------------------- pFedLoRA


def pfedlora_config(args: argparse.Namespace, algorithm: dict[str, Any]) -> dict[str, Any]:
    cfg = yaml.safe_load(PFEDLORA_EXAMPLE.read_text())
    cfg["dataset"]["data_dir"] = str(args.fmnist_dir)
    if args.pfedlora_max_samples:
        cfg["dataset"]["max_samples"] = args.pfedlora_max_samples
    cfg.update(
        seed=args.seed,
        rounds=args.pfedlora_rounds,
        algorithm=algorithm,
        eval={"every": args.pfedlora_eval_every, "splits": ["test"]},
        backend=backend_section(args.pfedlora_backend, args.device, args.max_batch_clients),
    )
    return cfg


def pfedlora_section(
    args: argparse.Namespace, device: torch.device, out: dict, deadline: float
) -> None:
    section: dict[str, Any] = out.setdefault("pfedlora", {})
    section["config"] = pfedlora_config(args, {"name": "pfedlora"})
    section["target"], section["paper_claims"] = args.target, PAPER_CLAIMS
    methods: dict[str, Any] = section.setdefault("methods", {})
    costs = {}
    for i, label in enumerate(args.methods):
        if time.perf_counter() > deadline:
            methods[label] = {"skipped": "section time budget spent"}
            continue
        stop, figures = Deadline(fair_share(deadline, len(args.methods) - i), device), {}
        with measured(device, figures):
            started = time.perf_counter()
            results = plural.run(
                pfedlora_config(args, pfedlora.METHODS[label]), progress=False, callbacks=[stop]
            )
        run = method_figures(results, time.perf_counter() - started)
        costs[label] = cost_to_target(results.metrics, args.target)
        rounds_done = int(results.metrics["round"].max())
        methods[label] = {
            **figures,
            **fit_stats(pfedlora_config(args, {"name": "local"})),
            **run,
            "rounds_done": rounds_done,
            "stopped_early": rounds_done < args.pfedlora_rounds,
            "to_target": dataclasses.asdict(costs[label]),
        }
        print(f"  {label}: accuracy {run['accuracy']:.3f}, {run['wall_s']:.1f} s", flush=True)
        write(args, out)
    if REFERENCE in costs:
        frame = cost_ratios(costs, reference=REFERENCE)
        section["cost_ratios"] = frame.to_dict(orient="records")
        section["against_best_baseline"] = best_baseline(methods, costs)
    write(args, out)


def method_figures(results: plural.Results, wall_s: float) -> dict[str, Any]:
    """Accuracy (mean and worst client at the last evaluation), bytes and FLOPs, and the
    accuracy curve over evaluated rounds."""
    metrics = results.metrics
    test = metrics[metrics["split"] == "test"]
    last = test[test["round"] == test["round"].max()]
    fit = metrics[metrics["split"] == "fit"]
    curve = test.groupby("round")["accuracy"].mean()
    return {
        "accuracy": float(last["accuracy"].mean()),
        "worst": float(last["accuracy"].min()),
        "mb": float(fit["bytes_up"].sum() + fit["bytes_down"].sum()) / 1e6,
        "train_gflops": float(fit["flops"].sum()) / 1e9,
        "wall_s": wall_s,
        "curve": {int(k): float(v) for k, v in curve.items()},
    }


def best_baseline(methods: dict[str, Any], costs: dict[str, Any]) -> dict[str, Any]:
    """The paper's comparison: the most accurate federated baseline (not pFedLoRA, not
    Standalone, which sends nothing) and its bytes and FLOPs to the target over pFedLoRA's
    (above 1: pFedLoRA is cheaper)."""
    baselines = {
        k: v
        for k, v in methods.items()
        if "accuracy" in v and not k.startswith("pFedLoRA") and k != "Standalone"
    }
    if not baselines:
        return {}
    best = max(baselines, key=lambda k: baselines[k]["accuracy"])
    ours, theirs = costs[REFERENCE], costs[best]
    both = ours.reached and theirs.reached
    return {
        "baseline": best,
        "both_reached_target": both,
        "communication_x": theirs.bytes / ours.bytes if both and ours.bytes else None,
        "computation_x": theirs.flops / ours.flops if both and ours.flops else None,
        "paper": PAPER_CLAIMS,
    }


# --------------------------------------------------------------------------- output


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(out: dict[str, Any]) -> str:
    lines = [f"# plural on {out['device'].get('name', out['device']['device'])}", ""]
    device = out["device"]
    lines.append(
        f"torch {device['torch']}, CUDA {device['cuda_build']}, cuDNN {device.get('cudnn')}, "
        f"nvidia-smi: {device.get('nvidia_smi')}; {out['date']}; budget {out['budget_s']} s"
    )
    lines += throughput_table(out.get("throughput", {}))
    lines += fedavg_table(out.get("fedavg", {}))
    lines += pfedlora_table(out.get("pfedlora", {}))
    return "\n".join(lines) + "\n"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def throughput_table(section: dict[str, Any]) -> list[str]:
    cells = [v for v in section.values() if isinstance(v, dict) and "model" in v]
    if not cells:
        return []
    rows = []
    for cell in cells:
        for backend in ("sequential", "vectorized"):
            f = cell.get(backend, {})
            speedups = (cell.get("speedup_train"), cell.get("speedup_engine"))
            diff = cell.get("max_abs_param_diff")
            diff = "–" if diff is None else f"{diff:.2g}"
            rows.append(
                [
                    cell["model"],
                    str(cell["clients"]),
                    backend + (" (stopped early)" if f.get("stopped_early") else ""),
                    fmt(f.get("train_clients_per_s"), 1),
                    fmt(f.get("engine_clients_per_s"), 1),
                    fmt(f.get("eval_s"), 3),
                    *(fmt(s) + "x" if backend == "vectorized" and s else "" for s in speedups),
                    fmt(f.get("gpu_util_mean_pct"), 0),
                    fmt(f.get("peak_allocated_mb"), 0),
                    diff if backend == "vectorized" else "",
                    batched(f),
                    f.get("skipped", ""),
                ]
            )
    header = [
        "model",
        "clients",
        "backend",
        "train clients/s",
        "engine round clients/s",
        "eval s",
        "train speedup",
        "round speedup",
        "GPU util %",
        "peak MB",
        "max param diff",
        "fits batched/alone",
        "note",
    ]
    return ["", "## Throughput", *table(header, rows)]


def batched(figures: dict[str, Any]) -> str:
    fits = figures.get("fits")
    return f"{fits['batched']}/{fits['alone']}" if fits else ""


def fedavg_table(section: dict[str, Any]) -> list[str]:
    rows = []
    for side in ("sequential", "vectorized", "flower"):
        f = section.get(side)
        if f is None:
            continue
        rows.append(
            [
                side,
                fmt(f.get("total_s")),
                fmt(f.get("round1_s"), 3),
                fmt(f.get("steady_round_s"), 3),
                fmt(f.get("last_round_s"), 3),
                fmt(f.get("mean_test_accuracy"), 3),
                fmt(f.get("gpu_util_mean_pct"), 0),
                f.get("skipped", f.get("note", "")),
            ]
        )
    header = ["run", "total s", "round 1 s", "steady s", "last s", "accuracy", "GPU %", "note"]
    return ["", "## FedAvg workload (flower_compare.py)", *table(header, rows)] if rows else []


def pfedlora_table(section: dict[str, Any]) -> list[str]:
    methods = section.get("methods", {})
    if not methods:
        return []
    ratios = {row["method"]: row for row in section.get("cost_ratios", [])}
    rows = []
    for label, f in methods.items():
        cost = f.get("to_target", {})
        ratio = ratios.get(label, {})
        rows.append(
            [
                label,
                fmt(f.get("accuracy"), 3),
                fmt(f.get("worst"), 3),
                fmt(f.get("mb")),
                fmt(f.get("train_gflops"), 1),
                fmt(cost.get("round")),
                fmt(cost["bytes"] / 1e6) if cost.get("round") is not None else "–",
                fmt(cost["flops"] / 1e9, 1) if cost.get("round") is not None else "–",
                fmt(ratio.get(f"bytes_vs_{REFERENCE}")),
                fmt(ratio.get(f"flops_vs_{REFERENCE}")),
                fmt(f.get("wall_s"), 1),
                f.get("skipped", "stopped early" if f.get("stopped_early") else ""),
            ]
        )
    header = [
        "method",
        "accuracy",
        "worst",
        "MB",
        "GFLOPs",
        "round to target",
        "MB to target",
        "GFLOPs to target",
        "bytes / pFedLoRA's",
        "FLOPs / pFedLoRA's",
        "wall s",
        "note",
    ]
    lines = [f"## pFedLoRA, full-size five CNNs (target {section.get('target')})"]
    lines = ["", *lines, *table(header, rows)]
    best = section.get("against_best_baseline")
    if best:
        lines += [
            "",
            f"Most accurate federated baseline: {best['baseline']}; its cost to the target over "
            f"pFedLoRA's: communication {fmt(best['communication_x'])}x, computation "
            f"{fmt(best['computation_x'])}x (paper: {PAPER_CLAIMS['communication_x']}x, "
            f"{PAPER_CLAIMS['computation_x']}x).",
        ]
    return lines


def write(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """gpu.json and gpu.md in ``--out``, rewritten whole (so partial results survive)."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    (args.out / "gpu.md").write_text(markdown(out))


# --------------------------------------------------------------------------- main


RUNNERS = {"throughput": throughput, "fedavg": fedavg, "pfedlora": pfedlora_section}
TABLES = {"throughput": throughput_table, "fedavg": fedavg_table, "pfedlora": pfedlora_table}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = check_device(args.device)
    check_fmnist(args.fmnist_dir)
    torch.set_num_threads(1)
    watch_vectorized()
    started = time.perf_counter()
    end = started + args.budget_seconds
    out: dict[str, Any] = {
        "benchmark": "gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": args.budget_seconds,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": device_info(device),
        "machine": machine_info(torch_threads=1),
        "sections_s": {},
    }
    write(args, out)
    for i, name in enumerate(args.sections):
        left = args.sections[i:]
        now = time.perf_counter()
        share = SHARES[name] / sum(SHARES[s] for s in left)
        deadline = min(end, now + (end - now) * share)
        print(f"== {name} (until +{deadline - started:.0f} s)", flush=True)
        try:
            RUNNERS[name](args, device, out, deadline)
        except Exception as error:  # record and go on: the other sections still run
            out.setdefault(name, {})["error"] = f"{type(error).__name__}: {error}"
            print(f"  {name} failed: {out[name]['error']}", flush=True)
        out["sections_s"][name] = time.perf_counter() - now
        write(args, out)
        print("\n".join(TABLES[name](out.get(name, {}))), flush=True)
    print(markdown(out), flush=True)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    return 1 if any("error" in out.get(name, {}) for name in args.sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())
