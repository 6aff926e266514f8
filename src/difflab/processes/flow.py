"""Flow matching and rectified flow: the straight path from data to noise.

    x_t = (1 - t) x0 + t eps,   t in [0, 1], t = 1 pure noise                 (Lipman et al. 2023;
    u   = d x_t / dt = eps - x0                                                 Liu et al. 2022)

The network regresses the velocity u (prediction ``"velocity"``); sampling integrates
dx/dt = u_theta(x_t, t) from t = 1 to 0. In the samplers' VE form sigma = t / (1 - t) and
x_t = x / (1 + sigma), and an Euler step in t is exactly a DDIM step, so every sampler applies.
Sampling starts at t_max = 0.999 (sigma = 999): t = 1 is sigma = infinity in that form; the
state there differs from pure noise by 0.001 x0.

Training times: ``"uniform"`` on [0, 1] or ``"logit_normal"``: t = sigmoid(m + s n), n ~ N(0, 1)
(Esser et al. 2024, SD3, m = 0, s = 1). Coupling of data and noise in a batch: ``"independent"``
(I-CFM) or ``"ot"``, the minibatch optimal transport pairing (OT-CFM, Tong et al. 2024;
Pooladian et al. 2023): the permutation of the noise minimising sum_i ||x0_i - eps_pi(i)||^2,
exact by the Hungarian algorithm (scipy's ``linear_sum_assignment``).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..validation import is_real
from .base import Process, check_clip_x0

__all__ = ["FlowMatching", "ot_coupling", "TIME_SAMPLINGS", "COUPLINGS"]

TIME_SAMPLINGS = ("uniform", "logit_normal")
COUPLINGS = ("independent", "ot")


def ot_coupling(x0: Tensor, noise: Tensor) -> Tensor:
    """The permutation pi minimising sum_i ||x0_i - noise_pi(i)||^2 over a batch (long [B]):
    ``noise[pi]`` is the optimal transport pairing of the batch's empirical measures."""
    if x0.shape[0] != noise.shape[0]:
        raise ValueError(f"x0 and noise must have the same batch size, got {x0.shape[0]} and {noise.shape[0]}")
    cost = torch.cdist(x0.detach().flatten(1).double(), noise.detach().flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    perm = np.empty_like(cols)
    perm[rows] = cols
    return torch.from_numpy(perm).to(x0.device)


class FlowMatching(Process):
    """x_t = (1 - t) x0 + t eps with the velocity eps - x0 as the network's target.

    ``time_sampling``: "uniform" or "logit_normal" (``logit_mean``, ``logit_std``);
    ``coupling``: "independent" or "ot" (minibatch optimal transport). The network receives
    1000 t (SD3's convention, the DDPM timestep's range). Sampling runs on [t_min, t_max] =
    [0.001, 0.999], then to t = 0.
    """

    timestep_scale = 1000.0
    default_spacing = "uniform"
    predictions = ("velocity", "eps", "x0", "v")

    def __init__(self, time_sampling: str = "uniform", coupling: str = "independent", logit_mean: float = 0.0,
                 logit_std: float = 1.0, t_min: float = 1e-3, t_max: float = 0.999,
                 prediction: str = "velocity", clip_x0: Optional[float] = None) -> None:
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of {', '.join(TIME_SAMPLINGS)}")
        if coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {coupling!r}; choose 'independent' (I-CFM) or 'ot' (minibatch "
                             "optimal transport, OT-CFM)")
        if not (is_real(logit_mean) and math.isfinite(logit_mean)):
            raise ValueError(f"logit_mean must be a finite number (0 in SD3), got {logit_mean!r}")
        if not (is_real(logit_std) and math.isfinite(logit_std) and logit_std > 0):
            raise ValueError(f"logit_std must be a finite number > 0 (1 in SD3), got {logit_std!r}")
        if not (is_real(t_min) and is_real(t_max) and 0 < t_min < t_max < 1):
            raise ValueError(f"need 0 < t_min < t_max < 1 (t = 1 is infinite noise level in the samplers' form; "
                             f"0.999 is the default top), got t_min={t_min!r}, t_max={t_max!r}")
        if prediction not in self.predictions:
            raise ValueError(f"unknown prediction type {prediction!r} for FlowMatching; choose one of "
                             f"{', '.join(self.predictions)}")
        self.time_sampling, self.coupling = time_sampling, coupling
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.prediction = prediction
        self.clip_x0 = check_clip_x0(clip_x0)

    def __repr__(self) -> str:
        return (f"FlowMatching(time_sampling={self.time_sampling!r}, coupling={self.coupling!r}, "
                f"t_max={self.t_max:g}, prediction={self.prediction!r})")

    def signature(self) -> tuple:
        return ("FlowMatching", self.prediction, self.t_min, self.t_max)

    def sigma_of(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return t / (1 - t)

    def t_of(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return sigma / (1 + sigma)

    def scale(self, sigma):
        """1 - t = 1 / (1 + sigma)."""
        if not isinstance(sigma, float):
            sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return 1 / (1 + sigma)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1 - t, t  # defined at t = 1 too, where sigma is infinite

    def snr(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((1 - t) / t) ** 2

    def time_range(self) -> tuple[float, float]:
        return 0.0, 1.0

    def training_times(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """Uniform on [0, 1), or sigmoid(logit_mean + logit_std n)."""
        if self.time_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=generator, device=device))

    def couple(self, x0: Tensor, noise: Tensor, cond: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """The noise re-paired to the data by minibatch optimal transport when ``coupling="ot"``."""
        if self.coupling == "ot":
            noise = noise[ot_coupling(x0, noise)]
        return x0, noise, cond
