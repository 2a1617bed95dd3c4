"""pFedLIA's lazy influence against the exact pairwise benefit: cost, agreement, sensitivity.

pFedLIA (Rokvic, Danassis, Faltings 2025, arXiv 2505.02540) scores, from a shared start
``theta0`` (the FedAvg model after ``W = warmup_rounds`` rounds), every pair of clients by a
*lazy* influence: client ``j`` trains ``k = lazy_epochs`` epochs from ``theta0`` on its own
training split ``D_j`` (the lazy model ``theta_j``) and client ``i`` measures, on its own
validation split ``V_i``::

    S[i, j] = L_i(theta0) - L_i(theta_j)

This script computes, on the same federation, from the same ``theta0`` and with the same
budget ``k``, the **exact pairwise benefit** of ``j``'s data to ``i``: retrain ``i`` with and
without ``j``'s data and compare ``i``'s validation loss::

    fit_i  = theta0 trained k epochs on D_i
    fit_ij = theta0 trained k epochs on D_i + D_j   (concatenated, shuffled together)
    E[i, j] = L_i(fit_i) - L_i(fit_ij)             (E[i, i] = NaN: excluded)

"The same budget" is *the same number of epochs over the union* (``--budget epochs``, the
default, the natural "retrain with j's data"): ``fit_ij`` takes about twice the optimizer
steps of ``fit_i`` (|D_i| ~ |D_j| here) and its cost is counted as such. ``--budget steps``
instead gives ``fit_ij`` exactly the optimizer steps of ``fit_i`` (so ``j``'s samples replace
about half of ``i``'s); the main cell (k=1, W=5) is always measured with both budgets.

Everything uses plural's own trainer (``LocalTrainer``: SGD lr 0.05, momentum 0.9, batch 32,
as in the run), and derived generators: ``fit_i`` shuffles with
``torch_generator(seed, "lia_cost", budget, k, W, i)`` and ``fit_ij`` with
``torch_generator(seed, "lia_cost", budget, k, W, i, j)``. ``S`` comes from a real
``plural.run`` of pFedLIA (``lia_records(...)[-1]["scores"]``), and ``theta0`` from
``lia_state(server).theta0``. As a check of the harness, the script re-computes ``S`` from
``theta0`` with the generators the engine derives (``(seed, W + 1, j, "lazy_train")``) and
reports the largest difference to the run's ``S``.

**Costs.** Lazy: the run's own record, ``cost["lazy_samples"]`` (samples trained: N lazy fits
of k epochs) + ``cost["eval_samples"]`` ((N + 1) validation passes per client: ``theta0``
and N lazy models), and ``cost["seconds"]`` (wall time of the whole lazy phase, clustering
included). Exact: N baseline fits + N(N - 1) pair fits (samples trained, as the trainer
counts them: ``samples_seen``) and N validation passes per client (``fit_i`` and the N - 1
``fit_ij``), wall time by ``time.perf_counter`` around the fits and evaluations. Ratios are
reported in samples trained, samples evaluated, all samples processed (hardware-independent;
a training sample is a forward and a backward pass, an evaluated one a forward pass only)
and wall time. Everything runs in one process on one torch thread.

**Agreement** over the N(N - 1) off-diagonal pairs: Spearman rank correlation of ``S`` and
``E`` (``plural.algorithms.influence.rank_correlation``); sign agreement (share of pairs with
``sign(S) == sign(E)``: "does j help i" answered alike); for each matrix, the share of pairs
whose sign matches the true groups (positive iff same group). **Clustering**: the ARI against
the true groups of pFedLIA's own clustering (the run's ``record["ari"]``), of ``S`` with its
diagonal removed, and of ``E``, the last two with pFedLIA's central pipeline at its defaults
(``influence_features`` with ``normalize="row"``, then ``optics_clusters`` with
``min_samples=3, xi=0.05, noise="own"``).

**Sweep**: lazy epochs ``k`` in {1, 2, 5} x warm-up rounds ``W`` in {0, 1, 3, 5} (the exact
matrix is computed for every cell), seed 0 (``--seeds 0 1 2`` for more). Federation: MNIST
(``--max-samples`` 8000), ``class_groups`` with ``--clients`` 20 in 5 groups of 2 classes,
split 65/15/20, MLP 784-64-10. About 2 minutes on one core with the defaults.

    .venv/bin/python benchmarks/lia_cost.py [--seeds 0] [--clients 20] [--max-samples 8000]
    .venv/bin/python benchmarks/lia_cost.py --quick      # smoke run: one cell, 15 clients
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

import plural
from plural.algorithms.pfedlia import PFedLIAConfig, lia_records, lia_state
from plural.core.influence import influence_features, optics_clusters, rank_correlation
from plural.core.params import Params
from plural.core.rng import torch_generator
from plural.core.trainer import LocalTrainer
from plural.data.federated import FederatedDataset

HERE = Path(__file__).parent
EPOCHS = (1, 2, 5)
WARMUPS = (0, 1, 3, 5)
MAIN = (1, 5)  # (k, W): pFedLIA's defaults, lazy_epochs 1, warmup_rounds 5
DEFAULTS = PFedLIAConfig()


def config(seed: int, clients: int, max_samples: int, warmup: int, epochs: int) -> dict[str, Any]:
    """The pFedLIA run whose lazy phase is measured: it happens at the start of round W + 1."""
    return {
        "name": "lia_cost",
        "seed": seed,
        "rounds": warmup + 1,
        "dataset": {"name": "mnist", "max_samples": max_samples},
        "partition": {
            "name": "class_groups",
            "num_clients": clients,
            "groups": 5,
            "classes_per_group": 2,
        },
        "model": {"name": "mlp", "hidden": [64]},
        "algorithm": {"name": "pfedlia", "warmup_rounds": warmup, "lazy_epochs": epochs},
        "train": {"lr": 0.05, "momentum": 0.9, "batch_size": 32},
        "split": {"val": 0.15, "test": 0.2},
        "eval": {"every": 100},
        "backend": {"threads_per_worker": 1},
    }


def cluster(scores: np.ndarray) -> np.ndarray:
    """pFedLIA's central clustering of a score matrix at its default settings."""
    features = influence_features(scores, DEFAULTS.normalize, symmetrize=False)
    return optics_clusters(features, DEFAULTS.min_samples, DEFAULTS.xi, DEFAULTS.noise)


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    return matrix[~np.eye(len(matrix), dtype=bool)]


def without_diagonal(matrix: np.ndarray) -> np.ndarray:
    out = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(out, np.nan)
    return out


def lazy_scores(
    trainer: LocalTrainer, federation: FederatedDataset, theta0: Params, seed: int, w: int, k: int
) -> np.ndarray:
    """S re-computed outside the engine, with the generators the engine derives."""
    clients = federation.clients
    lazy = []
    for j, client in enumerate(clients):
        rng = torch_generator(seed, w + 1, j, "lazy_train")
        lazy.append(trainer.fit(theta0, client.train.x, client.train.y, rng=rng, epochs=k).params)
    scores = np.zeros((len(clients),) * 2)
    for i, client in enumerate(clients):
        base = trainer.evaluate(theta0, client.val.x, client.val.y).loss
        for j, params in enumerate(lazy):
            scores[i, j] = base - trainer.evaluate(params, client.val.x, client.val.y).loss
    return scores


def exact_benefit(
    trainer: LocalTrainer,
    federation: FederatedDataset,
    theta0: Params,
    seed: int,
    w: int,
    k: int,
    budget: str,
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """E[i, j] = L_i(fit_i) - L_i(fit_ij) (see the module docstring), what it cost, and the
    baseline losses L_i(fit_i)."""
    clients = federation.clients
    n = len(clients)
    benefit = np.full((n, n), np.nan)
    baselines = np.zeros(n)
    trained = evaluated = fits = 0
    started = time.perf_counter()
    for i, mine in enumerate(clients):
        rng = torch_generator(seed, "lia_cost", budget, k, w, i)
        alone = trainer.fit(theta0, mine.train.x, mine.train.y, rng=rng, epochs=k)
        base = baselines[i] = trainer.evaluate(alone.params, mine.val.x, mine.val.y).loss
        trained += alone.samples_seen
        evaluated += len(mine.val)
        fits += 1
        for j, theirs in enumerate(clients):
            if j == i:
                continue
            x = torch.cat([mine.train.x, theirs.train.x])
            y = torch.cat([mine.train.y, theirs.train.y])
            rng = torch_generator(seed, "lia_cost", budget, k, w, i, j)
            if budget == "epochs":
                fit = trainer.fit(theta0, x, y, rng=rng, epochs=k)
            else:
                fit = trainer.fit(theta0, x, y, rng=rng, steps=alone.steps)
            benefit[i, j] = base - trainer.evaluate(fit.params, mine.val.x, mine.val.y).loss
            trained += fit.samples_seen
            evaluated += len(mine.val)
            fits += 1
    cost = {
        "fits": fits,
        "train_samples": trained,
        "eval_samples": evaluated,
        "seconds": time.perf_counter() - started,
    }
    return benefit, cost, baselines


def refit_losses(
    trainer: LocalTrainer, federation: FederatedDataset, theta0: Params, seed: int, w: int, k: int
) -> np.ndarray:
    """L_i(fit_i) again with another shuffle (generator keys ``"refit"``): the SGD noise of
    the baseline that every entry of row i of E shares (not counted in the exact cost)."""
    losses = []
    for i, client in enumerate(federation.clients):
        rng = torch_generator(seed, "lia_cost", "refit", k, w, i)
        fit = trainer.fit(theta0, client.train.x, client.train.y, rng=rng, epochs=k)
        losses.append(trainer.evaluate(fit.params, client.val.x, client.val.y).loss)
    return np.asarray(losses)


def row_spearman(scores: np.ndarray, benefit: np.ndarray) -> float:
    """Mean over clients i of the Spearman correlation of S[i, j] and E[i, j] over j != i:
    does each client rank its helpers alike (blind to a row's offset and scale)."""
    values = []
    for i in range(len(scores)):
        keep = np.arange(len(scores)) != i
        s, e = scores[i, keep], benefit[i, keep]
        if np.ptp(s) > 0 and np.ptp(e) > 0:
            values.append(float(spearmanr(s, e)[0]))
    return float(np.mean(values)) if values else math.nan


def compare(
    scores: np.ndarray,
    benefit: np.ndarray,
    groups: np.ndarray,
    lazy_cost: dict[str, Any],
    exact_cost: dict[str, Any],
) -> dict[str, Any]:
    """Cost ratios, agreement of S and E, and how well each clusters."""
    s, e = off_diagonal(scores), off_diagonal(benefit)
    same = off_diagonal(groups[:, None] == groups[None, :])
    lazy_total = lazy_cost["lazy_samples"] + lazy_cost["eval_samples"]
    exact_total = exact_cost["train_samples"] + exact_cost["eval_samples"]
    e_labels = cluster(benefit)
    s_labels = cluster(without_diagonal(scores))
    return {
        "spearman": rank_correlation(scores, benefit),
        "spearman_rows": row_spearman(scores, benefit),
        "sign_agreement": float(np.mean(np.sign(s) == np.sign(e))),
        "lazy_group_sign": float(np.mean((s > 0) == same)),
        "exact_group_sign": float(np.mean((e > 0) == same)),
        "exact_positive_share": float(np.mean(e > 0)),
        "lazy_same_positive": float(np.mean(s[same] > 0)),
        "lazy_other_negative": float(np.mean(s[~same] < 0)),
        "exact_same_positive": float(np.mean(e[same] > 0)),
        "exact_other_negative": float(np.mean(e[~same] < 0)),
        "exact_same_median_abs": float(np.median(np.abs(e[same]))),
        "exact_other_median_abs": float(np.median(np.abs(e[~same]))),
        "ari_exact": float(adjusted_rand_score(groups, e_labels)),
        "clusters_exact": int(e_labels.max()) + 1,
        "ari_lazy_offdiag": float(adjusted_rand_score(groups, s_labels)),
        "exact_cost": exact_cost,
        "ratio_train_samples": exact_cost["train_samples"] / lazy_cost["lazy_samples"],
        "ratio_eval_samples": exact_cost["eval_samples"] / lazy_cost["eval_samples"],
        "ratio_samples": exact_total / lazy_total,
        "ratio_seconds": exact_cost["seconds"] / lazy_cost["seconds"],
    }


def measure_cell(seed: int, k: int, w: int, args: argparse.Namespace) -> dict[str, Any]:
    """One (seed, k, W): the pFedLIA run, its S, and the exact E from the same theta0."""
    cfg = config(seed, args.clients, args.max_samples, w, k)
    started = time.perf_counter()
    results = plural.run(cfg, out=None, progress=False)
    run_seconds = time.perf_counter() - started
    record = lia_records(results.server)[-1]
    lia = lia_state(results.server)
    theta0 = lia.theta0
    groups = np.asarray(lia.groups)
    parsed = plural.experiment.load_config(cfg)
    federation = plural.runner.build_federation(parsed)
    trainer = LocalTrainer(plural.runner.build_model(parsed, federation), parsed.train)
    scores = np.asarray(record["scores"], dtype=np.float64)
    check = lazy_scores(trainer, federation, theta0, seed, w, k)
    lazy_cost = {key: record["cost"][key] for key in ("lazy_samples", "eval_samples", "seconds")}
    cell: dict[str, Any] = {
        "seed": seed,
        "lazy_epochs": k,
        "warmup_rounds": w,
        "run_seconds": run_seconds,
        "ari": float(record["ari"]),
        "clusters": int(record["clusters"]),
        "lazy_cost": lazy_cost,
        "lazy_recompute_max_abs_diff": float(np.max(np.abs(check - scores))),
        "mean_lazy_same_group": float(np.mean(off_diagonal(scores)[same_pairs(groups)])),
        "mean_lazy_other_group": float(np.mean(off_diagonal(scores)[~same_pairs(groups)])),
        "scores": scores.tolist(),
        "groups": groups.tolist(),
        "budgets": {},
    }
    budgets = ["epochs", "steps"] if (k, w) == MAIN else [args.budget]
    for budget in budgets:
        benefit, exact_cost, baselines = exact_benefit(
            trainer, federation, theta0, seed, w, k, budget
        )
        result = compare(scores, benefit, groups, lazy_cost, exact_cost)
        if budget == budgets[0]:
            refit = refit_losses(trainer, federation, theta0, seed, w, k)
            cell["baseline_loss_mean"] = float(np.mean(baselines))
            cell["baseline_refit_mean_abs_diff"] = float(np.mean(np.abs(refit - baselines)))
        result["mean_exact_same_group"] = float(np.mean(off_diagonal(benefit)[same_pairs(groups)]))
        result["mean_exact_other_group"] = float(
            np.mean(off_diagonal(benefit)[~same_pairs(groups)])
        )
        result["benefit"] = [[None if math.isnan(v) else v for v in row] for row in benefit]
        cell["budgets"][budget] = result
    return cell


def same_pairs(groups: np.ndarray) -> np.ndarray:
    return off_diagonal(groups[:, None] == groups[None, :])


def row(cell: dict[str, Any], budget: str) -> str:
    r = cell["budgets"][budget]
    lazy, exact = cell["lazy_cost"], r["exact_cost"]
    return (
        f"{cell['seed']:>4} {cell['lazy_epochs']:>2} {cell['warmup_rounds']:>2} {budget:>6} "
        f"{cell['ari']:>7.3f} {r['ari_lazy_offdiag']:>7.3f} {r['ari_exact']:>7.3f} "
        f"{r['spearman']:>8.3f} {r['spearman_rows']:>6.3f} {r['sign_agreement']:>6.3f} "
        f"{r['lazy_group_sign']:>6.3f} {r['exact_group_sign']:>6.3f} "
        f"{r['ratio_samples']:>7.1f} {r['ratio_train_samples']:>7.1f} "
        f"{r['ratio_seconds']:>7.1f} {lazy['seconds']:>7.3f} {exact['seconds']:>7.2f}"
    )


HEADER = (
    f"{'seed':>4} {'k':>2} {'W':>2} {'budget':>6} {'ARI':>7} {'ARI S*':>7} {'ARI E':>7} "
    f"{'spearman':>8} {'rows':>6} {'sign=':>6} {'S grp':>6} {'E grp':>6} "
    f"{'x samp':>7} {'x train':>7} {'x wall':>7} {'lazy s':>7} {'exact s':>7}"
)


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over seeds per (k, W, budget)."""
    keys = sorted({(c["lazy_epochs"], c["warmup_rounds"], b) for c in cells for b in c["budgets"]})
    out = []
    for k, w, budget in keys:
        group = [c for c in cells if (c["lazy_epochs"], c["warmup_rounds"]) == (k, w)]
        group = [c for c in group if budget in c["budgets"]]
        rs = [c["budgets"][budget] for c in group]
        out.append(
            {
                "lazy_epochs": k,
                "warmup_rounds": w,
                "budget": budget,
                "seeds": [c["seed"] for c in group],
                "ari": float(np.mean([c["ari"] for c in group])),
                "ari_exact": float(np.mean([r["ari_exact"] for r in rs])),
                "spearman": float(np.mean([r["spearman"] for r in rs])),
                "spearman_rows": float(np.mean([r["spearman_rows"] for r in rs])),
                "sign_agreement": float(np.mean([r["sign_agreement"] for r in rs])),
                "ratio_samples": float(np.mean([r["ratio_samples"] for r in rs])),
                "ratio_seconds": float(np.mean([r["ratio_seconds"] for r in rs])),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--clients", type=int, default=None, help="default 20 (15 with --quick)")
    parser.add_argument(
        "--max-samples", type=int, default=None, help="default 8000 (3000 with --quick)"
    )
    parser.add_argument("--epochs", type=int, nargs="+", default=None, help="k grid (1 2 5)")
    parser.add_argument("--warmups", type=int, nargs="+", default=None, help="W grid (0 1 3 5)")
    parser.add_argument(
        "--budget",
        choices=["epochs", "steps"],
        default="epochs",
        help="budget of fit_ij off the main cell (the main cell k=1, W=5 runs both)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: k=1, W=1, 15 clients, 3000 samples"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "lia_cost.json")
    args = parser.parse_args()
    if args.clients is None:
        args.clients = 15 if args.quick else 20
    if args.max_samples is None:
        args.max_samples = 3000 if args.quick else 8000
    epochs = args.epochs or ([1] if args.quick else list(EPOCHS))
    warmups = args.warmups or ([1] if args.quick else list(WARMUPS))
    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    cells = []
    # A throwaway run first, so that first-call costs in the process (torch's first
    # backward pass, the MNIST read) do not land in the first cell's lazy-phase time.
    plural.run(config(args.seeds[0], args.clients, args.max_samples, 0, 1), out=None)
    print(HEADER)
    for seed in args.seeds:
        for k in epochs:
            for w in warmups:
                cell = measure_cell(seed, k, w, args)
                cells.append(cell)
                for budget in cell["budgets"]:
                    print(row(cell, budget), flush=True)
    print(
        "ARI: pFedLIA's clustering; ARI S*: S without its diagonal, ARI E: E, both through "
        "pFedLIA's OPTICS pipeline; spearman: over all off-diagonal pairs, rows: mean of "
        "per-client (row) correlations; sign=: share of pairs with sign(S) == sign(E); S/E grp: "
        "share of pairs positive iff same group; x samp / x train / x wall: exact / lazy in "
        "samples processed / samples trained / wall time"
    )
    for cell in cells:
        r = cell["budgets"][next(iter(cell["budgets"]))]
        print(
            f"k={cell['lazy_epochs']} W={cell['warmup_rounds']}: E>0 on "
            f"{r['exact_same_positive']:.2f} of same-group pairs, E<0 on "
            f"{r['exact_other_negative']:.2f} of others; median |E| same group "
            f"{r['exact_same_median_abs']:.4f}, other {r['exact_other_median_abs']:.4f}; "
            f"baseline L_i(fit_i) {cell['baseline_loss_mean']:.4f}, moves "
            f"{cell['baseline_refit_mean_abs_diff']:.4f} with another shuffle"
        )
    worst = max(c["lazy_recompute_max_abs_diff"] for c in cells)
    print(f"lazy scores re-computed outside the engine: max |difference| = {worst:.3g}")
    means = summarize(cells)
    if len(args.seeds) > 1:
        print("\nmeans over seeds")
        for m in means:
            print(
                f"k={m['lazy_epochs']} W={m['warmup_rounds']} {m['budget']:>6}: ARI "
                f"{m['ari']:.3f}, ARI E {m['ari_exact']:.3f}, spearman {m['spearman']:.3f} "
                f"(rows {m['spearman_rows']:.3f}), "
                f"sign= {m['sign_agreement']:.3f}, x samples {m['ratio_samples']:.1f}, "
                f"x wall {m['ratio_seconds']:.1f}"
            )
    total = time.perf_counter() - started
    print(f"total {total:.0f} s")
    report = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "plural": getattr(plural, "__version__", None),
            "loadavg_start": load,
            "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "settings": {
            "seeds": args.seeds,
            "clients": args.clients,
            "max_samples": args.max_samples,
            "lazy_epochs": epochs,
            "warmup_rounds": warmups,
            "budget": args.budget,
            "main_cell": {"lazy_epochs": MAIN[0], "warmup_rounds": MAIN[1]},
            "config_example": config(args.seeds[0], args.clients, args.max_samples, *MAIN[::-1]),
            "clustering": {
                "normalize": DEFAULTS.normalize,
                "min_samples": DEFAULTS.min_samples,
                "xi": DEFAULTS.xi,
                "noise": DEFAULTS.noise,
            },
        },
        "total_seconds": total,
        "means": means,
        "cells": cells,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
