"""Small homogeneous modules attached to a client's own (possibly heterogeneous) model.

:class:`AdaptedModel` holds a client's ``local`` model and an ``adapter`` whose shapes are
the same for every client, and mixes their outputs: ``(1 - mu) * local + mu * adapter``. Two
constructions, both named by Yi et al. (pFedLoRA, arXiv 2310.13283):

* ``lora`` (matrix decomposition): rank-r factor pairs on the layers where every model agrees
  in shape, the d-dimensional representation and the classifier, in the style of LoRA (Hu et
  al. 2022). The adapter reads the local model's representation ``h``; its output is
  ``C_up C_down (h + R_up R_down h)``. The up factors start at zero, as in LoRA, so the
  adapter starts as a no-op on the representation and a zero classifier.
* ``parallel`` (direct dimension reduction): a narrow network beside the local one, reading
  the input (two 5x5 convolutions and a hidden layer of width r for images, one hidden layer
  of width r otherwise). FML's shared "meme" model (Shen et al. 2020) is the same network.

Both expose :meth:`AdaptedModel.branches` for objectives that need the two outputs apart
(mutual distillation) and name their entries ``local.*`` and ``adapter.*``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from plural.config import ConfigError
from plural.models.zoo import _conv_net, _dense_stack, _flat_size

Construction = Literal["lora", "parallel"]
ADAPTER_PREFIX = "adapter."
LOCAL_PREFIX = "local."


def body_and_head(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Linear]:
    """The representation function and the linear classifier of ``model``.

    A model with ``body`` and ``head`` attributes (``cnn_family``) gives them; an
    ``nn.Sequential`` ending in a ``Linear`` layer (``mlp``, ``cnn``, ``lenet``, ``logreg``)
    is split before that layer.
    """
    body, head = getattr(model, "body", None), getattr(model, "head", None)
    if isinstance(head, nn.Linear) and callable(body):
        return body, head
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear):
        return model[:-1], model[-1]
    raise ConfigError(
        f"model: {type(model).__name__} has no representation to attach to; this method needs "
        "a model with 'body' and 'head' (a Linear classifier) attributes, such as cnn_family, "
        "or an nn.Sequential ending in a Linear layer"
    )


class LowRankAdapter(nn.Module):
    """LoRA-style factors on the representation (a d x d update of the identity) and on the
    classifier (d -> classes), both of rank ``rank``."""

    def __init__(self, dim: int, num_classes: int, rank: int) -> None:
        super().__init__()
        self.rep_down = nn.Linear(dim, rank, bias=False)
        self.rep_up = nn.Linear(rank, dim, bias=False)
        self.cls_down = nn.Linear(dim, rank, bias=False)
        self.cls_up = nn.Linear(rank, num_classes)
        for up in (self.rep_up, self.cls_up):
            nn.init.zeros_(up.weight)
        nn.init.zeros_(self.cls_up.bias)

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        adapted = representation + self.rep_up(self.rep_down(representation))
        return self.cls_up(self.cls_down(adapted))


def parallel_network(
    input_shape: tuple[int, ...], num_classes: int, width: int, channels: tuple[int, ...]
) -> nn.Module:
    """The narrow network of the ``parallel`` construction (and FML's meme model)."""
    if len(input_shape) == 3 and min(input_shape[1:]) >= 4 and channels:
        return _conv_net(input_shape, list(channels), [width], num_classes, "parallel")
    return nn.Sequential(nn.Flatten(), *_dense_stack([_flat_size(input_shape), width, num_classes]))


class AdaptedModel(nn.Module):
    """A client's local model and a homogeneous adapter, outputs mixed with weight ``mu``.

    A branch whose weight is 0 is not computed (with ``mu = 1`` the local classifier is
    skipped, with ``mu = 0`` the adapter is).
    """

    def __init__(
        self, local: nn.Module, adapter: nn.Module, mu: float, construction: Construction
    ) -> None:
        super().__init__()
        self.local = local
        self.adapter = adapter
        self.mu = mu
        self.construction = construction
        # Split once (fails now, not at the first batch); a tuple is not a submodule, so the
        # entries keep their ``local.*`` names.
        self._parts = body_and_head(local) if construction == "lora" else None

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(local output, adapter output); None for a branch whose weight is 0."""
        want_local, want_adapter = self.mu < 1, self.mu > 0
        if self.construction == "parallel":
            local = self.local(x) if want_local else None
            return local, (self.adapter(x) if want_adapter else None)
        assert self._parts is not None
        body, head = self._parts
        representation = body(x)
        local = head(representation) if want_local else None
        return local, (self.adapter(representation) if want_adapter else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local, adapter = self.branches(x)
        if adapter is None:
            assert local is not None
            return local
        if local is None:
            return adapter
        return (1 - self.mu) * local + self.mu * adapter


def build_adapter(
    local: nn.Module,
    construction: Construction,
    input_shape: tuple[int, ...],
    num_classes: int,
    rank: int,
    channels: tuple[int, ...] = (4, 8),
) -> nn.Module:
    """The homogeneous adapter for ``local``: low-rank factors on its representation, or a
    narrow parallel network."""
    if construction == "parallel":
        return parallel_network(input_shape, num_classes, rank, channels)
    _, head = body_and_head(local)
    return LowRankAdapter(head.in_features, num_classes, rank)


def is_adapter_entry(name: str) -> bool:
    return name.startswith(ADAPTER_PREFIX)
