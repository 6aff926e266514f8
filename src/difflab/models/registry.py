"""Networks by name, for configs and checkpoints: ``build("unet_mnist", num_classes=10)``."""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

__all__ = ["register", "names", "build", "accepts"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make a network buildable by name from configs."""
    _REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(_REGISTRY)


def accepts(name: str, argument: str) -> bool:
    """Whether the network ``name``'s builder takes ``argument`` (e.g. a text model's ``vocab``)."""
    if name not in _REGISTRY:
        return False
    params = inspect.signature(_REGISTRY[name]).parameters
    return argument in params


def build(name: str, **kwargs) -> nn.Module:
    """A network by name: ``build("mlp", dim=2, width=128)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"model {name!r}: {err}") from None
