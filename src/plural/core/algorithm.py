"""The Algorithm interface, the messages that cross the server/client boundary, and state.

An algorithm is a set of small pure functions over explicit state. The engine owns the round
loop, the client-state store and the backends; an algorithm only says what the server
broadcasts, what a client does with it, how the server combines what comes back and which
model evaluates each client. Multi-phase methods override :meth:`Algorithm.round` and still
send every piece of client work through ``ctx.map`` so that every backend applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from plural.config import ConfigError
from plural.core.aggregation import PLAIN, AggregationChain
from plural.core.params import Params, clone
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData


@dataclasses.dataclass(frozen=True)
class ModelMessage:
    """Server to client: a set of parameters."""

    params: Params


@dataclasses.dataclass(frozen=True)
class Update:
    """Client to server: what one client sends back after its local work.

    Only tensors count as communication (``params`` and ``extra``); the rest is small
    metadata: ``num_samples`` trained on, ``loss`` (mean training loss), ``reported_samples``
    (the count the client chose to reveal, e.g. bucketed and noised for privacy; aggregation
    weights use it when set), ``start_loss`` (training loss at the model received, for
    fairness-aware weighting), ``val_loss`` (validation loss at the model received, for
    methods that watch for drift; NaN when not measured) and ``complete`` (False for a
    straggler that did less work). ``extra`` holds only tensors that travel.
    """

    num_samples: int
    params: Params | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    loss: float = float("nan")
    reported_samples: float | None = None
    start_loss: float = float("nan")
    val_loss: float = float("nan")
    complete: bool = True


@dataclasses.dataclass(frozen=True)
class OnClient:
    """Some entries of a client's model; the worker completes them with that client's own
    initial parameters (the server never holds a client's local model; for a client that
    has not trained yet, evaluation uses these entries over its initial model)."""

    params: Params


def full_params(params: Params | OnClient, trainer: LocalTrainer) -> Params:
    """A whole model for the trainer's architecture: ``params`` itself, or the entries of an
    :class:`OnClient` over the architecture's initial parameters."""
    return trainer.complete(params.params) if isinstance(params, OnClient) else params


def check_shared_shapes(info: FederationInfo, shared: Sequence[str], what: str) -> None:
    """ConfigError unless every entry in ``shared`` has the same shape in every architecture
    of a model family (entries that travel between clients must fit every client's model)."""
    for name in shared:
        shapes = {tuple(member.get(name, ())) for member in info.member_shapes}
        missing = [k + 1 for k, member in enumerate(info.member_shapes) if name not in member]
        if missing or len(shapes) > 1:
            raise ConfigError(
                f"{what}: entry {name!r} is shared but "
                + (
                    f"architecture(s) {missing} do not have it"
                    if missing
                    else f"its shape differs between architectures ({sorted(shapes)})"
                )
                + "; with clients of different architectures, share only entries whose "
                "shapes agree (e.g. '@last', the classifier)"
            )


PartT = TypeVar("PartT")
_NO_DEFAULT: Any = object()


@dataclasses.dataclass(frozen=True)
class ServerState:
    """The server's state: global parameters plus the algorithm's own parts.

    Each component keeps its part of ``extra`` as one frozen dataclass whose class says under
    which key (``KEY``); :meth:`part` reads it and :meth:`with_parts` returns a new state with
    parts replaced, so a step never writes into the state it was given. Checkpoints store the
    parts field by field (:mod:`plural.safety.plain`).
    """

    params: Params
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def part(self, kind: type[PartT], default: PartT = _NO_DEFAULT) -> PartT:
        """The part of type ``kind`` (stored under ``kind.KEY``); ``default`` where absent."""
        value = self.extra.get(_part_key(kind))
        if isinstance(value, kind):
            return value
        if value is None and default is not _NO_DEFAULT:
            return default
        found = "nothing" if value is None else f"a {type(value).__name__}"
        raise TypeError(
            f"this server state holds {found} under {_part_key(kind)!r}, not a "
            f"{kind.__name__}: it was made by another algorithm (or an older plural)"
        )

    def with_parts(self, *parts: Any, params: Params | None = None) -> ServerState:
        """A new state with ``parts`` stored under their keys (and ``params`` if given)."""
        extra = {**self.extra, **{_part_key(type(p)): p for p in parts}}
        return ServerState(self.params if params is None else params, extra)


def _part_key(kind: type) -> str:
    key = getattr(kind, "KEY", None)
    if not isinstance(key, str):
        raise TypeError(f"{kind.__name__} is not a server-state part: it has no KEY string")
    return key


@dataclasses.dataclass(frozen=True)
class FederationInfo:
    """What the server may know about the federation when it starts."""

    num_clients: int
    num_classes: int
    input_shape: tuple[int, ...]
    groups: np.ndarray | None
    parameters: tuple[str, ...] = ()
    """Names of the model's trainable parameters (the other entries are buffers)."""
    norm_layers: tuple[str, ...] = ()
    """State-dict names of the model's normalisation layers (for ``@norm`` masks)."""
    fresh_params: Callable[[int], Params] | None = None
    """Initial parameters drawn from another seed (``fresh_params(k)``: the k-th draw), for
    methods that start several models at random (IFCA); None where unavailable."""
    architectures: tuple[int, ...] = ()
    """Each client's architecture (index into ``member_shapes``); () when every client has
    the same model."""
    member_shapes: tuple[Mapping[str, tuple[int, ...]], ...] = ()
    """Entry shapes of each architecture of a model family (empty for one model)."""

    @property
    def heterogeneous(self) -> bool:
        """Whether clients have different model architectures."""
        return len(self.member_shapes) > 1


class RoundContext(Protocol):
    """What the engine gives :meth:`Algorithm.round` (see ``plural.engine.loop``)."""

    round: int
    server: ServerState
    evaluating: bool
    """Whether the engine evaluates every client after this round."""
    num_clients: int
    clients: Sequence[int]
    """The clients that take part in training: all but ``split.unseen_clients``, which a
    method never trains, scores or clusters (they are served as newcomers)."""

    def map(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        *,
        per_client: Mapping[int, Any] | None = None,
    ) -> list[Any]:
        """Run ``algorithm.<phase>`` on each client of ``cohort``; replies in cohort order.

        Every client receives ``message``, or its own ``per_client[client_id]``.
        """
        ...

    def stream(
        self,
        phase: str,
        cohort: Sequence[int],
        message: Any = None,
        *,
        per_client: Mapping[int, Any] | None = None,
    ) -> Iterator[Any]:
        """:meth:`map`'s replies one at a time, in cohort order, as they come back, so that
        the server can fold each into its aggregate and drop it (streaming aggregation)."""
        ...

    def rng(self, purpose: str) -> np.random.Generator:
        """A server-side generator derived from (seed, round, purpose)."""
        ...


class Algorithm:
    """Base class. Subclasses set ``config`` in ``__init__`` and override what differs.

    Client-side phases (``client_update`` and any extra phase an algorithm adds) have the
    signature ``(message, state, client, trainer, rng) -> (reply, new_state)``; they run in a
    worker, see only the message, their own state and their own data, and must not mutate
    their inputs.
    """

    name: ClassVar[str] = "algorithm"
    in_demo: ClassVar[bool] = True
    """Whether ``plural demo`` runs it (False for methods that need special models or data)."""
    has_server_model: ClassVar[bool] = True
    """False for methods whose server holds no model (each client's own only): they are not
    scored on a server test set (``plural.engine.heldout``)."""
    needs_validation: ClassVar[bool] = False
    """Whether clients score on their own validation split during training (the run then
    refuses a federation with a client that has none, before training)."""
    aggregation: AggregationChain = PLAIN
    """How the server combines client models (clipping, robust rule, noise; see
    :mod:`plural.core.aggregation`); set from the run's config when the run is assembled.
    Averaging algorithms apply it in ``FedAvg.combine``."""
    model_heterogeneous: ClassVar[bool] = False
    """Whether clients may have different architectures (a model family such as
    ``cnn_family``); such methods start each client from its own initial parameters
    (``trainer.initial_params``) and share only entries whose shapes agree."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        """Server state before round 1, from the initial model parameters."""
        return ServerState(params=params)

    def prepare_model(
        self, model: nn.Module, input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """The module clients train, built from the configured model (each architecture of a
        family). Methods that add modules (an adapter, a shared small model) wrap it here;
        the engine seeds the call the same for every architecture, so added modules start
        equal. Default: the model itself."""
        return model

    def init_client(self, server: ServerState, client_id: int) -> Any:
        """A client's state the first time it is needed (None: the algorithm keeps none)."""
        return None

    def broadcast(self, server: ServerState) -> Any:
        """What every sampled client receives."""
        return ModelMessage(server.params)

    def client_update(
        self,
        message: Any,
        state: Any,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Any]:
        raise NotImplementedError

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        raise NotImplementedError

    def personalized(self, server: ServerState, state: Any, client_id: int) -> Params | OnClient:
        """The parameters that evaluate ``client_id`` (global methods: the global model)."""
        return server.params

    def cluster_assignment(self, server: ServerState) -> np.ndarray | None:
        """Each client's cluster (``-1``: none yet) for methods that cluster clients; the
        engine then records cluster quality every round. None for other methods."""
        return None

    def check(self, experiment: Any) -> None:
        """Raise :class:`~plural.config.ConfigError` for a run config (an
        ``ExperimentConfig``) this algorithm cannot use, before any work starts."""

    def artifacts(self, server: ServerState) -> Mapping[str, Any]:
        """Named results the engine saves in the run directory (``artifacts/<name>``): NumPy
        arrays as ``.npy`` (a clients x clients matrix is also drawn as a heatmap ordered by
        true group, ``.png``) and JSON-able mappings as ``.json``. A name is written once, the
        first round it appears, so a name should identify its content (e.g. carry the round)."""
        return {}

    def summary(self, server: ServerState) -> dict[str, Any]:
        """Method-specific figures for ``summary.json`` (under the algorithm's name)."""
        return {}

    def evaluated(
        self, server: ServerState, state: Any, client_id: int
    ) -> dict[str, Params | OnClient]:
        """Every model to score ``client_id`` with, by name. The unnamed one (``""``) is the
        client's model; others (e.g. ``"global"``) give rows with split ``"test@global"``."""
        return {"": self.personalized(server, state, client_id)}

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        """One round: broadcast, local updates, aggregation."""
        updates = ctx.map("client_update", cohort, self.broadcast(server))
        return self.aggregate(server, updates, ctx.rng("aggregate"))


def personal_state(message: ModelMessage, state: Params | None, trainer: LocalTrainer) -> Params:
    """The client's personal entries: its state, or, the first time, the entries of its own
    initial model that the message does not carry."""
    if state is not None:
        return state
    return clone({n: t for n, t in trainer.initial_params.items() if n not in message.params})


def reported_cluster(update: Update) -> int:
    """The cluster a clustered method's client said it trained (``Update.extra["cluster"]``)."""
    return int(update.extra["cluster"])


def cluster_tensor(cluster: int) -> torch.Tensor:
    """A cluster index as it travels in a reply."""
    return torch.tensor(cluster, dtype=torch.int64)


def require_classification(experiment: Any, why: str) -> None:
    """A ConfigError unless the run trains a classifier (``train.loss: cross_entropy``);
    ``why`` says what in the method needs classes (``"fedproto learns class prototypes"``)."""
    loss = experiment.train.loss
    if loss != "cross_entropy":
        raise ConfigError(f"train.loss: {why}, so it needs 'cross_entropy', got {loss!r}")
