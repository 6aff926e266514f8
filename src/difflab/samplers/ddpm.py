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

A network that learns its variance (improved DDPM, Nichol & Dhariwal 2021, eq. 15) outputs v per
value and the step's variance interpolates the two in log space,

    log var = (v + 1) / 2 log var_beta + (1 - v) / 2 log var_posterior,

both of the respaced step (t -> s) and both in the VE coordinates of level s (the common factor
1 / a_s^2 leaves the interpolation unchanged): so 25 to 100 respaced steps use the learned
variance as the paper's respacing does.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .base import Callback, randn_like

__all__ = ["sample_ddpm", "VARIANCES"]

VARIANCES = ("posterior", "beta", "learned")


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
    variance: Optional[str] = None,
    generator: Optional[torch.Generator] = None,
    callback: Callback = None,
) -> Tensor:
    """Ancestral sampling from x at sigmas[0] down to sigmas[-1] = 0.

    ``variance``: "posterior" (beta~), "beta", or "learned" (the network's own, for a network that
    learns it: the default there; "posterior" otherwise). A denoiser with ``mean_shift``
    (classifier guidance, Dhariwal & Nichol 2021, Alg. 1) has its base ``denoiser.denoiser``
    predict x0 and adds ``mean_shift(x, sigma, var, sigma_next=...)`` = s Sigma grad log p(y | x_t) to each mean."""
    guide = getattr(denoiser, "mean_shift", None)
    base = denoiser.denoiser if guide is not None else denoiser
    learned = bool(getattr(base, "learned_variance", False))
    if variance is None:
        variance = "learned" if learned else "posterior"
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    if variance == "learned" and not learned:
        raise ValueError("variance='learned' needs a network that learns its variance (learn_sigma: true, trained "
                         "with loss: hybrid or vlb); this one does not: use variance='posterior' or 'beta'")
    predict = getattr(base, "predict", None)  # a plain function D(x, sigma) predicts no variance
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised, v = predict(x, s) if predict is not None else (base(x, s), None)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        r = (s_next / s) ** 2
        mean = (1 - r) * denoised + r * x
        if s_next > 0:
            var_posterior = s_next**2 * (s**2 - s_next**2) / s**2
            var_beta = (s**2 - s_next**2) * _scale_ratio_squared(denoiser, s, s_next)
            if variance == "learned":  # log-variance between beta~ (v = -1) and beta (v = 1), eq. 15
                frac = (v.to(x.dtype) + 1) / 2
                var = torch.exp(frac * math.log(var_beta) + (1 - frac) * math.log(var_posterior))
            else:
                var = var_posterior if variance == "posterior" else var_beta
            if guide is not None:
                mean = mean + guide(x, s, var, sigma_next=s_next)
            x = mean + var**0.5 * randn_like(x, generator)
        else:
            x = mean
    return x
