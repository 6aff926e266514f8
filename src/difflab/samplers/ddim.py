"""DDIM (Song et al. 2021, eq. 12), on any decreasing grid of noise levels, and its inversion.

With x = x_t / sqrt(abar_t) (VE form), eps_hat = (x - x0_hat) / sigma_t, and

    sigma_up   = eta * sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2)     (eq. 16, in VE form)
    sigma_down = sqrt(sigma_s^2 - sigma_up^2)
    x_s        = x0_hat + sigma_down * eps_hat + sigma_up * z

eta = 0 is the deterministic DDIM, an Euler step of the probability-flow ODE in these
coordinates; eta = 1 is DDPM ancestral sampling with the posterior variance.
Run on an increasing grid, the eta = 0 update is DDIM inversion x0 -> x_T.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Callback, randn_like

__all__ = ["sample_ddim"]


@torch.no_grad()
def sample_ddim(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: Optional[torch.Generator] = None,
    callback: Callback = None,
) -> Tensor:
    """DDIM from x at sigmas[0] to sigmas[-1] (decreasing to 0 to sample; increasing, eta = 0, to invert)."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta}")
    if eta > 0 and len(sigmas) > 1 and float(sigmas[-1]) > float(sigmas[0]):
        raise ValueError(f"eta = {eta} adds noise, which inversion (an increasing grid) cannot undo: use eta = 0")
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        sigma_up = 0.0
        if eta > 0 and s_next < s:
            sigma_up = eta * (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5
        sigma_down = (s_next**2 - sigma_up**2) ** 0.5
        x = denoised + (sigma_down / s) * (x - denoised)
        if sigma_up > 0:
            x = x + sigma_up * randn_like(x, generator)
    return x
