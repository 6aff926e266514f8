"""EDM: the design space of Karras et al. 2022 ("Elucidating the design space of diffusion-based
generative models"), table 1, right column.

The process is the VE one, x = x0 + sigma eps, in the noise level itself (t = sigma, a = 1).
The network is a denoiser D(x, sigma) wrapped in the preconditioning of their eq. 7
(:class:`difflab.models.EDMPrecond`: c_skip, c_out, c_in, c_noise), so this process's prediction
is x0 and its model receives sigma. Training draws

    ln sigma ~ N(P_mean, P_std^2),   P_mean = -1.2, P_std = 1.2                   (table 1)

and weights the squared error of D by

    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2               (eq. 8, table 1)

which makes the effective training target c_out^-1 (x0 - c_skip x) of unit variance. Sampling:
``sampler="heun"`` with EDM's rho = 7 noise levels (``spacing="karras"``, the default here) and,
for their stochastic sampler, ``s_churn`` etc.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..validation import is_real
from .base import Process, Weighting, ve_scale, check_clip_x0, check_positive

__all__ = ["EDM"]


class EDM(Process):
    """Karras et al. 2022's process: t = sigma in [sigma_min, sigma_max] = [0.002, 80], the
    network a preconditioned denoiser (prediction ``"x0"``), log-normal training noise levels and
    the loss weight lambda(sigma). ``weighting=None`` is EDM's lambda; ``"uniform"`` weights 1."""

    predictions = ("x0",)
    default_spacing = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 P_mean: float = -1.2, P_std: float = 1.2, prediction: str = "x0",
                 clip_x0: Optional[float] = None) -> None:
        lo = check_positive("sigma_min", sigma_min, " (0.002 in Karras et al. 2022)")
        hi = check_positive("sigma_max", sigma_max, " (80 in Karras et al. 2022)")
        if not lo < hi:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_data = check_positive("sigma_data", sigma_data, " (the data's standard deviation, 0.5 for images "
                                                                   "in [-1, 1])")
        if not (is_real(P_mean) and math.isfinite(P_mean)):
            raise ValueError(f"P_mean (the mean of ln sigma in training) must be a finite number, got {P_mean!r}")
        self.P_mean = float(P_mean)
        self.P_std = check_positive("P_std", P_std, " (the spread of ln sigma in training, 1.2 in Karras et al.)")
        if prediction != "x0":
            raise ValueError(f"EDM's network is a denoiser D(x, sigma) (prediction 'x0', preconditioned by "
                             f"dl.models.EDMPrecond), got prediction={prediction!r}; for eps, v or velocity "
                             "targets use GaussianDiffusion, VPSDE/VESDE or FlowMatching")
        self.prediction = "x0"
        self.t_min, self.t_max = lo, hi
        self.clip_x0 = check_clip_x0(clip_x0)

    def __repr__(self) -> str:
        return (f"EDM(sigma_min={self.t_min:g}, sigma_max={self.t_max:g}, sigma_data={self.sigma_data:g}, "
                f"P_mean={self.P_mean:g}, P_std={self.P_std:g})")

    def signature(self) -> tuple:
        return ("EDM", self.t_min, self.t_max, self.sigma_data)

    def sigma_of(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def t_of(self, sigma: Tensor) -> Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64)

    def scale(self, sigma):
        return ve_scale(sigma)

    def time_range(self) -> tuple[float, float]:
        return 0.0, math.inf  # log-normal training levels reach beyond [sigma_min, sigma_max]

    def check_t(self, t: Tensor, x: Tensor, argname: str = "x0") -> Tensor:
        t = super().check_t(t, x, argname)
        if t.device.type == "cpu" and not torch.compiler.is_compiling() and (t <= 0).any():
            raise ValueError("EDM's t is the noise level sigma and must be > 0")
        return t

    def training_times(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """sigma = exp(P_mean + P_std n), n ~ N(0, 1)."""
        return (self.P_mean + self.P_std * torch.randn(n, generator=generator, device=device)).exp()

    def loss_weight(self, t: Tensor, weighting: Weighting = None) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (eq. 8) for ``weighting=None``;
        else as :meth:`Process.loss_weight`."""
        if weighting is not None:
            return super().loss_weight(t, weighting)
        sd2 = self.sigma_data**2
        return ((t * t + sd2) / (t * t * sd2)).to(torch.float32)
