"""Assembling a run from its config: the federation, the clients' models and the algorithm,
each from its own derived seed. This sits above the engine, which receives what it builds."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from plural.config import ConfigError
from plural.core.aggregation import chain_for
from plural.core.algorithm import Algorithm, FederationInfo
from plural.core.masks import norm_layer_names
from plural.core.params import Params, state_of
from plural.core.rng import derive_seed, numpy_rng
from plural.data.federated import FederatedDataset
from plural.data.splits import choose_unseen, data_seed_of, hold_out_server
from plural.data.types import ArrayDataset
from plural.engine.backends import ClientModels
from plural.experiment import Component, ExperimentConfig
from plural.models.zoo import ModelFamily
from plural.registry import ALGORITHMS, DATASETS, PARTITIONERS, TRANSFORMS

ModelSource = nn.Module | Callable[..., nn.Module]


def build_federation(
    config: ExperimentConfig, dataset: ArrayDataset | FederatedDataset | None = None
) -> FederatedDataset:
    """The federation of ``config`` (or of the user's ``dataset``), from derived seeds."""
    if isinstance(dataset, FederatedDataset):
        return dataset
    seed = data_seed_of(config)
    if dataset is None:
        loader = DATASETS.get(config.dataset.name).target
        dataset = loader(config.dataset.settings, numpy_rng(seed, "dataset"))
    dataset, server_set = hold_out_server(dataset, config.split.server, numpy_rng(seed, "server"))
    partitioner = PARTITIONERS.get(config.partition.name).target(config.partition.settings)
    partition = partitioner.split(dataset, rng=numpy_rng(seed, "partition"))
    order = config.split.order
    if order == "auto":
        order = "sequential" if dataset.ordered else "stratified"
    federation = FederatedDataset.build(
        dataset,
        partition,
        val=config.split.val,
        test=config.split.test,
        rng=numpy_rng(seed, "split"),
        order=order,
    )
    unseen = choose_unseen(
        federation.num_clients, config.split.unseen_clients, numpy_rng(seed, "unseen")
    )
    federation = dataclasses.replace(federation, server=server_set, unseen=tuple(unseen.tolist()))
    return apply_transforms(federation, config.transforms, seed)


def apply_transforms(
    federation: FederatedDataset, transforms: Sequence[Component], seed: int
) -> FederatedDataset:
    """Apply the config's client transforms in order, each with its own derived generator."""
    for index, component in enumerate(transforms):
        transform = TRANSFORMS.get(component.name).target(component.settings)
        federation = transform.apply(federation, rng=numpy_rng(seed, "transform", index))
    return federation


def build_model(
    config: ExperimentConfig, federation: FederatedDataset, model: ModelSource | None = None
) -> nn.Module | ModelFamily:
    """The initial model: the user's module (copied), the user's factory, or the config's
    (a :class:`~plural.models.zoo.ModelFamily` for model-heterogeneous families)."""
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    if model is not None:
        built = model()
        if not isinstance(built, nn.Module):
            raise ConfigError(
                f"model: the factory returned {type(built).__name__}, not an nn.Module"
            )
        return built
    return config.model.build(
        federation.input_shape, federation.num_classes, derive_seed(config.seed, "model")
    )


def build_client_models(
    config: ExperimentConfig,
    federation: FederatedDataset,
    algorithm: Algorithm,
    model: ModelSource | None = None,
) -> ClientModels:
    """The modules clients train: the configured model (or each architecture of a family that
    some client uses), prepared by the algorithm; ConfigErrors for combinations that cannot
    run, before any training."""
    built = build_model(config, federation, model)
    if isinstance(built, ModelFamily):
        architecture = built.architecture_of(federation.num_clients)
        used = sorted(set(architecture))
        members = tuple(built.members[k] for k in used)
        index = tuple(used.index(k) for k in architecture)
    else:
        members, index = (built,), ()
    prepared = []
    for member in members:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, "prepare-model"))
            prepared.append(
                algorithm.prepare_model(member, federation.input_shape, federation.num_classes)
            )
    models = ClientModels(tuple(prepared), index if len(prepared) > 1 else ())
    _check_heterogeneity(config, algorithm, models)
    return models


def _check_heterogeneity(
    config: ExperimentConfig, algorithm: Algorithm, models: ClientModels
) -> None:
    if not models.heterogeneous:
        return
    if not algorithm.model_heterogeneous:
        able = [e.name for e in ALGORITHMS if getattr(e.target, "model_heterogeneous", False)]
        raise ConfigError(
            f"algorithm: {config.algorithm.name!r} needs one architecture for every client, but "
            f"model {config.model.name!r} gives {len(models.members)} architectures to the "
            f"clients; methods for model-heterogeneous federations: {', '.join(able)} "
            "(or give every client the same architecture with model.assignment)"
        )
    if config.diagnostics.gradient_every is not None:
        raise ConfigError(
            "diagnostics.gradient_every: gradient dissimilarity needs one global model; it is "
            "not defined when clients have different architectures (set it to null)"
        )


def federation_info(
    federation: FederatedDataset, models: ClientModels, seed: int
) -> FederationInfo:
    """What the server may know about the federation and the clients' models."""
    first = models.members[0]
    shapes = tuple(
        {name: tuple(t.shape) for name, t in member.state_dict().items()}
        for member in models.members
    )
    return FederationInfo(
        federation.num_clients,
        federation.num_classes,
        federation.input_shape,
        federation.groups,
        tuple(name for name, _ in first.named_parameters()),
        norm_layer_names(first),
        _fresh_params(first, seed),
        models.architecture,
        shapes if models.heterogeneous else (),
    )


def _fresh_params(initial: nn.Module, seed: int) -> Callable[[int], Params]:
    """``fresh(k)``: the initial model re-initialised from the derived seed (seed, init, k)."""

    def fresh(k: int) -> Params:
        model = copy.deepcopy(initial)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init", k))
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return state_of(model)

    return fresh


def build_algorithm(config: ExperimentConfig) -> Algorithm:
    """The configured algorithm, with the aggregation chain the run's settings ask for."""
    algorithm = ALGORITHMS.get(config.algorithm.name).target(config.algorithm.settings)
    algorithm.aggregation = chain_for(config)
    base = getattr(algorithm, "base", None)
    if isinstance(base, Algorithm):  # fine-tuning aggregates through its base algorithm
        base.aggregation = algorithm.aggregation
    return algorithm
