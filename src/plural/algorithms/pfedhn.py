"""pFedHN (Shamsian, Navon, Fetaya & Chechik 2021, "Personalized Federated Learning using
Hypernetworks", ICML 2021; arXiv 2103.04628).

The server holds a hypernetwork ``h(v_i; phi)`` and one embedding ``v_i`` per client; it maps a
client's embedding to the weights ``theta_i`` of that client's model. Each round it generates
``theta_i`` for every sampled client and sends it; the client trains it locally (the trainer's
local epochs) and sends back its trained weights ``theta~_i``. The server then moves ``phi``
and the embeddings along ``(grad_phi theta_i)^T (theta_i - theta~_i)``, summed over the
cohort: the chain rule through the hypernetwork of the client's update. A client is evaluated
with ``h(v_i; phi)``, so every client, sampled or not, has its own model.

The hypernetwork is the paper's: an MLP over the embedding (a linear layer and
``hidden_layers`` blocks of ReLU and linear, width ``hidden``) with one linear head per weight
tensor of the model. Its step is SGD with momentum and weight decay after clipping the
gradient norm, as the authors' code does. Defaults are the paper's: embedding width ``1 +
clients / 4``, width 100, 3 hidden layers, server learning rate 0.01, momentum 0.9, weight
decay 0.001, clipping at 50. The clients' local training uses the run's ``train`` settings
(the paper: 50 steps at learning rate 0.005 with momentum 0.9).

Only the model's parameters are generated; buffers (batch-norm statistics) stay with the
client as its state. The paper samples one client per step; with several a round their
contributions are summed, not averaged, so each embedding still moves by its own client's full
gradient and ``phi`` about as far as that many one-client steps would take it (clipping bounds
the step). The hypernetwork's heads hold ``hidden x (model size)`` numbers, so this suits
small target models, as in the paper.

Bytes: downlink the generated parameters, uplink the trained ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from plural.config import ConfigError, setting
from plural.core.aggregation import clip_to_norm
from plural.core.algorithm import (
    Algorithm,
    FederationInfo,
    ModelMessage,
    OnClient,
    RoundContext,
    ServerState,
    Update,
)
from plural.core.params import Params
from plural.core.server_opt import ServerOptimizerSettings, server_step
from plural.core.trainer import LocalTrainer
from plural.data.federated import ClientData
from plural.registry import ALGORITHMS

__all__ = ["HyperNetwork", "PFedHN", "PFedHNConfig", "PFedHNState", "pfedhn_state"]

NEWCOMER_EMBEDDING_STEPS = 100
"""Full-batch Adam steps fitting a newcomer's embedding (each one pass over its training
split). Measured on label-skew digits federations of 10 to 30 clients: unseen clients' mean
test accuracy 0.60 -> 0.91 (20 clients) and 0.50 -> 0.87 (30 clients); 300 steps add at most
0.04."""
NEWCOMER_EMBEDDING_LR = 0.2
"""Adam's step size for the newcomer's embedding (best of 0.01, 0.05 and 0.2 in the same
measurements)."""


@dataclasses.dataclass(frozen=True)
class PFedHNConfig:
    embed_dim: int | None = setting(
        None, help="client embedding width (null: 1 + clients / 4, the paper's)", ge=1
    )
    hidden: int = setting(100, help="width of the hypernetwork's hidden layers", ge=1)
    hidden_layers: int = setting(3, help="hidden ReLU-linear blocks after the first layer", ge=0)
    hnet_lr: float = setting(0.01, help="learning rate of the hypernetwork's SGD", gt=0)
    hnet_momentum: float = setting(0.9, help="momentum of the hypernetwork's SGD", ge=0, lt=1)
    hnet_weight_decay: float = setting(0.001, help="weight decay of the hypernetwork's SGD", ge=0)
    max_grad_norm: float | None = setting(
        50.0, help="clip the hypernetwork's gradient to this L2 norm (null: no clipping)", gt=0
    )


@dataclasses.dataclass(frozen=True)
class PFedHNState:
    """pFedHN's part of the server state (there is no global model)."""

    KEY: ClassVar[str] = "pfedhn"
    hypernetwork: Params
    """The hypernetwork's parameters (the client embeddings included)."""
    shapes: Mapping[str, tuple[int, ...]]
    """Name -> shape of each generated model parameter, in model order."""
    optimizer: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The state (momentum) of the hypernetwork's SGD."""


def pfedhn_state(server: ServerState) -> PFedHNState:
    """pFedHN's part of ``server``."""
    return server.part(PFedHNState)


class HyperNetwork(nn.Module):
    """Client embedding -> MLP -> one linear head per target parameter."""

    def __init__(
        self,
        num_clients: int,
        shapes: Mapping[str, tuple[int, ...]],
        embed_dim: int,
        hidden: int,
        hidden_layers: int,
    ) -> None:
        super().__init__()
        self.shapes = dict(shapes)
        self.embeddings = nn.Embedding(num_clients, embed_dim)
        layers: list[nn.Module] = [nn.Linear(embed_dim, hidden)]
        for _ in range(hidden_layers):
            layers += [nn.ReLU(), nn.Linear(hidden, hidden)]
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.ModuleDict(
            {_key(name): nn.Linear(hidden, int(np.prod(shape))) for name, shape in shapes.items()}
        )

    def forward(self, client_id: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.mlp(self.embeddings(client_id))
        return {
            name: self.heads[_key(name)](features).reshape(shape)
            for name, shape in self.shapes.items()
        }


def _key(name: str) -> str:
    """A module key for a parameter name (module keys cannot contain dots)."""
    return name.replace(".", "__")


@ALGORITHMS.register(
    "pfedhn",
    PFedHNConfig,
    "pFedHN: a server hypernetwork generates each client's model from its embedding",
)
class PFedHN(Algorithm):
    """pFedHN (Shamsian et al. 2021): see the module docstring."""

    name = "pfedhn"
    config: PFedHNConfig

    def __init__(self, config: PFedHNConfig) -> None:
        super().__init__(config)
        self._networks: dict[tuple[Any, ...], HyperNetwork] = {}  # built modules, by shape

    # ---- server side -------------------------------------------------------------------------

    def init(self, params: Params, info: FederationInfo, rng: np.random.Generator) -> ServerState:
        names = info.parameters or tuple(n for n, t in params.items() if t.is_floating_point())
        shapes = {name: tuple(params[name].shape) for name in names}
        if not shapes:
            raise ConfigError("model: pfedhn generates the model's parameters; it has none")
        network = self._network(info.num_clients, shapes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**62)))
            for module in network.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        hypernetwork = {n: t.detach().clone() for n, t in network.state_dict().items()}
        return ServerState({}).with_parts(PFedHNState(hypernetwork, shapes))

    def _network(self, num_clients: int, shapes: Mapping[str, tuple[int, ...]]) -> HyperNetwork:
        """The hypernetwork module for these targets (its parameters come from the state)."""
        cfg = self.config
        embed_dim = cfg.embed_dim or int(1 + num_clients / 4)
        key = (num_clients, tuple(shapes.items()), embed_dim)
        if key not in self._networks:
            with torch.random.fork_rng(devices=[]):  # its own initial values are not used
                self._networks[key] = HyperNetwork(
                    num_clients, shapes, embed_dim, cfg.hidden, cfg.hidden_layers
                )
        return self._networks[key]

    def generate(
        self, server: ServerState, client_id: int, hypernetwork: Params | None = None
    ) -> Params:
        """``h(v_i; phi)``: client ``client_id``'s parameters (with a graph to ``hypernetwork``
        when given; detached from the server state otherwise)."""
        kept = pfedhn_state(server)
        state = kept.hypernetwork if hypernetwork is None else hypernetwork
        num_clients = state["embeddings.weight"].shape[0]
        network = self._network(num_clients, kept.shapes)
        with torch.set_grad_enabled(hypernetwork is not None):
            return functional_call(network, state, (torch.tensor(client_id),))

    def broadcast(self, server: ServerState) -> ModelMessage:
        """Client 0's model (each client receives its own: see :meth:`round`)."""
        return ModelMessage(self.generate(server, 0))

    def round(self, server: ServerState, cohort: Sequence[int], ctx: RoundContext) -> ServerState:
        messages = {cid: ModelMessage(self.generate(server, cid)) for cid in cohort}
        updates = ctx.map("client_update", cohort, per_client=messages)
        return self.step(server, cohort, messages, updates)

    def step(
        self,
        server: ServerState,
        cohort: Sequence[int],
        messages: Mapping[int, ModelMessage],
        updates: Sequence[Update],
    ) -> ServerState:
        """One SGD step of the hypernetwork along the cohort's sum of
        ``(grad_phi theta_i)^T (theta_i - theta~_i)``."""
        cfg = self.config
        kept = pfedhn_state(server)
        current = kept.hypernetwork
        live = {n: t.detach().clone().requires_grad_(True) for n, t in current.items()}
        used = [(c, u) for c, u in zip(cohort, updates, strict=True) if u.params is not None]
        if not used:
            return server
        surrogate = torch.zeros((), dtype=torch.float64)
        for cid, update in used:
            generated = self.generate(server, cid, live)
            sent = messages[cid].params
            assert update.params is not None
            for name, theta in generated.items():
                change = (sent[name] - update.params[name]).detach()
                surrogate = surrogate + (theta * change).sum().double()
        grads = torch.autograd.grad(surrogate, list(live.values()), allow_unused=True)
        gradient = {
            n: torch.zeros_like(t) if g is None else g
            for (n, t), g in zip(live.items(), grads, strict=True)
        }
        if cfg.max_grad_norm is not None:
            clipped, _ = clip_to_norm(gradient, cfg.max_grad_norm)
            gradient = {n: g.to(current[n].dtype) for n, g in clipped.items()}
        # SGD with momentum and weight decay, as torch.optim.SGD, through the server step:
        # the target is the model one unit step down the decayed gradient.
        target = {
            n: current[n] - (gradient[n] + cfg.hnet_weight_decay * current[n]) for n in current
        }
        settings = ServerOptimizerSettings("momentum", cfg.hnet_lr, cfg.hnet_momentum)
        new, opt_state = server_step(current, target, kept.optimizer, settings)
        return server.with_parts(dataclasses.replace(kept, hypernetwork=new, optimizer=opt_state))

    def aggregate(
        self, server: ServerState, updates: list[Update], rng: np.random.Generator
    ) -> ServerState:
        raise NotImplementedError("pfedhn updates its hypernetwork in round()")

    def personalized(
        self, server: ServerState, state: Params | None, client_id: int
    ) -> Params | OnClient:
        """``h(v_i; phi)`` over the client's own buffers (its initial ones until it trains)."""
        generated = self.generate(server, client_id)
        return OnClient(generated) if state is None else {**state, **generated}

    def newcomer(
        self, server: ServerState, client: ClientData, trainer: LocalTrainer, rng: torch.Generator
    ) -> Params:
        """A client that never trained (``split.unseen_clients``): ``h(v; phi)`` with the
        hypernetwork ``phi`` frozen and only the client's embedding ``v`` fitted on its
        training split, as pFedHN serves novel clients (Shamsian et al. 2021, "generalization
        to novel clients").
        Adam, because the embedding's gradient scale depends on the hypernetwork's size."""
        state = pfedhn_state(server).hypernetwork
        table = state["embeddings.weight"]
        row = torch.tensor([client.client_id])
        embedding = table[client.client_id].detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=NEWCOMER_EMBEDDING_LR)
        train = client.train
        for _ in range(NEWCOMER_EMBEDDING_STEPS if len(train) else 0):
            live = {**state, "embeddings.weight": table.index_put((row,), embedding[None])}
            generated = self.generate(server, client.client_id, live)
            start = {**trainer.initial_params, **{n: t.detach() for n, t in generated.items()}}
            gradient = trainer.gradient(start, train.x, train.y)
            # The chain rule through h: d loss / d v = (d theta / d v)^T (d loss / d theta).
            surrogate = sum((theta * gradient[n]).sum() for n, theta in generated.items())
            optimizer.zero_grad()
            surrogate.backward()  # type: ignore[union-attr]
            optimizer.step()
        fitted = {**state, "embeddings.weight": table.index_put((row,), embedding.detach()[None])}
        return {**trainer.initial_params, **self.generate(server, client.client_id, fitted)}

    # ---- client side -------------------------------------------------------------------------

    def client_update(
        self,
        message: ModelMessage,
        state: Params | None,
        client: ClientData,
        trainer: LocalTrainer,
        rng: torch.Generator,
    ) -> tuple[Update, Params]:
        """Train the generated model; send its parameters, keep its buffers."""
        own = state if state is not None else trainer.initial_params
        start = {**own, **message.params}
        train = client.train
        fit = trainer.fit(start, train.x, train.y, rng=rng)
        sent = {n: fit.params[n] for n in message.params}
        kept = {n: t for n, t in fit.params.items() if n not in message.params}
        return Update(len(train), sent, loss=fit.mean_loss), kept
