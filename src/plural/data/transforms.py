"""Client transforms: heterogeneity added to a built federation, client by client.

A transform is registered in :data:`plural.registry.TRANSFORMS` with a frozen config
dataclass; the ``transforms:`` list of an experiment applies them in order after the
partition and the train/val/test split. ``apply(federation, rng=...)`` is pure: it returns a
new federation (input tensors are never modified) and all randomness comes from ``rng``.

A transform changes *all* of a client's splits, and a drifting client's drifted data too
(:meth:`~plural.data.federated.ClientData.map_splits`), so every client is tested on its own
distribution. Random per-sample draws (noise, label flips) are made once per split and
shared by the split and its drifted copy: a sample keeps its noise when it drifts.

Kinds of skew:

* feature skew, P(x|y) differs by group: ``rotation``, ``noise``, ``brightness``,
  ``permutation``;
* concept shift, P(y|x) differs by group: ``label_swap``;
* label noise on some clients: ``label_noise``;
* temporal skew, P(x, y; t): ``drift`` (some clients switch to data changed by another
  transform, abruptly or gradually).

Transforms with groups put every client in a group at random, balanced (a random
permutation of ``arange(clients) % groups``) or in the proportions ``shares`` gives, and
record it in ``federation.group_ids`` under their name (``rotation``, or ``rotation_2`` for a
second rotation, ...), so that ``federation.groups`` is every distinct combination of the
groupings. Settings that the data cannot satisfy raise :class:`~plural.config.ConfigError`
before any work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from plural.config import ConfigError, setting
from plural.data.federated import (
    SPLITS,
    ClientData,
    Drift,
    FederatedDataset,
    SplitName,
    TensorSplit,
)
from plural.registry import TRANSFORMS, Entry

__all__ = [
    "BrightnessConfig",
    "BrightnessTransform",
    "DriftConfig",
    "DriftTransform",
    "LabelNoiseConfig",
    "LabelNoiseTransform",
    "LabelSwapConfig",
    "LabelSwapTransform",
    "NoiseConfig",
    "NoiseTransform",
    "PermutationConfig",
    "PermutationTransform",
    "RotationConfig",
    "RotationTransform",
    "rotate_images",
]

SplitFn = Callable[[SplitName, TensorSplit], TensorSplit]

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _assign_groups(
    num_clients: int,
    groups: int,
    rng: np.random.Generator,
    who: str,
    shares: Sequence[float] | None = None,
) -> np.ndarray:
    """Random groups: balanced (a random permutation of ``arange(num_clients) % groups``), or
    with ``shares`` each group's share of the clients (:func:`group_counts`), shuffled."""
    if groups > num_clients:
        raise ConfigError(
            f"{who}.groups: {groups} groups for {num_clients} clients; use groups <= {num_clients}"
        )
    if shares is None:
        return rng.permutation(np.arange(num_clients) % groups).astype(np.int64)
    counts = group_counts(num_clients, shares, who)
    return rng.permutation(np.repeat(np.arange(groups), counts)).astype(np.int64)


def group_counts(num_clients: int, shares: Sequence[float], who: str) -> np.ndarray:
    """Clients per group in proportion to ``shares`` (largest remainders, so the counts sum to
    ``num_clients``); a ConfigError if a group would get no client."""
    weights = np.asarray(shares, dtype=np.float64)
    exact = num_clients * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    left = num_clients - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:left]] += 1
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ConfigError(
            f"{who}.shares: group(s) {empty} get no client of {num_clients} (their shares are "
            f"too small); raise those shares to at least {weights.sum() / num_clients:.3g} "
            "of the total, or use fewer groups"
        )
    return counts


def _choose_clients(num_clients: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """1 for a random ``round(fraction * num_clients)`` clients (at least 1 if fraction > 0)."""
    count = 0 if fraction == 0 else max(1, int(np.floor(fraction * num_clients + 0.5)))
    chosen = np.zeros(num_clients, dtype=np.int64)
    chosen[rng.choice(num_clients, min(count, num_clients), replace=False)] = 1
    return chosen


def _grouping_key(federation: FederatedDataset, name: str) -> str:
    """``name``, or ``name_2``, ``name_3``, ... if an earlier step already used it."""
    key, suffix = name, 2
    while key in federation.group_ids:
        key, suffix = f"{name}_{suffix}", suffix + 1
    return key


def _map_clients(
    federation: FederatedDataset, split_fns: Sequence[SplitFn | None]
) -> list[ClientData]:
    """Each client with its function applied to all its splits (None keeps it as it is)."""
    return [
        client if fn is None else client.map_splits(fn)
        for client, fn in zip(federation.clients, split_fns, strict=True)
    ]


def _per_split(
    draw: Callable[[TensorSplit], np.ndarray],
) -> Callable[[SplitName, TensorSplit], np.ndarray]:
    """``draw`` made once per split name: a split and its drifted copy share their draws."""
    cache: dict[SplitName, np.ndarray] = {}

    def get(name: SplitName, split: TensorSplit) -> np.ndarray:
        if name not in cache:
            cache[name] = draw(split)
        return cache[name]

    return get


def _check_per_group(config: Any, *fields: str) -> None:
    """ConfigError unless each list setting in ``fields`` is null or has one value per group."""
    for field in fields:
        values = getattr(config, field)
        if values is not None and len(values) != config.groups:
            raise ConfigError(
                f"{field}: {len(values)} values for groups = {config.groups}; give one value "
                f"per group, or null for the default"
            )


@dataclasses.dataclass(frozen=True)
class _GroupSizes:
    """The setting every grouping transform shares: how many of the clients each group gets."""

    shares: tuple[float, ...] | None = setting(
        None,
        help="each group's share of the clients, e.g. [0.5, 0.3, 0.15, 0.05] (normalised; "
        "null: groups of equal size)",
        gt=0.0,
    )

    def __post_init__(self) -> None:
        _check_per_group(self, "shares")


def _per_group(values: tuple[float, ...] | None, default: np.ndarray) -> np.ndarray:
    """The given per-group values, or ``default`` where they are null."""
    return np.asarray(default if values is None else values, dtype=np.float64)


def _distinct_permutations(
    count: int,
    size: int,
    identity_first: bool,
    draw: Callable[[np.random.Generator], np.ndarray],
    rng: np.random.Generator,
    who: str,
) -> list[np.ndarray]:
    """``count`` pairwise distinct permutations of ``size`` items from ``draw``.

    With ``identity_first`` the first is the identity, and no other is: every other group
    really is changed, and groups differ for sure. A draw equal to an earlier one (or to the
    identity) is drawn again; a request with too few possible permutations is a ConfigError.
    """
    identity = np.arange(size, dtype=np.int64)
    perms = [identity] if identity_first else []
    seen = {identity.tobytes()}  # only the first group may keep the original order
    attempts = 0
    while len(perms) < count:
        if attempts == 100 * count:
            raise ConfigError(
                f"{who}.groups: cannot draw {count} permutations of {size} items that differ "
                f"from each other and from the original order; use fewer groups"
            )
        attempts += 1
        perm = np.asarray(draw(rng), dtype=np.int64)
        if perm.tobytes() not in seen:
            seen.add(perm.tobytes())
            perms.append(perm)
    return perms


def _require_float(federation: FederatedDataset, who: str) -> None:
    """ConfigError if the inputs are integer token ids: ``who`` changes feature values."""
    client = next((c for c in federation.clients if len(c.train)), None)
    if client is not None and not client.train.x.is_floating_point():
        raise ConfigError(
            f"{who}: needs floating-point features, but {federation.name!r} holds integer "
            f"token ids ({client.train.x.dtype}); use a transform that leaves the inputs' "
            "values alone (permutation, label_swap, label_noise)"
        )


class _GroupTransform:
    """A transform that puts clients into groups and changes each group's data its own way.

    Subclasses give a parameter per group (an angle, a permutation, ...) and turn one into
    the function applied to every split of the group's clients.
    """

    name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    def apply(self, federation: FederatedDataset, *, rng: np.random.Generator) -> FederatedDataset:
        self.check(federation)
        groups = _assign_groups(
            federation.num_clients, self.config.groups, rng, self.name, self.config.shares
        )
        params = self.group_params(federation, rng)
        split_fns = [self.split_fn(params[g], rng) for g in groups]
        return federation.with_clients(
            _map_clients(federation, split_fns), _grouping_key(federation, self.name), groups
        )

    def check(self, federation: FederatedDataset) -> None:
        """Raise a ConfigError if the data cannot take this transform."""

    def group_params(self, federation: FederatedDataset, rng: np.random.Generator) -> Sequence[Any]:
        raise NotImplementedError

    def split_fn(self, param: Any, rng: np.random.Generator) -> SplitFn | None:
        """The function applied to the splits of a client with ``param`` (None: unchanged)."""
        raise NotImplementedError


def _map_x(fn: Callable[[torch.Tensor], torch.Tensor]) -> SplitFn:
    """A split function that changes the inputs only."""
    return lambda name, split: TensorSplit(fn(split.x), split.y)


def _map_y(fn: Callable[[torch.Tensor], torch.Tensor]) -> SplitFn:
    """A split function that changes the labels only."""
    return lambda name, split: TensorSplit(split.x, fn(split.y))


# ---------------------------------------------------------------------------------------------
# rotation
# ---------------------------------------------------------------------------------------------


def rotate_images(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Images ``(N, C, H, W)`` rotated counter-clockwise by ``angle`` degrees about the centre.

    Multiples of 180, and of 90 on square images, are exact (``torch.rot90``); other angles
    are bilinear (``affine_grid`` / ``grid_sample``), with zeros where the rotated image has
    no source. Positive angles turn the image as ``torch.rot90`` does.
    """
    height, width = x.shape[-2], x.shape[-1]
    if angle % 180 == 0 or (angle % 90 == 0 and height == width):  # exact, same shape
        return torch.rot90(x, int(angle // 90) % 4, dims=(-2, -1))
    if x.numel() == 0:
        return x.clone()
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # output pixel -> source pixel (inverse rotation) in grid coordinates scaled by W/2, H/2
    theta = torch.tensor(
        [[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=x.dtype
    )
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclasses.dataclass(frozen=True)
class RotationConfig(_GroupSizes):
    groups: int = setting(4, help="number of groups, each rotated by its own angle", ge=1)
    angles: tuple[float, ...] | None = setting(
        None,
        help="counter-clockwise rotation of each group in degrees (null: 360 / groups * g, "
        "i.e. 0, 90, 180, 270 for 4 groups)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_per_group(self, "angles")


@TRANSFORMS.register("rotation", RotationConfig, "feature skew: each group's images rotated")
class RotationTransform(_GroupTransform):
    """Rotated images per group: the rotated-MNIST setting of IFCA (Ghosh et al. 2020; 4 groups
    at 0, 90, 180 and 270 degrees) and of CFL (Sattler et al. 2020, 180 degrees for half the
    clients: ``groups: 2, angles: [0, 180]``).

    Images only (``(C, H, W)``). Multiples of 90 degrees on square images are exact; other
    angles (or non-square images) are rotated bilinearly about the centre with zero fill.
    """

    name = "rotation"

    def check(self, federation: FederatedDataset) -> None:
        _require_float(federation, self.name)
        if len(federation.input_shape) != 3:
            raise ConfigError(
                f"rotation: rotates images of shape (C, H, W), but {federation.name!r} has "
                f"input_shape {tuple(federation.input_shape)}; use an image dataset, or a "
                f"transform for any input (noise, brightness, permutation)"
            )

    def group_params(self, federation: FederatedDataset, rng: np.random.Generator) -> np.ndarray:
        groups = self.config.groups
        return _per_group(self.config.angles, np.linspace(0.0, 360.0, groups, endpoint=False))

    def split_fn(self, param: float, rng: np.random.Generator) -> SplitFn | None:
        angle = float(param)
        return None if angle % 360 == 0 else _map_x(lambda x: rotate_images(x, angle))


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoiseConfig(_GroupSizes):
    groups: int = setting(4, help="number of groups, each with its own noise level", ge=1)
    levels: tuple[float, ...] | None = setting(
        None, help="noise std of each group (null: evenly spaced from 0 to max_std)", ge=0.0
    )
    max_std: float = setting(0.5, help="largest default noise std (when levels is null)", ge=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_per_group(self, "levels")


@TRANSFORMS.register("noise", NoiseConfig, "feature skew: Gaussian input noise, one std per group")
class NoiseTransform(_GroupTransform):
    """Additive Gaussian input noise whose std differs by group (the noise-based feature skew
    of Li et al. 2022, "Federated learning on non-IID data silos").

    The noise of each sample is drawn once, when the federation is built: the data are fixed,
    not re-noised every round. Works on inputs of any shape.
    """

    name = "noise"

    def check(self, federation: FederatedDataset) -> None:
        _require_float(federation, self.name)

    def group_params(self, federation: FederatedDataset, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        return _per_group(cfg.levels, np.linspace(0.0, cfg.max_std, cfg.groups))

    def split_fn(self, param: float, rng: np.random.Generator) -> SplitFn | None:
        level = float(param)
        if level == 0:
            return None
        noise = _per_split(lambda split: rng.standard_normal(split.x.shape, dtype=np.float32))

        def add_noise(name: SplitName, split: TensorSplit) -> TensorSplit:
            return TensorSplit(split.x + level * torch.from_numpy(noise(name, split)), split.y)

        return add_noise


# ---------------------------------------------------------------------------------------------
# brightness / contrast
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BrightnessConfig(_GroupSizes):
    groups: int = setting(
        4, help="number of groups, each with its own contrast and brightness", ge=1
    )
    contrast: tuple[float, ...] | None = setting(
        None, help="contrast factor of each group (null: evenly spaced from 0.5 to 1.5)"
    )
    brightness: tuple[float, ...] | None = setting(
        None, help="brightness offset of each group (null: 0 for every group)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_per_group(self, "contrast", "brightness")


def _adjust(x: torch.Tensor, contrast: float, brightness: float) -> torch.Tensor:
    """``contrast * (x - m) + m + brightness`` with ``m`` the mean of each sample."""
    mean = x.reshape(len(x), -1).mean(dim=1).view(-1, *([1] * (x.dim() - 1)))
    return contrast * (x - mean) + mean + brightness


@TRANSFORMS.register(
    "brightness", BrightnessConfig, "feature skew: contrast and brightness per group"
)
class BrightnessTransform(_GroupTransform):
    """Contrast and brightness per group, ``x' = contrast * (x - m) + m + brightness`` with
    ``m`` the per-sample mean (as in image colour-jitter augmentation). Any input shape.
    """

    name = "brightness"

    def check(self, federation: FederatedDataset) -> None:
        _require_float(federation, self.name)

    def group_params(
        self, federation: FederatedDataset, rng: np.random.Generator
    ) -> list[tuple[float, float]]:
        cfg = self.config
        contrast = _per_group(cfg.contrast, np.linspace(0.5, 1.5, cfg.groups))
        brightness = _per_group(cfg.brightness, np.zeros(cfg.groups))
        return [(float(c), float(b)) for c, b in zip(contrast, brightness, strict=True)]

    def split_fn(self, param: tuple[float, float], rng: np.random.Generator) -> SplitFn | None:
        contrast, brightness = param
        if contrast == 1 and brightness == 0:
            return None
        return _map_x(lambda x: _adjust(x, contrast, brightness))


# ---------------------------------------------------------------------------------------------
# permutation
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PermutationConfig(_GroupSizes):
    groups: int = setting(4, help="number of groups, each with its own feature order", ge=1)
    identity_first: bool = setting(True, help="group 0 keeps the original feature order")


@TRANSFORMS.register(
    "permutation", PermutationConfig, "feature skew: a fixed pixel permutation per group"
)
class PermutationTransform(_GroupTransform):
    """A fixed random permutation of the input features (flattened pixels) per group: permuted
    MNIST (Goodfellow et al. 2013; Lopez-Paz & Ranzato 2017) across clients. The groups'
    permutations are distinct. Any input shape.
    """

    name = "permutation"

    def group_params(
        self, federation: FederatedDataset, rng: np.random.Generator
    ) -> list[np.ndarray]:
        size = math.prod(federation.input_shape)
        return _distinct_permutations(
            self.config.groups,
            size,
            self.config.identity_first,
            lambda r: r.permutation(size),
            rng,
            self.name,
        )

    def split_fn(self, param: np.ndarray, rng: np.random.Generator) -> SplitFn | None:
        if np.array_equal(param, np.arange(len(param))):
            return None
        order = torch.from_numpy(param)
        return _map_x(lambda x: x.reshape(len(x), -1)[:, order].reshape(x.shape))


# ---------------------------------------------------------------------------------------------
# label swap
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelSwapConfig(_GroupSizes):
    groups: int = setting(4, help="number of groups, each with its own label permutation", ge=1)
    swaps: int | None = setting(
        None,
        help="label pairs swapped per group (null: a full random permutation of the labels)",
        ge=1,
    )
    identity_first: bool = setting(True, help="group 0 keeps the original labels")


def _pair_swaps(num_classes: int, swaps: int) -> Callable[[np.random.Generator], np.ndarray]:
    """A draw of a label permutation that swaps ``swaps`` random disjoint pairs."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        chosen = rng.permutation(num_classes)[: 2 * swaps]
        perm = np.arange(num_classes)
        perm[chosen[0::2]], perm[chosen[1::2]] = chosen[1::2], chosen[0::2]
        return perm

    return draw


@TRANSFORMS.register(
    "label_swap", LabelSwapConfig, "concept shift: labels permuted differently per group"
)
class LabelSwapTransform(_GroupTransform):
    """Concept shift: the same inputs, with labels permuted per group, so P(x) is shared and
    P(y|x) differs. The label-swap setting of clustered FL (Sattler et al. 2020, CFL; also
    Ghosh et al. 2020, IFCA). The groups' permutations are distinct.
    """

    name = "label_swap"

    def check(self, federation: FederatedDataset) -> None:
        swaps, classes = self.config.swaps, federation.num_classes
        if swaps is not None and 2 * swaps > classes:
            raise ConfigError(
                f"label_swap.swaps: {swaps} disjoint pairs need {2 * swaps} classes but the "
                f"data has {classes}; use swaps <= {classes // 2}"
            )

    def group_params(
        self, federation: FederatedDataset, rng: np.random.Generator
    ) -> list[np.ndarray]:
        cfg, classes = self.config, federation.num_classes
        draw = (
            (lambda r: r.permutation(classes))
            if cfg.swaps is None
            else _pair_swaps(classes, cfg.swaps)
        )
        return _distinct_permutations(cfg.groups, classes, cfg.identity_first, draw, rng, self.name)

    def split_fn(self, param: np.ndarray, rng: np.random.Generator) -> SplitFn | None:
        if np.array_equal(param, np.arange(len(param))):
            return None
        perm = torch.from_numpy(param)
        return _map_y(lambda y: perm[y])


# ---------------------------------------------------------------------------------------------
# label noise
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelNoiseConfig:
    fraction: float = setting(
        0.3, help="fraction of clients with noisy labels (at least 1 if > 0)", ge=0.0, le=1.0
    )
    rate: float = setting(
        0.4, help="probability that each label of a noisy client is flipped", ge=0.0, le=1.0
    )
    mode: Literal["symmetric", "pair"] = setting(
        "symmetric",
        help="'symmetric': to a uniformly random other class; 'pair': y -> (y + 1) mod classes",
    )
    splits: tuple[SplitName, ...] = setting(
        ("train", "val"),
        help="splits whose labels are corrupted (default: test stays clean, so accuracy "
        "measures the true task)",
    )


@TRANSFORMS.register(
    "label_noise", LabelNoiseConfig, "label noise: some clients' labels flipped at random"
)
class LabelNoiseTransform:
    """Noisy labels on a random subset of clients (symmetric or pair flipping, as in the
    label-noise benchmarks of Han et al. 2018, Co-teaching).

    Each label of a noisy client's chosen splits is flipped with probability ``rate``. By
    default the test split keeps its true labels, so test accuracy measures how well a client
    learns the true task despite its noisy training data. Grouping ``label_noise``: 1 noisy,
    0 clean.
    """

    name = "label_noise"

    def __init__(self, config: LabelNoiseConfig) -> None:
        self.config = config

    def apply(self, federation: FederatedDataset, *, rng: np.random.Generator) -> FederatedDataset:
        if federation.num_classes < 2:
            raise ConfigError(
                f"label_noise: needs at least 2 classes, the data has {federation.num_classes}"
            )
        noisy = _choose_clients(federation.num_clients, self.config.fraction, rng)
        split_fns = [self._flip(federation.num_classes, rng) if n else None for n in noisy]
        return federation.with_clients(
            _map_clients(federation, split_fns), _grouping_key(federation, self.name), noisy
        )

    def _flip(self, num_classes: int, rng: np.random.Generator) -> SplitFn:
        cfg = self.config
        draws = _per_split(lambda split: rng.random((len(split), 2)))

        def flip(name: SplitName, split: TensorSplit) -> TensorSplit:
            if name not in cfg.splits:
                return split
            u = torch.from_numpy(draws(name, split))
            if cfg.mode == "pair":
                shift = torch.ones_like(split.y)
            else:  # 1..C-1: a uniformly random other class
                shift = 1 + torch.floor(u[:, 1] * (num_classes - 1)).long()
            flipped = torch.where(u[:, 0] < cfg.rate, (split.y + shift) % num_classes, split.y)
            return TensorSplit(split.x, flipped)

        return flip


# ---------------------------------------------------------------------------------------------
# drift
# ---------------------------------------------------------------------------------------------


def _default_change() -> dict[str, Any]:
    return {"name": "rotation", "groups": 1, "angles": [180.0]}


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    fraction: float = setting(
        0.5, help="fraction of clients that drift (at least 1 if > 0)", ge=0.0, le=1.0
    )
    start_round: int = setting(10, help="first round with drifted data", ge=1)
    end_round: int | None = setting(
        None,
        help="null: abrupt switch at start_round; else gradual: each sample switches at a "
        "round drawn uniformly from [start_round, end_round]",
        ge=1,
    )
    change: dict[str, Any] = setting(
        default_factory=_default_change,
        help="the transform that gives the drifted data, {name: <transform>, <settings>}, "
        "e.g. {name: label_swap, groups: 1, identity_first: false}",
    )

    def __post_init__(self) -> None:
        if self.end_round is not None and self.end_round < self.start_round:
            raise ConfigError(
                f"end_round: {self.end_round} is before start_round = {self.start_round}; "
                f"use end_round >= start_round, or null for an abrupt switch"
            )
        self.parsed_change()

    def parsed_change(self) -> tuple[Entry[Any], Any]:
        """The ``change`` transform's registry entry and validated settings."""
        if isinstance(self.change, Mapping) and self.change.get("name") == "drift":
            raise ConfigError("change.name: a drift cannot change into another drift")
        return TRANSFORMS.parse(self.change, "change")


@TRANSFORMS.register("drift", DriftConfig, "temporal skew: some clients' data change over rounds")
class DriftTransform:
    """Concept or covariate drift over rounds (the temporal skew of e.g. Jothimurugesan et al.
    2023, "Federated learning under distributed concept drift").

    The ``change`` transform is applied to the drifting clients' data to give their drifted
    data; each sample switches to it at ``start_round`` (abrupt) or at a round drawn uniformly
    from ``[start_round, end_round]`` (gradual: the drifted share grows linearly). Other
    clients never change. Grouping ``drift``: 1 drifting, 0 stable. One drift per federation.
    """

    name = "drift"

    def __init__(self, config: DriftConfig) -> None:
        self.config = config

    def apply(self, federation: FederatedDataset, *, rng: np.random.Generator) -> FederatedDataset:
        entry, settings = self.config.parsed_change()
        if any(client.drift is not None for client in federation.clients):
            raise ConfigError(
                "drift: the federation already drifts (an earlier drift transform); combine "
                "the changes into one drift"
            )
        drifting = _choose_clients(federation.num_clients, self.config.fraction, rng)
        clients = list(federation.clients)
        ids = np.flatnonzero(drifting)
        if len(ids):
            sub = dataclasses.replace(federation, clients=[clients[i] for i in ids], group_ids={})
            try:
                changed = entry.target(settings).apply(sub, rng=rng)
            except ConfigError as err:
                raise ConfigError(f"drift.change: {err}") from err
            for cid, after in zip(ids, changed.clients, strict=True):
                drift = Drift(after=after, switch_round=self._switch_rounds(after, rng))
                clients[cid] = dataclasses.replace(clients[cid], drift=drift)
        return federation.with_clients(clients, _grouping_key(federation, self.name), drifting)

    def _switch_rounds(
        self, client: ClientData, rng: np.random.Generator
    ) -> dict[SplitName, torch.Tensor]:
        """The round from which each sample is drifted, per split."""
        first = self.config.start_round
        last = first if self.config.end_round is None else self.config.end_round
        return {
            name: torch.from_numpy(rng.integers(first, last + 1, len(client.split(name))))
            for name in SPLITS
        }
