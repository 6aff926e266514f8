"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any decreasing grid of noise levels.

Each step draws x_s ~ p(x_s | x_t) = q(x_s | x_t, x0 = D(x_t)). In the VE parameterisation
x = x_t / sqrt(abar_t), with r = sigma_s^2 / sigma_t^2, the posterior (eqs. 6-7) reads

    mean = (1 - r) x0 + r x_t
    var  = sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2               ("posterior": beta~_t)
    var  = (sigma_t^2 - sigma_s^2) (a_t / a_s)^2                       ("beta": beta_t, scaled to VE)

"beta" is the variance of the forward transition q(x_t | x_s) seen in the VE coordinates of
level s: x_t = (a_t / a_s) x_s + noise of variance a_t^2 (sigma_t^2 - sigma_s^2), divided by
a_s^2, with a = ``denoiser.scale(sigma)`` the process's scale (:mod:`difflab.processes.base`).
For the VP processes, a^2 = 1 / (1 + sigma^2), it is (sigma_t^2 - sigma_s^2) (1 + sigma_s^2) /
(1 + sigma_t^2), DDPM's beta_t; a denoiser without ``scale`` (a plain function) gets that VP form.
On a sub-grid (steps < T) these are the respaced process's beta'_t = 1 - abar_t / abar_s
(Nichol & Dhariwal 2021, sec. 4). The last step (sigma_s = 0) returns the mean, x0, noise-free.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Callback, randn_like

__all__ = ["sample_ddpm", "VARIANCES"]

VARIANCES = ("posterior", "beta")


def _scale_ratio_squared(denoiser, s: float, s_next: float) -> float:
    """(a(s) / a(s_next))^2 from the denoiser's process; the VP value (1 + s'^2) / (1 + s^2)
    for a denoiser without ``scale``."""
    scale = getattr(denoiser, "scale", None)
    if scale is None:
        return (1 + s_next**2) / (1 + s**2)
    return (float(scale(s)) / float(scale(s_next))) ** 2


@torch.no_grad()
def sample_ddpm(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    variance: str = "posterior",
    generator: Optional[torch.Generator] = None,
    callback: Callback = None,
) -> Tensor:
    """Ancestral sampling from x at sigmas[0] down to sigmas[-1] = 0."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        r = (s_next / s) ** 2
        x = (1 - r) * denoised + r * x
        if s_next > 0:
            if variance == "posterior":
                var = s_next**2 * (s**2 - s_next**2) / s**2
            else:
                var = (s**2 - s_next**2) * _scale_ratio_squared(denoiser, s, s_next)
            x = x + var**0.5 * randn_like(x, generator)
    return x
