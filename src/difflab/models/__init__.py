"""Networks of the model convention: ``model(x_t, t[, cond])`` returns x_t's shape (API.md).

``build(name, **kwargs)`` makes one from a config (used by the trainer and checkpoints).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .analytic import GaussianDenoiser, GaussianMixtureDenoiser
from .embeddings import LabelEmbedding, SinusoidalEmbedding, TimestepEmbedding
from .mlp import MLPDenoiser
from .unet import UNet, unet_cifar10, unet_mnist, unet_tiny

__all__ = [
    "MLPDenoiser",
    "UNet",
    "GaussianMixtureDenoiser",
    "GaussianDenoiser",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "LabelEmbedding",
    "build",
    "register",
    "names",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {"mlp": MLPDenoiser}


def register(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make a network buildable by name from configs."""
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, **kwargs) -> nn.Module:
    """A network by name: ``build("mlp", dim=2, width=128)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"model {name!r}: {err}") from None


register("unet", UNet)
register("unet_mnist", unet_mnist)
register("unet_cifar10", unet_cifar10)
register("unet_tiny", unet_tiny)
