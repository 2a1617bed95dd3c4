"""A small model zoo and the way any ``torch.nn.Module`` becomes a plural model.

Registered factories take ``(config, input_shape, num_classes)``. A user model is named in a
config by import path, ``package.module:factory``, and its other keys are passed to the
factory as keyword arguments (``input_shape`` / ``num_classes`` too, if it accepts them).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import itertools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plural.config import ConfigError, setting
from plural.registry import MODELS
from plural.safety.imports import check_import

BATCH_NORM_HELP = (
    "BatchNorm after each hidden dense and conv layer, before the ReLU (the local layers of "
    "FedBN); false leaves the model exactly as without it"
)


class BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that also takes a training batch of one sample.

    Batch statistics of one sample are undefined (torch raises); such a batch, e.g. the last
    minibatch of a client with ``n = 1 (mod batch_size)`` samples, is normalised with the
    running statistics instead and leaves them unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


@dataclasses.dataclass(frozen=True)
class LogRegConfig:
    """Multinomial logistic regression has no settings."""


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...] = setting((200, 200), help="hidden layer widths", ge=1)
    dropout: float = setting(0.0, help="dropout after each hidden layer", ge=0, lt=1)
    batch_norm: bool = setting(False, help=BATCH_NORM_HELP)


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, ...] = setting(
        (32, 64), help="output channels of the two 5x5 conv layers", ge=1
    )
    hidden: tuple[int, ...] = setting((512,), help="widths of the dense layers after them", ge=1)
    batch_norm: bool = setting(False, help=BATCH_NORM_HELP)


@dataclasses.dataclass(frozen=True)
class LeNetConfig:
    """LeNet-5 sizes (6 and 16 channels, 120 and 84 units) are fixed."""

    batch_norm: bool = setting(False, help=BATCH_NORM_HELP)


def _flat_size(input_shape: tuple[int, ...]) -> int:
    size = 1
    for dim in input_shape:
        size *= dim
    return size


def _dense_stack(
    sizes: list[int], dropout: float = 0.0, batch_norm: bool = False
) -> list[nn.Module]:
    """Linear layers between consecutive ``sizes``, with (BatchNorm,) ReLU (and dropout)
    between them."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(BatchNorm1d(fan_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return layers


def _image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.name: {model!r} needs image input (channels, height, width); the dataset "
            f"gives shape {tuple(input_shape)}. Use 'logreg' or 'mlp' for vector data."
        )
    return input_shape  # type: ignore[return-value]


def _conv_net(
    input_shape: tuple[int, ...],
    channels: list[int],
    hidden: list[int],
    num_classes: int,
    name: str,
    batch_norm: bool = False,
) -> nn.Sequential:
    """5x5 'same' convolutions each followed by (BatchNorm,) ReLU and 2x2 max-pool, then dense
    layers."""
    in_channels, height, width = _image_shape(name, input_shape)
    features: list[nn.Module] = []
    for out_channels in channels:
        features.append(nn.Conv2d(in_channels, out_channels, 5, padding=2))
        if batch_norm:
            features.append(nn.BatchNorm2d(out_channels))
        features.append(nn.ReLU())
        if min(height, width) >= 2:
            features.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    dense = _dense_stack([in_channels * height * width, *hidden, num_classes], 0.0, batch_norm)
    return nn.Sequential(*features, nn.Flatten(), *dense)


@MODELS.register("logreg", LogRegConfig, "multinomial logistic regression (one linear layer)")
def logistic_regression(
    config: LogRegConfig, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_size(input_shape), num_classes))


@MODELS.register(
    "mlp", MLPConfig, "fully connected ReLU network (FedAvg's 2NN is hidden=[200,200])"
)
def mlp(config: MLPConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    sizes = [_flat_size(input_shape), *config.hidden, num_classes]
    return nn.Sequential(nn.Flatten(), *_dense_stack(sizes, config.dropout, config.batch_norm))


@MODELS.register(
    "cnn", CNNConfig, "the FedAvg paper's CNN: conv32-pool-conv64-pool-fc512 (McMahan et al. 2017)"
)
def fedavg_cnn(config: CNNConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return _conv_net(
        input_shape,
        list(config.channels),
        list(config.hidden),
        num_classes,
        "cnn",
        config.batch_norm,
    )


@MODELS.register("lenet", LeNetConfig, "LeNet-5 size CNN: conv6-pool-conv16-pool-fc120-fc84")
def lenet(config: LeNetConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return _conv_net(input_shape, [6, 16], [120, 84], num_classes, "lenet", config.batch_norm)


FAMILY_ARCHITECTURES = ((32, 2000), (16, 2000), (32, 1000), (32, 800), (32, 500))
"""(conv2 channels, fc1 width) of the five CNNs of the model-heterogeneous FL papers of Yi et
al. (pFedLoRA, arXiv 2310.13283, and its siblings), numbered 1 to 5 in that order."""


@dataclasses.dataclass(frozen=True)
class CNNFamilyConfig:
    architectures: tuple[tuple[int, int], ...] = setting(
        FAMILY_ARCHITECTURES,
        help="(conv2 channels, fc1 width) of each architecture, numbered from 1; default the "
        "five CNNs of Yi et al. (pFedLoRA)",
        ge=1,
    )
    assignment: tuple[int, ...] | None = setting(
        None,
        help="architecture number (from 1) of each client, cycled over the clients when "
        "shorter; null: client i gets (i mod number of architectures) + 1",
        ge=1,
    )
    conv1: int = setting(16, help="conv1 output channels (the same in every architecture)", ge=1)
    representation: int = setting(
        500, help="width of fc2, the representation every architecture shares", ge=1
    )

    def __post_init__(self) -> None:
        if not self.architectures:
            raise ConfigError("model.architectures: give at least one (conv2, fc1) pair")
        for pair in self.architectures:
            if len(pair) != 2:
                raise ConfigError(
                    f"model.architectures: {list(pair)} is not a (conv2 channels, fc1 width) pair"
                )
        if self.assignment is not None:
            too_big = [a for a in self.assignment if a > len(self.architectures)]
            if not self.assignment or too_big:
                raise ConfigError(
                    f"model.assignment: architecture numbers run from 1 to "
                    f"{len(self.architectures)}; got {list(self.assignment)}"
                )


class BodyHeadCNN(nn.Module):
    """conv1 (5x5, max-pool) -> conv2 (5x5, max-pool) -> fc1 -> fc2 (the representation) as
    ``body``, and ``head`` (fc3) from the representation to the classes.

    ``body`` and ``head`` are what methods that exchange representations (FedProto) or attach
    an adapter to them (pFedLoRA) use. Convolutions are unpadded, as in Yi et al.'s models.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        conv1: int,
        conv2: int,
        hidden: int,
        representation: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        channels, height, width = _image_shape("cnn_family", input_shape)
        layers: list[nn.Module] = []
        for out_channels in (conv1, conv2):
            if min(height, width) < 5:
                raise ConfigError(
                    f"model: cnn_family's 5x5 unpadded convolutions need images of at least "
                    f"12x12 pixels; the dataset gives {tuple(input_shape)}"
                )
            layers += [nn.Conv2d(channels, out_channels, 5), nn.ReLU()]
            height, width = height - 4, width - 4
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out_channels
        flat = channels * height * width
        self.body = nn.Sequential(
            *layers,
            nn.Flatten(),
            *_dense_stack([flat, hidden, representation]),
            nn.ReLU(),
        )
        self.head = nn.Linear(representation, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclasses.dataclass(frozen=True, eq=False)
class ModelFamily:
    """Several architectures for one federation: ``members[k]`` is architecture k + 1 and
    ``assignment`` (0-based member indices) is cycled over the clients."""

    members: tuple[nn.Module, ...]
    assignment: tuple[int, ...] | None = None

    def architecture_of(self, num_clients: int) -> tuple[int, ...]:
        """The member index of every client."""
        pattern = self.assignment or tuple(range(len(self.members)))
        return tuple(pattern[i % len(pattern)] for i in range(num_clients))


@MODELS.register(
    "cnn_family",
    CNNFamilyConfig,
    "model-heterogeneous CNNs (Yi et al., pFedLoRA): five conv/fc widths, one per client",
)
def cnn_family(
    config: CNNFamilyConfig, input_shape: tuple[int, ...], num_classes: int
) -> ModelFamily:
    members = tuple(
        BodyHeadCNN(input_shape, config.conv1, c2, h1, config.representation, num_classes)
        for c2, h1 in config.architectures
    )
    assignment = None if config.assignment is None else tuple(a - 1 for a in config.assignment)
    return ModelFamily(members, assignment)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A validated model choice: a registered name with its settings, or an import path."""

    name: str
    settings: Any

    def build(
        self, input_shape: tuple[int, ...], num_classes: int, seed: int
    ) -> nn.Module | ModelFamily:
        """The model (or family of models) with initial weights drawn from ``seed``.

        Layers draw their initial weights from torch's global generator; it is forked and
        restored here, so the caller's global random state is left as it was.
        """
        with torch.random.fork_rng(devices=[]):
            if ":" not in self.name and MODELS.get(self.name).target.__module__ == __name__:
                factory = MODELS.get(self.name).target
                _check_size(
                    lambda: factory(self.settings, tuple(input_shape), num_classes), self.name
                )
            torch.manual_seed(seed)
            if ":" in self.name:
                return _call_factory(
                    _import_factory(self.name, allowed=True),
                    self.settings,
                    input_shape,
                    num_classes,
                )
            factory = MODELS.get(self.name).target
            return factory(self.settings, tuple(input_shape), num_classes)


MAX_PARAMETERS = 100_000_000
"""Most parameters one model may have (400 MB of float32; clients hold several copies)."""


def _check_size(build: Callable[[], nn.Module | ModelFamily], name: str) -> None:
    """ConfigError if the model ``build`` makes is over :data:`MAX_PARAMETERS`; it is built
    on the meta device, which allocates no memory."""
    with torch.device("meta"):
        probe = build()
    members = probe.members if isinstance(probe, ModelFamily) else (probe,)
    count = max(sum(p.numel() for p in member.parameters()) for member in members)
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"model: {name!r} with these settings has {count:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} plural allows (make the layers narrower)"
        )


def parse_model(section: Mapping[str, Any] | None) -> ModelSpec:
    """Validate the ``model`` config section (registered name or ``module:factory``)."""
    if isinstance(section, Mapping) and not isinstance(section.get("name", ""), str):
        raise ConfigError(f"model.name: expected a model name (text), got {section['name']!r}")
    if isinstance(section, Mapping) and ":" in str(section.get("name", "")):
        name = str(section["name"])
        kwargs = {k: v for k, v in section.items() if k != "name"}
        _check_factory_arguments(_import_factory(name), kwargs, name)
        return ModelSpec(name, kwargs)
    entry, settings = MODELS.parse(section, "model")
    return ModelSpec(entry.name, settings)


def _import_factory(path: str, *, allowed: bool = False) -> Callable[..., nn.Module]:
    """The factory at ``path``; unless ``allowed`` (checked when the config was parsed), the
    import policy must let its module be imported."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"model.name: {path!r} is not of the form package.module:factory")
    if not allowed:
        check_import(module_name, "model.name")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as err:
        raise ConfigError(
            f"model.name: cannot import module {module_name!r} ({err}); {_where_is(module_name)}"
        ) from err
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"model.name: {module_name!r} has no callable {attribute!r}")
    return factory


def _where_is(module_name: str) -> str:
    """Whether the module's file lies in a folder on ``sys.path``, and how to put it there."""
    top = module_name.split(".")[0]
    folders = [Path(p or ".").resolve() for p in sys.path]
    found = [
        folder
        for folder in folders
        if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file()
    ]
    if found:
        return f"{top!r} is on sys.path (in {found[0]}), so the error is inside it"
    here = Path.cwd()
    local = (here / f"{top}.py").is_file() or (here / top).is_dir()
    hint = (
        f"{top!r} is in the current folder, which is not on sys.path: run with PYTHONPATH=. "
        "(e.g. PYTHONPATH=. plural run CONFIG)"
        if local
        else f"{top!r} is not in any folder on sys.path: run from the folder that holds it "
        "with PYTHONPATH=. (e.g. PYTHONPATH=. plural run CONFIG), or pip install it"
    )
    return hint


_CONTEXT_ARGS = ("input_shape", "num_classes")


def _check_factory_arguments(
    factory: Callable[..., Any], kwargs: Mapping[str, Any], name: str
) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.name: cannot inspect the arguments of {name!r} ({err})") from err
    given = dict(kwargs)
    for extra in _CONTEXT_ARGS:
        if extra in signature.parameters:
            given[extra] = None
    try:
        signature.bind(**given)
    except TypeError as err:
        raise ConfigError(
            f"model: settings {sorted(kwargs)} do not fit {name}{signature}: {err}"
        ) from err


def _call_factory(
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
) -> nn.Module:
    parameters = inspect.signature(factory).parameters
    context = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    call_kwargs = {**{k: v for k, v in context.items() if k in parameters}, **kwargs}
    model = factory(**call_kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
