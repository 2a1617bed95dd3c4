"""A mixture of models as one ``torch.nn.Module``, for reuse outside plural (``plural.load``,
``plural export``): FedEM (Marfoq et al. 2021) scores a client with such a mixture."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from plural.core.trainer import mixed_prediction


class MixtureModule(nn.Module):
    """The components as submodules (``components.<m>.<name>``) and their weights as the
    buffer ``mixture_weights``. Classification: the output is the log of the mixed class
    probabilities ``log sum_m w_m softmax(f_m(x))`` in float64, so its argmax is the
    mixture's prediction and cross-entropy on it is the mixture's loss; regression: the mixed
    output ``sum_m w_m f_m(x)``."""

    def __init__(
        self, components: Sequence[nn.Module], weights: torch.Tensor, classify: bool
    ) -> None:
        super().__init__()
        if len(components) != len(weights):
            raise ValueError(f"{len(components)} components but {len(weights)} weights")
        self.components = nn.ModuleList(components)
        self.register_buffer("mixture_weights", weights.detach().double().clone())
        self.classify = classify

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [component(x) for component in self.components]
        mixed = mixed_prediction(outputs, self.mixture_weights, self.classify)
        if not self.classify:
            return mixed
        return mixed.clamp_min(torch.finfo(torch.float64).tiny).log()
