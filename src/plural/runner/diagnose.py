"""``plural diagnose``: how heterogeneous is a federation, and what should one run on it?

Builds the config's federation, measures label and quantity skew, then, at the model a short
FedAvg warm-up reaches, the gradient dissimilarity and the client drift of one round of local
training, and looks for groups in the directions of the client updates. A rule list
(:mod:`plural.diagnostics.recommend`) turns the numbers into a recommended family of methods,
quoting the numbers. With ``probe``, the available candidate methods also run a few short
rounds each and are ranked by measured per-client test accuracy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plural.config import ConfigError
from plural.core.cluster_quality import group_agreement
from plural.core.params import state_of
from plural.core.trainer import LocalTrainer
from plural.data.federated import FederatedDataset
from plural.data.types import ArrayDataset
from plural.diagnostics import plots
from plural.diagnostics.gradients import (
    ClientDrift,
    GradientDissimilarity,
    client_drift,
    gradient_dissimilarity,
)
from plural.diagnostics.labels import LabelSkew, as_json, label_skew
from plural.diagnostics.recommend import (
    FAMILY_METHODS,
    ClusterSignal,
    Recommendation,
    cluster_structure,
    recommend,
)
from plural.experiment import ExperimentConfig, load_config
from plural.registry import ALGORITHMS
from plural.runner import ModelSource, build_federation, build_model, run

BASELINES = ("fedavg", "local")


@dataclasses.dataclass
class Diagnosis:
    """Everything ``plural diagnose`` measured, and what it recommends."""

    config: ExperimentConfig
    num_clients: int
    groups: np.ndarray | None
    warmup_rounds: int
    label_skew: LabelSkew | None
    dissimilarity: GradientDissimilarity
    drift: ClientDrift
    cluster: ClusterSignal | None
    recommendation: Recommendation
    probe: pd.DataFrame | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def cluster_ari(self) -> float | None:
        """Adjusted Rand index of the update clusters against the true groups, if known."""
        if self.cluster is None or self.groups is None:
            return None
        truth = self.groups[self.drift.clients]
        return group_agreement(truth, self.cluster.assignment)["ari"]

    def to_dict(self) -> dict[str, Any]:
        return as_json(
            {
                "config": self.config.to_dict(),
                "num_clients": self.num_clients,
                "groups": self.groups,
                "warmup_rounds": self.warmup_rounds,
                "label_skew": self.label_skew.to_dict() if self.label_skew else None,
                "gradient_dissimilarity": self.dissimilarity.to_dict(),
                "drift": self.drift.to_dict(),
                "cluster": self.cluster.to_dict() if self.cluster else None,
                "cluster_ari": self.cluster_ari,
                "recommendation": self.recommendation.to_dict(),
                "probe": None if self.probe is None else self.probe.to_dict(orient="records"),
                "files": self.files,
            }
        )

    def report(self) -> str:
        """The diagnosis as readable text (also saved as ``diagnosis.md``)."""
        return "\n".join(_report_lines(self))


def _report_lines(d: Diagnosis) -> list[str]:
    cfg = d.config
    lines = [
        f"# Diagnosis: {cfg.name}",
        "",
        f"Federation: {cfg.dataset.name}, {d.num_clients} clients, partition "
        f"{cfg.partition.name}"
        + (f", transforms {', '.join(t.name for t in cfg.transforms)}" if cfg.transforms else "")
        + (f"; {len(np.unique(d.groups))} true groups" if d.groups is not None else ""),
    ]
    s = d.label_skew
    if s is not None:
        lines += [
            f"Label skew: mean Jensen-Shannon divergence from the pooled labels {s.mean_js:.3f} "
            f"(max {s.max_js:.3f}), mean L1 (EMD) {s.mean_emd:.3f}, "
            f"{s.mean_classes:.1f} of {s.num_classes} classes per client",
            f"Training set sizes: mean {s.size_mean:.0f}, median {s.size_median:.0f}, "
            f"min {s.size_min}, max {s.size_max}, CV {s.size_cv:.2f}, Gini {s.size_gini:.2f}",
        ]
    at = f"after {d.warmup_rounds} FedAvg rounds" if d.warmup_rounds else "at the initial model"
    g = d.dissimilarity
    lines.append(
        f"Gradient dissimilarity {at}: G^2 = {g.g2:.4g}, B^2 = {g.b2:.3g} "
        f"(1 = all clients agree), |grad F| = {g.global_grad_norm:.3g}"
    )
    lines.append(
        f"Client drift after one round of local training: mean {d.drift.mean_drift:.4g}, "
        f"max {d.drift.max_drift:.4g}; mean update cosine {d.drift.mean_cosine:.3f}"
    )
    if d.cluster is not None:
        ari = (
            f", ARI against the true groups {d.cluster_ari:.3f}"
            if d.cluster_ari is not None
            else ""
        )
        lines.append(
            f"Groups in the client updates: best k = {d.cluster.k}, silhouette "
            f"{d.cluster.silhouette:.3f}, separation {d.cluster.separation:.3f}{ari}"
        )
    r = d.recommendation
    lines += ["", f"## Recommendation: {r.family} ({', '.join(r.methods)})", ""]
    lines += [f"- {reason}" for reason in r.reasons]
    lines += [f"- note: {note}" for note in r.notes]
    lines.append(f"- available in this version: {', '.join(r.available_methods) or 'none'}")
    if d.probe is not None:
        lines += ["", "## Probe: short runs ranked by mean per-client test accuracy", ""]
        lines.append(d.probe.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if d.files:
        lines += ["", "Files: " + ", ".join(sorted(d.files.values()))]
    return lines


def _warmup_params(
    cfg: ExperimentConfig, federation: FederatedDataset, model: ModelSource | None, rounds: int
) -> dict[str, Any]:
    initial = build_model(cfg, federation, model)
    if rounds == 0:
        # a copy: the trainer loads parameters into ``initial``, which must not move the start
        return {"model": initial, "params": state_of(initial)}
    warm = run(
        cfg,
        overrides=[f"rounds={rounds}", "algorithm={name: fedavg}", "eval.splits=[test]"],
        dataset=federation,
        model=initial,
        progress=False,
    )
    return {"model": initial, "params": warm.server.params}


def candidate_settings(name: str, rounds: int, groups: int | None) -> dict[str, Any]:
    """Settings that let a clustered candidate work within a probe of ``rounds`` rounds:
    IFCA gets the detected group count as ``k``; CFL may split after a third of the rounds
    (its default ``min_rounds`` of 20 is longer than a probe); pFedLIA's warm-up leaves at
    least half of the rounds to its clusters."""
    if name == "ifca" and groups is not None:
        return {"k": groups}
    if name == "cfl":
        return {"min_rounds": max(1, rounds // 3)}
    if name == "pfedlia":
        return {"warmup_rounds": min(5, max(0, rounds // 2 - 1))}
    return {}


def probe_methods(
    cfg: ExperimentConfig,
    federation: FederatedDataset,
    model: ModelSource | None,
    candidates: Sequence[str],
    rounds: int,
    groups: int | None = None,
) -> pd.DataFrame:
    """Run each candidate for ``rounds`` rounds; rank by mean (then worst-10%) test accuracy.
    ``groups``: the number of client groups the diagnosis detected (IFCA's ``k``)."""
    rows = []
    for name in candidates:
        settings = {"name": name, **candidate_settings(name, rounds, groups)}
        algorithm = ", ".join(f"{k}: {v}" for k, v in settings.items())
        results = run(
            cfg,
            overrides=[f"rounds={rounds}", f"algorithm={{{algorithm}}}", "eval.splits=[test]"],
            dataset=federation,
            model=model,
            progress=False,
        )
        accuracy = results.summary["test"]["accuracy"]
        rows.append(
            {
                "algorithm": name,
                "mean": accuracy["mean"],
                "worst10": accuracy["worst10"],
                "std": accuracy["std"],
                "MB": results.summary["bytes"]["total"] / 1e6,
            }
        )
    table = pd.DataFrame(rows)
    return table.sort_values(["mean", "worst10"], ascending=False, ignore_index=True)


def probe_candidates(recommendation: Recommendation) -> list[str]:
    """The recommended methods that exist here, the first available method of every other
    family (so the ranking can contradict the rules), and the FedAvg and Local baselines."""
    others = [
        next((m for m in methods if m in ALGORITHMS), None)
        for family, methods in FAMILY_METHODS.items()
        if family != recommendation.family
    ]
    names = [*recommendation.available_methods, *(m for m in others if m), *BASELINES]
    return [n for n in dict.fromkeys(names) if n in ALGORITHMS]


def _write_files(d: Diagnosis, federation: FederatedDataset, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    groups = d.groups
    files: dict[str, str] = {}
    if federation.is_classification:
        files["label_histogram"] = plots.plot_label_histogram(
            federation.label_histogram(),
            out / "label_histogram.png",
            federation.class_names,
            groups,
        )
    files["sizes"] = plots.plot_sizes(federation.sizes("train"), out / "sizes.png")
    client_groups = None if groups is None else groups[d.dissimilarity.clients]
    files["gradient_deviation"] = plots.plot_client_values(
        d.dissimilarity.deviation,
        out / "gradient_deviation.png",
        "Gradient deviation per client",
        "||grad F_k - grad F||",
        client_groups,
    )
    files["drift"] = plots.plot_client_values(
        d.drift.drift,
        out / "drift.png",
        "Client drift after local training",
        "||w_k - w||",
        None if groups is None else groups[d.drift.clients],
    )
    files["update_similarity"] = plots.plot_similarity(
        d.drift.update_cosine,
        out / "update_similarity.png",
        None if groups is None else groups[d.drift.clients],
    )
    files = {k: str(v) for k, v in files.items()}
    files["json"] = str(out / "diagnosis.json")
    files["report"] = str(out / "diagnosis.md")
    return files


def diagnose(
    config: str | Path | Mapping[str, Any] | ExperimentConfig,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    warmup_rounds: int = 0,
    probe: bool = False,
    probe_rounds: int = 10,
    dataset: ArrayDataset | FederatedDataset | None = None,
    model: ModelSource | None = None,
) -> Diagnosis:
    """Measure the federation of ``config`` and recommend methods (see the module docstring).

    ``out`` receives ``diagnosis.json``, ``diagnosis.md`` and the plots.
    """
    if warmup_rounds < 0 or probe_rounds < 1:
        raise ValueError("warmup_rounds must be >= 0 and probe_rounds >= 1")
    given = [name for name, obj in (("dataset", dataset), ("model", model)) if obj is not None]
    cfg = load_config(config, overrides, provided=given)
    federation = build_federation(cfg, dataset)
    if not federation.is_classification:
        raise ConfigError(
            "diagnose: needs a classification task (label skew and the "
            "recommendation rules are defined on class labels)"
        )
    start = _warmup_params(cfg, federation, model, warmup_rounds)
    trainer = LocalTrainer(start["model"], cfg.train)
    params = start["params"]
    dissimilarity = gradient_dissimilarity(trainer, params, federation)
    drift = client_drift(trainer, params, federation, cfg.seed)
    skew = label_skew(federation)
    cluster = cluster_structure(drift.update_cosine) if len(drift.clients) >= 3 else None
    recommendation = recommend(
        skew, dissimilarity, drift, cluster=cluster, available=set(ALGORITHMS.names())
    )
    diagnosis = Diagnosis(
        cfg,
        federation.num_clients,
        federation.groups,
        warmup_rounds,
        skew,
        dissimilarity,
        drift,
        cluster,
        recommendation,
    )
    if probe:
        candidates = probe_candidates(recommendation)
        grouped = cluster is not None and cluster.k >= 2
        grouped = grouped and (cluster.distinct or recommendation.family == "clustered")
        groups = cluster.k if grouped else None
        diagnosis.probe = probe_methods(
            cfg, federation, model, candidates, probe_rounds, groups=groups
        )
    if out is not None:
        out = Path(out)
        diagnosis.files = _write_files(diagnosis, federation, out)
        (out / "diagnosis.json").write_text(json.dumps(diagnosis.to_dict(), indent=2) + "\n")
        (out / "diagnosis.md").write_text(diagnosis.report() + "\n")
    return diagnosis
