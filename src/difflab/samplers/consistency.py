"""Consistency sampling (Song et al. 2023, algorithm 1): a consistency model f maps a state at
any noise level straight to x0, so one step samples; more steps alternate f with fresh noise,

    x0_i    = f(x_i, sigma_i)
    x_{i+1} = x0_i + sqrt(sigma_{i+1}^2 - sigma_min^2) z,     z ~ N(0, I)

in the VE form x = x0 + sigma eps: f's output is the state at sigma_min (f(x, sigma_min) = x),
so the noise added brings it to sigma_{i+1}.
The levels after the first are the "chosen intermediate noise levels": any decreasing ``sigmas``,
or a spacing. A step at sigma_min would return its input (f(x, sigma_min) = x), so the spacings
that end there (karras, logsnr) drop that level for this sampler (``SamplerSpec.consistency``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Callback, randn_like

__all__ = ["sample_consistency"]


@torch.no_grad()
def sample_consistency(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    callback: Callback = None,
) -> Tensor:
    """Multistep consistency sampling from x at sigmas[0] down the decreasing sigmas to 0."""
    sigma_min = float(denoiser.proc.sigma_min)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        if s_next > 0:
            x = denoised + max(s_next**2 - sigma_min**2, 0.0) ** 0.5 * randn_like(denoised, generator)
        else:
            x = denoised
    return x
