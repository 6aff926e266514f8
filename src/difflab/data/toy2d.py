"""2D toy distributions, each scaled to roughly unit standard deviation per axis.

``make(name, n, generator=None, labels=False)`` draws n points [n, 2] (and integer labels
where the set has natural classes: the 8 Gaussians' modes, the two moons, the checkerboard's
squares' colour, the roll's two halves), for unconditional and class-conditional toys.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..validation import is_int, is_real, positive_int

__all__ = ["swiss_roll", "two_moons", "eight_gaussians", "checkerboard", "make", "NAMES", "NUM_CLASSES"]


def _u(n: int, g: Optional[torch.Generator]) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _z(n: int, g: Optional[torch.Generator], d: int = 2) -> Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def swiss_roll(n: int, noise: float = 0.5, generator: Optional[torch.Generator] = None):
    """t ~ U(1.5 pi, 4.5 pi), x = (t cos t, t sin t) + noise (scikit-learn's roll, seen from above), / 7.5.

    Labels: the inner (0) and outer (1) half of the arc length parameter.
    """
    t = 1.5 * math.pi * (1 + 2 * _u(n, generator))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + noise * _z(n, generator)
    return x / 7.5, (t > 3 * math.pi).long()


def two_moons(n: int, noise: float = 0.08, generator: Optional[torch.Generator] = None):
    """scikit-learn's two interleaving half circles, centred and scaled; labels: the moon."""
    label = (_u(n, generator) < 0.5).long()
    a = math.pi * _u(n, generator)
    upper = torch.stack([torch.cos(a), torch.sin(a)], 1)
    lower = torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], 1)
    x = torch.where(label[:, None] == 0, upper, lower) + noise * _z(n, generator)
    return (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 0.85, label


def eight_gaussians(n: int, std: float = 0.1, radius: float = 1.4, generator: Optional[torch.Generator] = None):
    """N(radius (cos 2pi k/8, sin 2pi k/8), std^2 I), k uniform on 0..7; labels: k."""
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = 2 * math.pi * k.double() / 8
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return centres + std * _z(n, generator), k


def checkerboard(n: int, squares: int = 4, generator: Optional[torch.Generator] = None):
    """Uniform on the dark squares of a squares x squares board on [-2, 2]^2, / 1.15; labels: row parity.
    ``squares`` is even (every row then has squares / 2 dark squares)."""
    if not is_int(squares) or squares < 2 or squares % 2:
        raise ValueError(f"checkerboard squares must be an even integer >= 2 (4 by default), got {squares!r}")
    size = 4.0 / squares
    i = torch.randint(0, squares, (n,), generator=generator)
    j = (2 * torch.randint(0, squares // 2, (n,), generator=generator) + i % 2) % squares
    x = torch.stack([j.double(), i.double()], 1) + _u(2 * n, generator).view(n, 2)
    return (x * size - 2.0) / 1.15, (i % 2).long()


_MAKERS: dict[str, Callable] = {
    "swiss_roll": swiss_roll,
    "moons": two_moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}
NAMES = tuple(_MAKERS)
NUM_CLASSES = {"swiss_roll": 2, "moons": 2, "8gaussians": 8, "checkerboard": 2}


def make(name: str, n: int, generator: Optional[torch.Generator] = None, labels: bool = False, **kwargs):
    """n points of the toy set ``name`` as float32 [n, 2] (and long labels [n] if ``labels``)."""
    if name not in _MAKERS:
        raise ValueError(f"unknown 2D dataset {name!r}; choose one of {', '.join(NAMES)}")
    n = positive_int("n (the number of points)", n)
    options = [k for k in inspect.signature(_MAKERS[name]).parameters if k not in ("n", "generator")]
    for key, value in kwargs.items():
        if key not in options:
            raise ValueError(f"2D dataset {name!r} has no option {key!r}; its options: {', '.join(options)}")
        if key != "squares" and (not is_real(value) or not math.isfinite(value) or value < 0):
            raise ValueError(f"2D dataset {name!r}: {key} must be a finite number >= 0, got {value!r}")
    x, y = _MAKERS[name](n, generator=generator, **kwargs)
    return (x.float(), y) if labels else x.float()
