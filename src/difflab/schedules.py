"""Noise schedules: the variances beta_1..beta_T of the forward process.

A schedule fixes q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with
abar_t = prod_{s<=t} (1 - beta_s). Everything is float64; index ``t = 0 .. T-1``
is the paper's step ``t = 1 .. T`` (see API.md).

    >>> import difflab as dl
    >>> s = dl.schedules.get("cosine", T=1000)
    >>> s.alphas_cumprod[-1] < 1e-4
    tensor(True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .validation import positive_int

__all__ = [
    "NoiseSchedule",
    "linear",
    "scaled_linear",
    "cosine",
    "sqrt",
    "sigmoid",
    "from_alpha_bar",
    "get",
    "names",
]


@dataclass(frozen=True)
class NoiseSchedule:
    """betas_t for t = 1..T, and what follows from them.

    alphas_t = 1 - betas_t,  alphas_cumprod_t = prod_{s<=t} alphas_s   (Ho et al. 2020, eq. 4)
    """

    betas: torch.Tensor
    name: str = "custom"
    alphas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a 1-D tensor with at least one entry, got shape {tuple(betas.shape)}"
            )
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            bad = betas[~((betas > 0) & (betas < 1))]
            raise ValueError(
                f"every beta must lie in the open interval (0, 1); got e.g. {bad[:3].tolist()}. "
                "Check beta_start/beta_end, or clip with max_beta < 1."
            )
        alphas = 1.0 - betas
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(alphas, 0))

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.numel()

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.T})"


def _check_T(T: int) -> int:
    return positive_int("T (the number of diffusion steps)", T)


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """beta_t linear from beta_start to beta_end (Ho et al. 2020, sec. 4).

    The defaults are the paper's for T = 1000; for another T, scale both by 1000 / T
    to keep the same abar_T, as improved-diffusion does.
    """
    T = _check_T(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"linear schedule needs 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
            f"beta_end={beta_end}"
        )
    return NoiseSchedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), "linear")


def scaled_linear(T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> NoiseSchedule:
    """sqrt(beta_t) linear (Stable Diffusion's "scaled_linear", as in diffusers)."""
    T = _check_T(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"scaled_linear needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
        )
    root = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64)
    return NoiseSchedule(root**2, "scaled_linear")


def from_alpha_bar(
    alpha_bar: Callable[[float], float], T: int, max_beta: float = 0.999, name: str = "custom"
) -> NoiseSchedule:
    """Discretise a continuous abar(u), u in [0, 1]: beta_t = min(1 - abar(t/T) / abar((t-1)/T), max_beta).

    This is improved-diffusion's ``betas_for_alpha_bar``; clipping at max_beta < 1
    avoids the singularity where abar reaches 0 at u = 1.
    """
    T = _check_T(T)
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    betas = []
    for i in range(T):
        a0, a1 = alpha_bar(i / T), alpha_bar((i + 1) / T)
        if not (math.isfinite(a0) and math.isfinite(a1)):
            raise ValueError(f"alpha_bar(u) must be finite on [0, 1], got {a0} at u = {i / T} and {a1} at "
                             f"u = {(i + 1) / T}: check the schedule's parameters")
        beta = 1.0 - a1 / a0 if a0 > 0 else max_beta
        betas.append(min(max(beta, 0.0), max_beta))
    return NoiseSchedule(torch.tensor(betas, dtype=torch.float64), name)


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """abar(u) = f(u) / f(0), f(u) = cos^2(pi/2 (u + s) / (1 + s))  (Nichol & Dhariwal 2021, eq. 17).

    beta_t is clipped at max_beta (their sec. 3.2), which only touches the last steps.
    """
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"cosine offset s must be finite and >= 0 (0.008 in the paper), got {s}")

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return from_alpha_bar(lambda u: f(u) / f(0.0), T, max_beta, "cosine")


def sqrt(T: int = 1000, s: float = 1e-4, max_beta: float = 0.999) -> NoiseSchedule:
    """abar(u) = 1 - sqrt(u + s)  (Li et al. 2022, Diffusion-LM, eq. 8)."""
    if not 0 < s < 1:  # abar(0) = 1 - sqrt(s) must be positive
        raise ValueError(f"sqrt schedule offset s must lie in (0, 1) (1e-4 in the paper), got {s}")
    return from_alpha_bar(lambda u: 1.0 - math.sqrt(u + s), T, max_beta, "sqrt")


def sigmoid(
    T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, scale: float = 6.0
) -> NoiseSchedule:
    """beta_t = beta_start + (beta_end - beta_start) * sigmoid(linspace(-scale, scale, T)).

    GeoDiff's schedule (Xu et al. 2022), the meaning of "sigmoid" in diffusers' DDPMScheduler.
    """
    T = _check_T(T)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"sigmoid schedule needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
        )
    u = torch.sigmoid(torch.linspace(-scale, scale, T, dtype=torch.float64))
    return NoiseSchedule(beta_start + (beta_end - beta_start) * u, "sigmoid")


_REGISTRY: dict[str, Callable[..., NoiseSchedule]] = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "cosine": cosine,
    "squaredcos_cap_v2": cosine,  # diffusers' name for the same schedule
    "sqrt": sqrt,
    "sigmoid": sigmoid,
}


def names() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def get(name: str, T: int = 1000, **kwargs) -> NoiseSchedule:
    """A schedule by name, for configs and the CLI: ``get("cosine", T=1000, s=0.008)``."""
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(names())}")
    try:
        return _REGISTRY[name.lower()](T=T, **kwargs)
    except TypeError as err:  # an unexpected keyword argument
        raise TypeError(f"schedule {name!r}: {err}") from None
