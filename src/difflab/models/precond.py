"""EDM's preconditioning (Karras et al. 2022, sec. 5 and table 1): a network F becomes the denoiser

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))        (eq. 7)

    c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

so the network's input and its training target have unit variance at every noise level. The
model convention holds with t = sigma: ``EDMPrecond(net)(x, sigma[, cond])`` returns D, the x0
prediction of :class:`difflab.processes.EDM`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .embeddings import batch_timesteps

__all__ = ["EDMPrecond"]


class EDMPrecond(nn.Module):
    """D(x, sigma) = c_skip x + c_out net(c_in x, time_scale c_noise[, cond]), eq. 7 of Karras et al. 2022.

    ``time_scale`` multiplies c_noise = ln(sigma) / 4 before the network: difflab's networks
    embed their time input sinusoidally with frequencies for the DDPM timestep's range 0 .. 1000,
    so by default the network sees 1000 c_noise = 250 ln sigma (in [-1550, 1100] for sigma in
    [0.002, 80]); ``time_scale=1`` is EDM's own input. ``num_classes`` is the network's.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, time_scale: float = 1000.0) -> None:
        super().__init__()
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data (the data's standard deviation, 0.5 for images in [-1, 1]) must be a "
                             f"finite number > 0, got {sigma_data!r}")
        if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
        self.net = net
        self.sigma_data, self.time_scale = float(sigma_data), float(time_scale)

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.net, "num_classes", None)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """c_skip, c_out, c_in, c_noise at noise levels sigma [B] (table 1)."""
        sd2 = self.sigma_data**2
        total = sigma * sigma + sd2
        return sd2 / total, sigma * self.sigma_data * total.rsqrt(), total.rsqrt(), sigma.log() / 4

    @property
    def guidance_input(self) -> bool:
        return bool(getattr(self.net, "guidance_input", False))

    def forward(self, x: Tensor, sigma: Tensor, cond: Optional[Tensor] = None, guidance=None) -> Tensor:
        sigma = batch_timesteps(sigma, x).to(torch.float32 if x.dtype != torch.float64 else torch.float64)
        if sigma.device.type == "cpu" and not torch.compiler.is_compiling() and (sigma <= 0).any():
            raise ValueError("EDMPrecond's time input is the noise level sigma, which must be > 0 (ln sigma "
                             "is the network's time)")
        c_skip, c_out, c_in, c_noise = (c.view(-1, *([1] * (x.ndim - 1))) if i < 3 else c
                                        for i, c in enumerate(self.coefficients(sigma)))
        x_in = (c_in * x).to(x.dtype)
        t = c_noise * self.time_scale
        if guidance is not None:  # (a network with a guidance input, guidance_embed=True)
            f = self.net(x_in, t, cond, guidance=guidance)
        else:
            f = self.net(x_in, t) if cond is None else self.net(x_in, t, cond)
        return (c_skip * x + c_out * f.to(c_out.dtype)).to(x.dtype)
