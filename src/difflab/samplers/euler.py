"""Euler on the probability-flow ODE in the EDM formulation (Karras et al. 2022, Algorithm 2 without its correction).

In the VE parameterisation x = x0 + sigma eps with sigma(t) = t, the probability-flow ODE is
(Karras et al. 2022, eq. 4 with s = 1, sigma(t) = t)

    dx / dsigma = d(x, sigma) = (x - D(x, sigma)) / sigma

and Euler's method steps x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d(x_i, sigma_i). In these
coordinates that is exactly deterministic DDIM: x_{i+1} = D + (sigma_{i+1}/sigma_i)(x_i - D).
The samplers differ in their default noise levels (Karras rho = 7 here).

Optional stochasticity ("churn", their Algorithm 2, lines 4-6): before step i, raise the
noise level to sigma_hat = (1 + gamma_i) sigma_i by adding fresh noise of variance
sigma_hat^2 - sigma_i^2, with gamma_i = min(S_churn / N, sqrt(2) - 1) for sigma_i in
[S_tmin, S_tmax] and 0 elsewhere; S_noise scales that noise. S_churn = 0 is the plain ODE.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..validation import is_real
from .base import Callback, randn_like

__all__ = ["sample_euler", "churn"]


def churn(
    x: Tensor,
    sigmas: Tensor,
    i: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    generator: Optional[torch.Generator],
) -> tuple[Tensor, float]:
    """EDM's noise injection before step i: returns (x_hat, sigma_hat), Karras et al. 2022, Alg. 2 lines 4-6.

    sigma_hat is capped at sigmas[0], the top of the grid, so the network is never asked about
    a noise level above the one sampling started from.
    """
    s = float(sigmas[i])
    n = len(sigmas) - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_churn > 0 and s_tmin <= s <= s_tmax else 0.0
    sigma_hat = min(s * (1.0 + gamma), float(sigmas[0]))
    if sigma_hat > s:
        x = x + s_noise * math.sqrt(sigma_hat**2 - s**2) * randn_like(x, generator)
    return x, sigma_hat


def check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
    for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_tmax", s_tmax), ("s_noise", s_noise)):
        if not is_real(value):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not s_churn >= 0:
        raise ValueError(f"s_churn must be >= 0 (0 = deterministic ODE), got {s_churn}")
    if not 0 <= s_tmin <= s_tmax:
        raise ValueError(f"need 0 <= s_tmin <= s_tmax, got s_tmin={s_tmin}, s_tmax={s_tmax}")
    if not (math.isfinite(s_noise) and s_noise > 0):
        raise ValueError(f"s_noise must be finite and > 0 (1 = the exact noise; Karras et al. use 1.003), "
                         f"got {s_noise}")


@torch.no_grad()
def sample_euler(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: Optional[torch.Generator] = None,
    callback: Callback = None,
) -> Tensor:
    """Euler steps x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (x_hat - D(x_hat, sigma_hat)) / sigma_hat.

    One denoiser call per step; x_hat = x_i and sigma_hat = sigma_i unless ``s_churn`` > 0.
    """
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, s = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, generator)
        s_next = float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        x = x + (s_next - s) * ((x - denoised) / s)
    return x
