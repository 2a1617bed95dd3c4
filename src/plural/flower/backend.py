"""The server's side of plural in Flower: a backend that sends client work to SuperNodes.

:class:`FlowerBackend` is a plural backend (``map`` / ``imap`` over work items) whose workers
are Flower nodes, reached through the ServerApp's ``Grid``. Each node holds some clients
(see :mod:`plural.flower.client`); a call sends each node one message with the work items of
its clients and waits for the replies. Client states stay on the nodes
(:meth:`FlowerBackend.keep_states`), as with the Ray backend's actors, so the server holds
only which clients have one. The engine's round loop, its ledger of bytes and its run
directory are those of ``plural run``; only where client work runs changes.

A node that does not answer (a SuperNode stopped, or its reply later than ``timeout``) is a
failure of each of its clients in that phase: with ``faults.max_failures`` set the engine
plays the round again without them (the nodes go back to the states the round started
from), and they are not scored; without it the run stops with a message that says so.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from plural.config import ConfigError
from plural.engine.backends import ClientWork, EvalWork, PhaseCost, WorkerSetup, run_client_phase
from plural.engine.kept_state import (
    KEPT,
    HeldStates,
    KeptEvalWork,
    evaluate_kept,
    run_kept_phase,
)
from plural.experiment import ExperimentConfig
from plural.flower import secure, wire
from plural.robust.runtime import ClientFailure, GuardedAlgorithm

Item = TypeVar("Item")
Result = TypeVar("Result")
POLL_SECONDS = 0.5


class NodeUnavailable(RuntimeError):
    """A node did not answer and the run cannot go on without its clients."""


class FlowerBackend:
    """Client work on the Flower nodes that hold the clients."""

    def __init__(
        self,
        grid: Any,
        setup: WorkerSetup,
        cfg: ExperimentConfig,
        *,
        timeout: float | None = None,
        wait_for_nodes: float = 120.0,
        secagg: bool = False,
    ) -> None:
        self.grid = grid
        self.cfg = cfg
        self.secagg = secagg
        self.sizes = [int(n) for n in setup.federation.sizes("train")]
        self.num_clients = setup.federation.num_clients
        self.timeout = timeout
        self.states: NodeStates | None = None
        self._round_attempts: dict[int, int] = defaultdict(int)
        self.gone: set[int] = set()
        """Nodes that left a SecAgg+ round; later masked rounds go without them."""
        self.owner = self._connect(setup, cfg, wait_for_nodes)
        self.messages_sent = 0

    # ---- start: every client on exactly one node

    def _connect(self, setup: WorkerSetup, cfg: ExperimentConfig, wait: float) -> dict[int, int]:
        """Send the set-up to nodes as they connect until every client has a node."""
        from flwr.app import Message

        payload = {
            "worker": _without_data(setup),
            "config": cfg.to_dict(),
            "num_clients": self.num_clients,
            "num_classes": setup.federation.num_classes,
        }
        content = wire.pack(payload)
        owner: dict[int, int] = {}
        asked: set[int] = set()
        deadline = time.monotonic() + wait
        while len(owner) < self.num_clients:
            new = [n for n in self.grid.get_node_ids() if n not in asked]
            if new:
                messages = {
                    n: Message(content, dst_node_id=n, message_type=wire.SETUP_TYPE) for n in new
                }
                replies = _exchange(self.grid, messages, wait)
                asked.update(new)
                for node, reply in replies.items():
                    self._adopt(node, reply, owner)
            elif time.monotonic() > deadline:
                missing = sorted(set(range(self.num_clients)) - set(owner))
                raise ConfigError(
                    f"plural.flower: after {wait:.0f} s no node holds clients "
                    f"{_listed(missing)} ({len(asked)} node(s) connected); start a SuperNode "
                    "for them (--node-config \"clients='K'\" or partition-id/num-partitions)"
                )
            else:
                time.sleep(POLL_SECONDS)
        return owner

    def _adopt(self, node: int, reply: Any, owner: dict[int, int]) -> None:
        if reply.has_error():
            raise ConfigError(f"plural.flower: node {node} failed to start: {reply.error.reason}")
        answer = wire.unpack(reply.content)
        if "error" in answer:
            raise ConfigError(f"plural.flower: node {node} refused its set-up: {answer['error']}")
        for cid in answer["clients"]:
            if cid in owner:
                raise ConfigError(
                    f"plural.flower: client {cid} is held by nodes {owner[cid]} and {node}; "
                    "give each SuperNode different clients"
                )
            owner[cid] = node

    # ---- work

    def map(self, task: Callable[[Any, Item], Result], items: Sequence[Item]) -> list[Result]:
        return list(self.imap(task, items))

    def imap(self, task: Callable[[Any, Item], Result], items: Sequence[Item]) -> Iterator[Result]:
        """``[task(env, item) for item in items]``, each item on its client's node (one
        message per node), in order."""
        if not items:
            return
        if task is run_client_phase and self.states is not None:
            task = run_kept_phase  # type: ignore[assignment]
        from flwr.app import Message

        round_index = max(int(getattr(item, "round", 0)) for item in items)
        attempt = self._round_attempts[round_index]
        by_node: dict[int, list[int]] = defaultdict(list)
        for position, item in enumerate(items):
            by_node[self._node_of(item, position)].append(position)
        if self.secagg and task is run_kept_phase and _averaged(items):
            yield from self._masked(task, items, by_node, round_index, attempt)
            return
        messages = {}
        for node, positions in by_node.items():
            work = {
                "round": round_index,
                "attempt": attempt,
                "task": task,
                "items": [items[p] for p in positions],
            }
            messages[node] = Message(wire.pack(work), dst_node_id=node, message_type=wire.WORK_TYPE)
        self.messages_sent += len(messages)
        replies = _exchange(self.grid, messages, self.timeout)
        answers, problems = {}, {}
        for node in by_node:
            answers[node], problems[node] = _answer(replies.get(node), self.timeout)
        yield from self._results(task, items, by_node, answers, problems)

    def _results(
        self,
        task: Any,
        items: Sequence[Any],
        by_node: dict[int, list[int]],
        answers: dict[int, list[Any] | None],
        problems: dict[int, str],
    ) -> list[Any]:
        """Each item's result from its node's answer, in item order; the items of a node
        without one fail (see :meth:`_failed`) with that node's problem."""
        results: list[Any] = [None] * len(items)
        for node, positions in by_node.items():
            answer = answers.get(node)
            for k, position in enumerate(positions):
                if answer is not None:
                    results[position] = answer[k]
                else:
                    problem = problems.get(node, "no answer")
                    results[position] = self._failed(task, items[position], node, problem)
        return results

    def _masked(
        self,
        task: Any,
        items: Sequence[Any],
        by_node: dict[int, list[int]],
        round_index: int,
        attempt: int,
    ) -> Iterator[Any]:
        """The items' results through a SecAgg+ round of every node still there (see
        :mod:`plural.flower.secure`). A node that does not answer the round's first stage
        is gone: the round is masked again without it, and its clients fail (a dropout
        under ``faults``)."""
        template = secure.template_of(items[0].message)
        bound = secure.cohort_weight(self.cfg, self.sizes, [i.client_id for i in items])
        nodes = [n for n in sorted(set(self.owner.values())) if n not in self.gone]
        outcome = self._masked_once(task, items, by_node, nodes, template, bound, attempt)
        if not outcome.replies and 2 <= len(outcome.answered) < len(nodes):
            self.gone |= set(nodes) - outcome.answered
            self._round_attempts[round_index] += 1  # the nodes left go back to the round's start
            attempt = self._round_attempts[round_index]
            nodes = sorted(outcome.answered)
            outcome = self._masked_once(task, items, by_node, nodes, template, bound, attempt)
        left = dict.fromkeys(by_node, "it left the SecAgg+ round or the round halted")
        yield from self._results(task, items, by_node, dict(outcome.replies), left)

    def _masked_once(
        self,
        task: Any,
        items: Sequence[Any],
        by_node: dict[int, list[int]],
        nodes: Sequence[int],
        template: Any,
        bound: float,
        attempt: int,
    ) -> secure.MaskedRound:
        round_index = max(int(item.round) for item in items)
        payloads = {}
        for node in nodes:
            work = {
                "round": round_index,
                "attempt": attempt,
                "task": task,
                "items": [items[p] for p in by_node.get(node, [])],
                "template": template,
            }
            payloads[node] = wire.dumps(work)
        self.messages_sent += len(payloads)
        return secure.masked_round(self.grid, payloads, round_index, bound, self.timeout)

    def _node_of(self, item: Any, position: int) -> int:
        client_id = getattr(item, "client_id", None)
        if isinstance(client_id, int):
            return self.owner[client_id]
        nodes = sorted(set(self.owner.values()))
        return nodes[position % len(nodes)]

    def _failed(self, task: Any, item: Any, node: int, problem: str) -> Any:
        """What a client of a node that did not answer gives the engine."""
        where = f"node {node} did not answer ({problem})"
        if isinstance(item, ClientWork) and isinstance(item.algorithm, GuardedAlgorithm):
            self._round_attempts[item.round] += 1  # the engine plays the round again
            kept = KEPT if self.states is not None and item.client_id in self.states else None
            return ClientFailure(where), kept, PhaseCost(0.0, 0.0)
        if task is evaluate_kept and isinstance(item, KeptEvalWork):
            return []  # not scored this round
        if isinstance(item, EvalWork):
            return {}
        client = getattr(item, "client_id", "?")
        raise NodeUnavailable(
            f"plural.flower: client {client}'s {where}; set faults.max_failures to let rounds "
            "go on without the clients of nodes that drop out"
        )

    def environment(self) -> dict[str, Any]:
        """For ``environment.json``: whether the updates were masked (SecAgg+), and the
        nodes left out of masked rounds because they had gone."""
        if not self.secagg:
            return {}
        return {"flower_secagg": True, "flower_secagg_nodes_left_out": sorted(self.gone)}

    # ---- client states stay on the nodes

    def keep_states(self, store: Any) -> NodeStates:
        if len(store):
            raise ConfigError(
                "plural.flower: client states live on the devices, so a run with states in "
                "its checkpoint cannot be resumed through Flower; start a new run"
            )
        self.states = NodeStates()
        return self.states

    def close(self) -> None:
        self.states = None


class NodeStates(HeldStates):
    """The server's side of the states the nodes keep: only which clients have one."""

    holder = "node"

    def snapshot(self) -> dict[int, Any]:
        """Nothing: the states are on the devices (a checkpoint does not hold them)."""
        return {}

    def commit(self) -> None:
        pass

    def restore(self, snapshot: Any) -> None:
        if snapshot:
            raise ConfigError("plural.flower: client states cannot be handed to the nodes")
        self._held = set()

    def close(self) -> None:
        pass


def _averaged(items: Sequence[Any]) -> bool:
    """Whether ``items`` are the phase whose updates the server averages."""
    return all(isinstance(i, ClientWork) and i.phase == secure.SECURE_PHASE for i in items)


def _exchange(grid: Any, messages: dict[int, Any], timeout: float | None) -> dict[int, Any]:
    """Send one message per node; the replies by node. Replies are matched to messages by
    id: an error reply made by the SuperLink (a node it marked unavailable) comes from the
    SuperLink, not from the node."""
    received = list(grid.send_and_receive(list(messages.values()), timeout=timeout))
    node_of = {message.metadata.message_id: node for node, message in messages.items()}
    replies = {}
    for reply in received:
        node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        replies[node] = reply
    return replies


def _without_data(setup: WorkerSetup) -> WorkerSetup:
    import dataclasses

    return dataclasses.replace(setup, federation=None)  # type: ignore[arg-type]


def _answer(reply: Any, timeout: float | None) -> tuple[list[Any] | None, str]:
    """(results, "") of a node's reply, or (None, what went wrong)."""
    if reply is None:
        return None, f"no reply within {timeout} s" if timeout else "no reply"
    if reply.has_error():
        return None, f"Flower error {reply.error.code}: {reply.error.reason}"
    answer = wire.unpack(reply.content)
    if "error" in answer:
        raise RuntimeError(
            f"plural.flower: node {reply.metadata.src_node_id} failed:\n{answer['error']}"
        )
    return answer["results"], ""


def _listed(clients: Sequence[int]) -> str:
    shown = ", ".join(map(str, clients[:10]))
    return shown + (f" and {len(clients) - 10} more" if len(clients) > 10 else "")
