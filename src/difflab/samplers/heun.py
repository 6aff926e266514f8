"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, "EDM", Algorithm 1/2).

With d(x, sigma) = (x - D(x, sigma)) / sigma (the ODE dx/dsigma = d in VE form, their eq. 4),
each step is an Euler predictor followed by the trapezoidal corrector:

    x'      = x_i + (sigma_{i+1} - sigma_i) d(x_i, sigma_i)
    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d(x_i, sigma_i) + d(x', sigma_{i+1})) / 2

except on the last step to sigma = 0, where d(x', 0) is undefined and the Euler step is kept
(their Algorithm 1, line 7). Model calls: 2 per step, one on the last: **2 * steps - 1**.
``s_churn`` etc. add EDM's stochastic noise injection (see :mod:`.euler`).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Callback
from .euler import check_churn, churn

__all__ = ["sample_heun"]


@torch.no_grad()
def sample_heun(
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
    """EDM's Heun sampler over ``sigmas``; 2 * steps - 1 denoiser calls (the final step is Euler)."""
    check_churn(s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sigmas) - 1):
        x, s = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, generator)
        s_next = float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        d = (x - denoised) / s
        x_euler = x + (s_next - s) * d
        if s_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, s_next)) / s_next
            x = x + (s_next - s) * (d + d_next) / 2
    return x
