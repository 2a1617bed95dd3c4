"""FedProx Synthetic(alpha, beta) (Li et al. 2020), generated from the run's generator."""

from __future__ import annotations

import dataclasses

import numpy as np

from plural.config import setting
from plural.data.types import ArrayDataset
from plural.registry import DATASETS


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Settings of FedProx Synthetic(alpha, beta) (Li et al. 2020)."""

    alpha: float = setting(
        1.0,
        help="spread of the per-device models: u_k ~ N(0, alpha), with alpha a standard "
        "deviation as in the authors' generator",
        ge=0,
    )
    beta: float = setting(
        1.0,
        help="spread of the per-device feature means: B_k ~ N(0, beta), with beta a standard "
        "deviation as in the authors' generator",
        ge=0,
    )
    iid: bool = setting(
        False,
        help="IID variant: one W, b ~ N(0, 1) shared by all devices and v_k = 0 "
        "(alpha and beta are then unused)",
    )
    num_devices: int = setting(30, help="number of devices (the paper uses 30)", ge=1)
    dim: int = setting(60, help="number of features (the paper uses 60)", ge=1)
    num_classes: int = setting(10, help="number of classes (the paper uses 10)", ge=2)
    max_samples_per_device: int | None = setting(
        None,
        help="cap on each device's n_k; null keeps the paper's lognormal sizes (setting it "
        "departs from the paper)",
        ge=1,
    )


def _synthetic_models(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-device feature means v (K, d), weights W (K, d, C) and biases b (K, C)."""
    k, d, c = config.num_devices, config.dim, config.num_classes
    if config.iid:
        w = rng.normal(0.0, 1.0, size=(d, c))
        b = rng.normal(0.0, 1.0, size=c)
        return np.zeros((k, d)), np.broadcast_to(w, (k, d, c)), np.broadcast_to(b, (k, c))
    u = rng.normal(0.0, config.alpha, size=k)  # mean of both W_k and b_k
    big_b = rng.normal(0.0, config.beta, size=k)
    v = rng.normal(big_b[:, None], 1.0, size=(k, d))
    w = rng.normal(u[:, None, None], 1.0, size=(k, d, c))
    b = rng.normal(u[:, None], 1.0, size=(k, c))
    return v, w, b


@DATASETS.register(
    "synthetic", SyntheticConfig, "FedProx Synthetic(alpha, beta): 30 devices, 60 features"
)
def load_synthetic(config: SyntheticConfig, rng: np.random.Generator) -> ArrayDataset:
    """FedProx Synthetic(alpha, beta) (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks"), following the authors' generator.

    Device k has ``n_k = int(lognormal(4, 2)) + 50`` samples (capped by
    ``max_samples_per_device`` if set, which departs from the paper). ``u_k ~ N(0, alpha)``,
    ``B_k ~ N(0, beta)``, ``v_k[j] ~ N(B_k, 1)``, ``W_k ~ N(u_k, 1)``, ``b_k ~ N(u_k, 1)``,
    ``x ~ N(v_k, diag(j^-1.2))`` and ``y = argmax(softmax(x W_k + b_k))``. The paper writes
    N(0, alpha) but its code calls ``np.random.normal(0, alpha)``, so alpha and beta are
    standard deviations here (the two readings agree at 0 and 1, e.g. Synthetic(1, 1), and
    differ otherwise, e.g. Synthetic(0.5, 0.5)). ``client_ids`` is the device index; the
    per-device train/test split is left to the engine. All draws come from ``rng``, in the
    order: sizes, model priors, samples.
    """
    k, d = config.num_devices, config.dim
    sizes = rng.lognormal(4.0, 2.0, size=k).astype(np.int64) + 50
    if config.max_samples_per_device is not None:
        sizes = np.minimum(sizes, config.max_samples_per_device)
    v, w, b = _synthetic_models(config, rng)
    client_ids = np.repeat(np.arange(k, dtype=np.int64), sizes)
    std = np.arange(1, d + 1, dtype=np.float64) ** -0.6  # sqrt of Sigma_jj = j^-1.2
    x64 = rng.standard_normal(size=(int(sizes.sum()), d))
    x64 *= std
    x64 += v[client_ids]
    x = x64.astype(np.float32)
    del x64
    y = np.empty(len(x), dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for dev in range(k):
        rows = slice(bounds[dev], bounds[dev + 1])
        # argmax of softmax is argmax of the logits; labels come from the stored float32 x
        y[rows] = np.argmax(x[rows].astype(np.float64) @ w[dev] + b[dev], axis=1)
    return ArrayDataset(
        name="synthetic",
        x=x,
        y=y,
        num_classes=config.num_classes,
        input_shape=(d,),
        client_ids=client_ids,
    )
