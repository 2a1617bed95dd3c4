"""What the engine asks of the robustness sections during a run: who is malicious, who is
available, who drops or misses the deadline, isolating client code that raises, poisoning
replies, and the metrics that follow (clean clients' accuracy, backdoor success, faults).

The engine calls it through small hooks (``plural.engine.loop``); with the sections at their
defaults :func:`Robustness.build` returns an object whose ``active`` is False and the engine
runs exactly as without it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

import plural.robust.aggregators  # noqa: F401  (registers the aggregator's chain builder)
from plural.config import ConfigError
from plural.core.algorithm import full_params
from plural.core.metrics import summarize
from plural.core.rng import numpy_rng
from plural.core.trainer import Mixture
from plural.data.federated import FederatedDataset
from plural.engine.backends import WorkerEnv
from plural.engine.sampler import cohort_size
from plural.robust.aggregators import check_cohort
from plural.robust.attacks import (
    ModelAttack,
    Trigger,
    choose_malicious,
    make_trigger,
    poison_data,
    poison_replies,
    triggered_test,
)
from plural.robust.availability import Availability, load_availability, round_hour
from plural.robust.config import MODEL_ATTACKS, OMNISCIENT_ATTACKS

FAILED, DROPPED, LATE = "failed", "dropout", "deadline"


class TooManyFailures(RuntimeError):
    """More clients failed than ``faults.max_failures`` allows."""


@dataclasses.dataclass(frozen=True)
class ClientFailure:
    """The reply of a client whose code raised (isolated by :class:`GuardedAlgorithm`)."""

    error: str


def _guarded(method: Callable[..., Any], message: Any, state: Any, *args: Any) -> Any:
    try:
        return method(message, state, *args)
    except Exception as err:  # isolating any error of client code is the point
        return ClientFailure(f"{type(err).__name__}: {err}"), state


class GuardedAlgorithm:
    """The algorithm as the workers see it when failures are isolated: each client phase
    returns a :class:`ClientFailure` instead of raising. Phases keep their names, so every
    client draws from the same generators as without the guard."""

    def __init__(self, algorithm: Any) -> None:
        self.algorithm = algorithm

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "algorithm":
            raise AttributeError(name)
        return functools.partial(_guarded, getattr(self.algorithm, name))


class ClientsFailed(Exception):
    """Raised inside a round when clients failed; the engine replays the round without them
    (client states of the attempt are discarded)."""

    def __init__(self, failures: Mapping[int, tuple[str, str]]) -> None:
        super().__init__(f"{len(failures)} client(s) failed")
        self.failures = dict(failures)


@dataclasses.dataclass
class RoundHooks:
    """The dispatcher's view of one round (one attempt of it)."""

    round: int
    absent: dict[int, str]
    """Sampled clients that do not reply this round, and why (dropout, deadline, failed)."""
    guard: bool
    attack: ModelAttack | None
    charged: bool = False
    poisoned: int = 0

    def poison(
        self, phase: str, cohort: Sequence[int], replies: list[Any], messages: Callable[[int], Any]
    ) -> list[Any]:
        """The replies of one dispatch with the malicious clients' updates rewritten."""
        if self.attack is None or phase != "client_update":
            return replies
        replies, count = poison_replies(self.attack, self.round, cohort, replies, messages)
        self.poisoned += count
        return replies


@dataclasses.dataclass
class Robustness:
    """A run's attackers, faults and availability (see the module docstring)."""

    seed: int
    malicious: list[int]
    attack: ModelAttack | None
    trigger: Trigger | None
    availability: Availability | None
    dropout: float
    deadline: float | None
    seconds_per_round: np.ndarray | None
    """Each client's nominal training time (samples x epochs / throughput x speed)."""
    speed_jitter: float
    max_failures: int | None
    active: bool

    @classmethod
    def build(cls, cfg: Any, federation: FederatedDataset) -> Robustness:
        """Checks and draws for a run; ConfigErrors before any training."""
        n = federation.num_clients
        cohort = cohort_size(n, cfg.sampling)
        check_cohort(cfg.aggregator, cohort)
        attack_cfg, faults = cfg.attack, cfg.faults
        malicious = choose_malicious(attack_cfg, n, cfg.seed)
        trigger = make_trigger(attack_cfg, federation) if attack_cfg.name == "backdoor" else None
        model_attack = (
            ModelAttack(attack_cfg, frozenset(malicious), cfg.seed)
            if attack_cfg.name in MODEL_ATTACKS
            else None
        )
        availability = (
            load_availability(cfg.sampling.availability, n, cfg.seed)
            if cfg.sampling.availability is not None
            else None
        )
        seconds = None
        if faults.deadline is not None:
            seconds = nominal_seconds(federation, cfg, faults.throughput, faults.speed_spread)
        active = (
            attack_cfg.active
            or faults.active
            or availability is not None
            or cfg.aggregator.name != "mean"
        )
        return cls(
            cfg.seed,
            malicious,
            model_attack,
            trigger,
            availability,
            faults.dropout,
            faults.deadline,
            seconds,
            faults.speed_jitter,
            faults.max_failures,
            active,
        )

    # ---- before a round ------------------------------------------------------------------

    def poison_data(self, cfg: Any, federation: FederatedDataset) -> FederatedDataset:
        return poison_data(cfg.attack, federation, self.malicious, cfg.seed, self.trigger)

    def available(self, round_index: int, round_hours: float) -> list[int] | None:
        if self.availability is None:
            return None
        return self.availability.available(round_hour(round_index, round_hours))

    def absent(self, cohort: Sequence[int], round_index: int) -> dict[int, str]:
        """Sampled clients that will not reply: dropouts, then those past the deadline; each
        draw from (seed, round, client, purpose)."""
        out: dict[int, str] = {}
        for cid in cohort:
            if (
                self.dropout > 0
                and numpy_rng(self.seed, round_index, cid, "dropout").random() < self.dropout
            ):
                out[cid] = DROPPED
            elif (
                self.deadline is not None and self.client_seconds(cid, round_index) > self.deadline
            ):
                out[cid] = LATE
        return out

    def client_seconds(self, client: int, round_index: int) -> float:
        """Simulated seconds of a client's training this round: its nominal time times a
        log-normal slow-down drawn from (seed, round, client, "speed")."""
        assert self.seconds_per_round is not None
        jitter = numpy_rng(self.seed, round_index, client, "speed").normal(0.0, self.speed_jitter)
        return float(self.seconds_per_round[client] * np.exp(jitter))

    def hooks(self, round_index: int, absent: Mapping[int, str]) -> RoundHooks:
        return RoundHooks(round_index, dict(absent), self.max_failures is not None, self.attack)

    # ---- after a round --------------------------------------------------------------------

    def check_failures(self, total: int, failures: Sequence[Mapping[str, Any]]) -> None:
        if self.max_failures is not None and total > self.max_failures:
            listed = "; ".join(
                f"round {f['round']} client {f['client']} ({f['phase']}): {f['error']}"
                for f in failures[-5:]
            )
            raise TooManyFailures(
                f"faults.max_failures: {total} client failures exceed the {self.max_failures} "
                f"allowed; the last: {listed}"
            )

    def clean_summary(self, rows: pd.DataFrame) -> dict[str, Any]:
        """Accuracy over the clients that are not malicious, per evaluated split."""
        bad = set(self.malicious)
        out: dict[str, Any] = {}
        for split, part in rows.groupby("split"):
            if split == "fit":
                continue
            clean = part[~part["client"].isin(bad)]
            if len(clean):
                out[str(split)] = summarize(
                    clean["accuracy"].to_numpy(), clean["samples"].to_numpy()
                )
        return out

    def attack_success(
        self, algorithm: Any, server: Any, store: Any, env: WorkerEnv
    ) -> float | None:
        """The backdoor's success: the share of the clean clients' triggered test inputs
        (those whose label is not the target) that each client's own model (the one it is
        evaluated with) classifies as the target."""
        if self.trigger is None:
            return None
        bad = set(self.malicious)
        hits, total = 0, 0
        for cid in range(env.federation.num_clients):
            split = None if cid in bad else triggered_test(env.federation.client(cid), self.trigger)
            if split is None:
                continue
            params = algorithm.evaluated(server, store.get(cid), cid)[""]
            trainer = env.trainer_for(cid)
            if isinstance(params, Mixture):
                result = trainer.evaluate_mixture(params, split.x, split.y, env.eval_batch_size)
            else:
                result = trainer.evaluate(
                    full_params(params, trainer), split.x, split.y, env.eval_batch_size
                )
            hits += result.correct
            total += result.count
        return hits / total if total else None

    def play_round(
        self,
        algorithm: Any,
        server: Any,
        round_index: int,
        cohort: list[int],
        available: list[int] | None,
        diagnostics: Sequence[Mapping[str, Any]],
        new_context: Callable[[], Any],
    ) -> tuple[Any, Any, dict[str, Any]]:
        """One round with faults and attackers: absent clients are left out of the cohort
        the algorithm sees, and a round in which clients failed is played again without them
        (the failed attempt's client states are dropped). Returns the new server state, the
        round's context and its record for ``diagnostics.jsonl``."""
        absent = self.absent(cohort, round_index)
        failures: list[dict[str, Any]] = []
        earlier = sum(int(d.get("failures", 0)) for d in diagnostics)
        while True:
            ctx = new_context()
            ctx.hooks = hooks = self.hooks(round_index, absent)
            present = [c for c in cohort if c not in absent]
            try:
                new_server = algorithm.round(server, present, ctx) if present else server
            except ClientsFailed as failed:
                for cid, (phase, error) in sorted(failed.failures.items()):
                    if cid in absent:  # a phase that every client runs: cannot go on without it
                        raise RuntimeError(
                            f"round {round_index}: client {cid} failed in phase {phase!r}, "
                            f"which the algorithm runs on every client: {error}"
                        ) from None
                    absent[cid] = FAILED
                    failures.append(
                        {"round": round_index, "client": cid, "phase": phase, "error": error}
                    )
                self.check_failures(earlier + len(failures), failures)
                continue
            ctx.commit()
            reasons = list(absent.values())
            record = {
                "sampled": len(cohort),
                "dropouts": reasons.count(DROPPED),
                "deadline_missed": reasons.count(LATE),
                "failures": len(failures),
                "failed": failures,
                "round_lost": not present,
                "poisoned": hooks.poisoned,
                **({"available": len(available)} if available is not None else {}),
            }
            return new_server, ctx, record

    def round_metrics(
        self,
        rows: list[dict[str, Any]],
        algorithm: Any,
        server: Any,
        store: Any,
        env: WorkerEnv | None,
    ) -> dict[str, Any]:
        """Clean clients' accuracy and the backdoor's success after an evaluated round."""
        if not self.malicious:
            return {}
        out: dict[str, Any] = {}
        for split, stats in self.clean_summary(pd.DataFrame(rows)).items():
            out[f"clean_{split}_accuracy_mean"] = stats["mean"]
            out[f"clean_{split}_accuracy_worst10"] = stats["worst10"]
        if self.trigger is not None and env is not None:
            out["attack_success"] = self.attack_success(algorithm, server, store, env)
        return out

    def summary(
        self,
        cfg: Any,
        diagnostics: Sequence[Mapping[str, Any]],
        metrics: pd.DataFrame,
        last_eval: int,
    ) -> dict[str, Any]:
        """The ``robustness`` entry of ``summary.json``: the rule, the attack and its
        clients, the clean clients' accuracy at the last evaluated round, the backdoor's
        success, and the faults of the whole run."""
        totals = {
            key: sum(int(d.get(key, 0)) for d in diagnostics)
            for key in ("dropouts", "deadline_missed", "failures", "round_lost")
        }
        out: dict[str, Any] = {
            "aggregator": cfg.aggregator.name,
            "attack": cfg.attack.name,
            "omniscient": cfg.attack.name in OMNISCIENT_ATTACKS,
            "malicious": list(self.malicious),
            "dropouts": totals["dropouts"],
            "deadline_missed": totals["deadline_missed"],
            "failures": totals["failures"],
            "rounds_lost": totals["round_lost"],
        }
        if self.malicious:
            out["clean"] = self.clean_summary(metrics[metrics["round"] == last_eval])
        success = [d["attack_success"] for d in diagnostics if "attack_success" in d]
        if success:
            out["attack_success"] = success[-1]
        return {"robustness": out}

    def describe(self) -> dict[str, Any]:
        """What ``federation.json`` records: the malicious clients and, for an omniscient
        attack (ALIE, IPM, min-max), that the attackers saw every honest update of each
        round, which no real attacker is guaranteed to."""
        described: dict[str, Any] = {"malicious": list(self.malicious)}
        if self.attack is not None and self.attack.config.name in OMNISCIENT_ATTACKS:
            described["omniscient_attack"] = (
                f"{self.attack.config.name} sees every honest update of the round it poisons"
            )
        return described


def nominal_seconds(
    federation: FederatedDataset, cfg: Any, throughput: float, spread: float
) -> np.ndarray:
    """Each client's training time at its own speed: samples seen per round (epochs x train
    samples, or steps x batch size) / (throughput x speed), the speed log-normal(0, spread)
    drawn from (seed, client, "speed")."""
    train = cfg.train
    sizes = federation.sizes("train").astype(np.float64)
    if train.local_steps is not None:
        work = np.minimum(sizes, train.batch_size) * train.local_steps
    else:
        work = sizes * train.local_epochs
    speeds = np.array(
        [np.exp(numpy_rng(cfg.seed, "speed", c).normal(0.0, spread)) for c in range(len(sizes))]
    )
    return work / (throughput * speeds)


# Algorithms that average without passing a generator to the chain: rules are refused for
# them before the run starts (none today; pFedLIA passes the round's aggregation generator).
NO_GENERATOR: tuple[str, ...] = ()


def averages_through_chain(cls: type) -> bool:
    """Whether an algorithm class combines client models with the run's aggregation chain:
    FedAvg and the classes built on it that keep FedAvg's ``combine`` and ``aggregate``
    (clustered methods, whose per-cluster aggregation is FedAvg's, included)."""
    from plural.algorithms.clustered import Clustered
    from plural.algorithms.fedavg import FedAvg

    if not issubclass(cls, FedAvg) or getattr(cls, "name", "") in NO_GENERATOR:
        return False
    for klass in cls.__mro__[: cls.__mro__.index(FedAvg)]:
        if klass is not Clustered and ("aggregate" in vars(klass) or "combine" in vars(klass)):
            return False
    return True


def sends_averaged_models(cls: type) -> bool:
    """Whether an algorithm's clients send models that the server averages FedAvg's way
    (what model-poisoning attacks rewrite)."""
    from plural.algorithms.clustered import Clustered
    from plural.algorithms.fedavg import FedAvg

    if not issubclass(cls, FedAvg):
        return False
    own = cls.__mro__[: cls.__mro__.index(FedAvg)]
    return not any(k is not Clustered and "aggregate" in vars(k) for k in own)


def check_algorithm(cfg: Any, algorithm: Any) -> None:
    """ConfigErrors before any work for settings that would silently do nothing: a robust
    rule for an algorithm that aggregates its own way, a model-poisoning attack on one whose
    clients do not send models back, an attack that starts after the last round."""
    from plural.registry import ALGORITHMS

    name = cfg.algorithm.name
    base = getattr(algorithm, "base", algorithm)  # fine-tuning averages with its base
    if cfg.aggregator.name != "mean" and not averages_through_chain(type(base)):
        able = [e.name for e in ALGORITHMS if averages_through_chain(e.target)]
        able.append("finetune of any of these")
        raise ConfigError(
            f"aggregator.name: {cfg.aggregator.name!r} replaces the weighted mean of the "
            f"averaging algorithms ({', '.join(able)}); {name!r} combines clients its own way, "
            "so the rule would not act (use aggregator: {name: mean})"
        )
    if cfg.attack.name in MODEL_ATTACKS and not sends_averaged_models(type(base)):
        raise ConfigError(
            f"attack.name: {cfg.attack.name!r} rewrites the model updates clients send; "
            f"{name!r} clients do not send a model averaged by the server. Use a data-"
            "poisoning attack (label_flip, backdoor) or an averaging algorithm"
        )
    if cfg.attack.active and cfg.attack.start_round > cfg.rounds:
        raise ConfigError(
            f"attack.start_round: {cfg.attack.start_round} is after the last round ({cfg.rounds})"
        )
