"""plural's ClientApp: a device runs the clients it holds, with their states kept there.

The ClientApp needs no config of its own. The ServerApp first sends each node the worker
set-up (model template, training settings, seed: :class:`~plural.engine.backends.WorkerSetup`
without the federation) and the plural config; the node answers with the clients it holds:
``--node-config "clients='0,3'"``, or ``partition-id=K num-partitions=P`` (clients ``c`` with
``c % P == K``; Flower's simulation sets these). The node reads each client's data from its
data spec (``data='PATH'``, ``{client}`` in it is replaced by the client id; see
:mod:`plural.flower.data`) or, without one (simulation), from the config's federation builder.

Then every work message carries a task and work items, exactly what plural's other backends
run (:func:`~plural.engine.kept_state.run_kept_phase`, evaluation, gradients). Client states
live in the node's ``Context.state`` (:class:`ContextStates`), so they survive between
rounds on the device and never reach the server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
from collections.abc import Iterator
from typing import Any

import torch

from plural.config import ConfigError
from plural.engine.backends import WorkerEnv
from plural.experiment import ExperimentConfig, load_config
from plural.flower import wire
from plural.flower.data import load_client, local_federation

_SETUP_KEY = "plural.setup"
_TAG_KEY = "plural.tag"
_STATE_PREFIX = "plural.state."
_BASE_PREFIX = "plural.base."
_ENVS: dict[str, WorkerEnv] = {}
"""Per process: environments already built, by set-up and data (a ClientApp process may
serve several nodes in simulation, or be started again for every message in deployment)."""


class ContextStates:
    """The client states a node keeps, in its Flower ``Context.state`` (one pickled state per
    client). A round that the server plays again without failed clients (``faults``) starts
    again from the states the clients had when the round began."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def _records(self, prefix: str) -> dict[int, bytes]:
        return {
            int(key[len(prefix) :]): record[wire.PAYLOAD]
            for key, record in self._state.config_records.items()
            if key.startswith(prefix)
        }

    def _set(self, key: str, data: bytes | None) -> None:
        from flwr.app import ConfigRecord

        if data is None:
            if key in self._state:
                del self._state[key]
        else:
            self._state[key] = ConfigRecord({wire.PAYLOAD: data})

    def begin(self, round_index: int, attempt: int) -> None:
        """Called before each work message: a new round keeps the states as the round's
        start; another attempt of the same round goes back to them."""
        from flwr.app import ConfigRecord

        tag = self._state.config_records.get(_TAG_KEY)
        seen = (int(tag["round"]), int(tag["attempt"])) if tag is not None else None
        if seen == (round_index, attempt):
            return
        current, base = self._records(_STATE_PREFIX), self._records(_BASE_PREFIX)
        if seen is not None and seen[0] == round_index:  # the round is played again
            for cid in set(current) | set(base):
                self._set(_STATE_PREFIX + str(cid), base.get(cid))
        else:
            for cid in set(current) | set(base):
                self._set(_BASE_PREFIX + str(cid), current.get(cid))
        self._state[_TAG_KEY] = ConfigRecord({"round": round_index, "attempt": attempt})

    def get(self, client_id: int) -> Any:
        record = self._state.config_records.get(_STATE_PREFIX + str(client_id))
        return None if record is None else wire.loads(record[wire.PAYLOAD])

    def put(self, client_id: int, state: Any) -> None:
        self._set(_STATE_PREFIX + str(client_id), None if state is None else wire.dumps(state))

    def __contains__(self, client_id: object) -> bool:
        return _STATE_PREFIX + str(client_id) in self._state.config_records

    def __len__(self) -> int:
        return len(self._records(_STATE_PREFIX))

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._records(_STATE_PREFIX)))

    def snapshot(self) -> dict[int, Any]:
        raise RuntimeError("plural.flower: client states stay on their node")

    def commit(self) -> None:
        pass

    def restore(self, snapshot: Any) -> None:
        raise RuntimeError("plural.flower: client states stay on their node")

    def close(self) -> None:
        pass


def node_clients(node_config: Any, num_clients: int) -> list[int]:
    """The clients this node holds, from its node config; a ConfigError if it names none or
    clients the federation does not have."""
    if "clients" in node_config:
        text = str(node_config["clients"])
        try:
            clients = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
        except ValueError:
            raise ConfigError(
                f"node config clients={text!r}: give client ids separated by commas, e.g. '0,3'"
            ) from None
    elif "partition-id" in node_config and "num-partitions" in node_config:
        k, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        if not 0 <= k < parts:
            raise ConfigError(f"node config: partition-id {k} is not in [0, {parts})")
        clients = list(range(k, num_clients, parts))
    else:
        raise ConfigError(
            "node config: say which clients this node holds, with clients='0,3' or "
            "partition-id=K num-partitions=P"
        )
    outside = [c for c in clients if not 0 <= c < num_clients]
    if outside or not clients:
        raise ConfigError(
            f"node config: clients {outside or clients} are not in the federation's "
            f"0..{num_clients - 1}"
        )
    return clients


_BUILT: dict[str, Any] = {}


def _built_federation(cfg: ExperimentConfig) -> Any:
    """The config's whole federation, built once per process (simulation: no data spec)."""
    from plural.robust.runtime import Robustness
    from plural.runner import build_federation

    key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    if key not in _BUILT:
        federation = build_federation(cfg)
        _BUILT[key] = Robustness.build(cfg, federation).poison_data(cfg, federation)
    return _BUILT[key]


def _environment(context: Any) -> WorkerEnv:
    """This node's worker environment, built from the set-up the server sent."""
    record = context.state.config_records.get(_SETUP_KEY)
    if record is None:
        raise RuntimeError("plural.flower: this node received work before its set-up")
    setup_bytes: bytes = record[wire.PAYLOAD]
    data = str(context.node_config.get("data", ""))
    key = hashlib.sha256(setup_bytes + data.encode()).hexdigest()
    if key not in _ENVS:
        setup = wire.loads(setup_bytes)
        cfg = load_config(setup["config"])
        num_clients = setup["num_clients"]
        clients = node_clients(context.node_config, num_clients)
        if data:
            held = [load_client(data.format(client=cid), cfg, cid) for cid in clients]
            federation = local_federation(held, num_clients, setup["num_classes"])
        else:
            federation = _built_federation(cfg)
        threads = cfg.backend.threads_per_worker
        if threads is not None:
            torch.set_num_threads(threads)
        _ENVS[key] = WorkerEnv(dataclasses.replace(setup["worker"], federation=federation))
    return _ENVS[key]


def handle_setup(message: Any, context: Any) -> Any:
    """Keep the set-up in ``Context.state``; answer with the clients this node holds."""
    from flwr.app import ConfigRecord, Message

    try:
        content = message.content.config_records[wire.RECORD][wire.PAYLOAD]
        setup = wire.loads(content)
        clients = node_clients(context.node_config, setup["num_clients"])
        for key in [k for k in context.state if k.startswith("plural.")]:
            del context.state[key]  # a new plural run on this node: nothing of the last one
        context.state[_SETUP_KEY] = ConfigRecord({wire.PAYLOAD: content})
        _environment(context)  # read the data now: a bad data spec fails before round 1
        reply: dict[str, Any] = {"clients": clients}
    except Exception as error:  # the server reports it, with the node's id
        reply = {"error": f"{type(error).__name__}: {error}"}
    return Message(wire.pack(reply), reply_to=message)


def run_work(work: dict[str, Any], context: Any) -> list[Any]:
    """The results of one message's work items on this node's clients (their states in
    ``Context.state``)."""
    env = _environment(context)
    states = ContextStates(context.state)
    states.begin(work["round"], work["attempt"])
    env.kept_states = states  # type: ignore[attr-defined]
    task = work["task"]
    return [task(env, item) for item in work["items"]]


def node_config(context: Any) -> ExperimentConfig:
    """The plural config of the run this node serves (sent with its set-up)."""
    record = context.state.config_records.get(_SETUP_KEY)
    if record is None:
        raise RuntimeError("plural.flower: this node received work before its set-up")
    return load_config(wire.loads(record[wire.PAYLOAD])["config"])


def handle_work(message: Any, context: Any) -> Any:
    """Run the work items of one message on this node's clients."""
    from flwr.app import Message

    try:
        reply: dict[str, Any] = {"results": run_work(wire.unpack(message.content), context)}
    except Exception:
        reply = {"error": traceback.format_exc(limit=8)}
    return Message(wire.pack(reply), reply_to=message)


def handle_masked_round(message: Any, context: Any) -> Any:
    """The ``train`` message of a SecAgg+ round, as Flower's mod hands it over: run this
    node's work items and answer with the vector to mask (see :mod:`plural.flower.secure`)."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    from plural.flower.secure import META_KEY, WORK_KEY, node_mean

    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    work = wire.loads(fitins.config[WORK_KEY])
    results = run_work(work, context)
    vector, weight, share = node_mean(node_config(context), results, work["template"])
    fitres = FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters(vector), weight, {META_KEY: wire.dumps(share)}
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)


def client_app() -> Any:
    """plural's Flower ``ClientApp`` (the same for every config). Flower's ``secaggplus_mod``
    takes the plain ``train`` messages of SecAgg+ rounds (see :mod:`plural.flower.secure`);
    plural's own messages pass it untouched."""
    wire.quiet_flower()
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[secaggplus_mod])
    app.query(wire.SETUP_TYPE.split(".")[1])(handle_setup)
    app.train(wire.WORK_TYPE.split(".")[1])(handle_work)
    app.train()(handle_masked_round)
    return app
