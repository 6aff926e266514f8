"""The score SDEs of Song et al. 2021 in continuous time t in [0, 1].

VP SDE (their eq. 11, the continuous DDPM):  dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw,
beta(t) = beta_min + t (beta_max - beta_min), so

    x_t = a(t) x0 + sqrt(1 - a(t)^2) eps,   log a(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2
    sigma(t) = sqrt(1 - a^2) / a = sqrt(exp(t^2 (beta_max - beta_min) / 2 + t beta_min) - 1)

VE SDE (their eq. 9, NCSN):  dx = sqrt(d sigma(t)^2 / dt) dw,  sigma(t) = sigma_min (sigma_max / sigma_min)^t,

    x_t = x0 + sigma(t) eps.

Both are trained here by denoising score matching with the weight lambda(t) = s(t)^2 that makes
it noise regression: ||s(t) score_theta + eps||^2 = ||eps_theta - eps||^2 (their eq. 7 with
eps-prediction, score = -eps / s). The network receives 999 t, the DDPM timestep's range (their
continuous DDPM++ models do the same). The reverse SDE and the predictor-corrector sampler are
``sampler="euler_maruyama"`` and ``"pc"`` (:mod:`difflab.samplers.sde`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..validation import is_real
from .base import Process, ve_scale, vp_scale, check_clip_x0, check_positive

__all__ = ["VPSDE", "VESDE"]


def _check_prediction(process: Process, prediction: str) -> str:
    if prediction not in process.predictions:
        raise ValueError(f"unknown prediction type {prediction!r} for {type(process).__name__}; choose one of "
                         f"{', '.join(process.predictions)}")
    return prediction


def _uniform_times(lo: float, hi: float, n: int, generator, device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


class VPSDE(Process):
    """The variance-preserving SDE with a linear beta(t) on [t_min, 1] (Song et al. 2021, eq. 11).

    Defaults: beta_min = 0.1, beta_max = 20 (their CIFAR-10 settings, the continuous limit of
    DDPM's linear schedule with T = 1000); t_min = 1e-3, their sampling epsilon (training times
    are uniform on [t_min, 1]).
    """

    timestep_scale = 999.0
    default_spacing = "uniform"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 prediction: str = "eps", clip_x0: Optional[float] = None) -> None:
        self.beta_min = check_positive("beta_min", beta_min, " (0.1 in Song et al. 2021)")
        self.beta_max = check_positive("beta_max", beta_max, " (20 in Song et al. 2021)")
        if self.beta_max < self.beta_min:
            raise ValueError(f"need beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        if not (is_real(t_min) and 0 < t_min < 1):
            raise ValueError(f"t_min (where sampling stops before the final step) must lie in (0, 1), e.g. 1e-3; "
                             f"got {t_min!r}")
        self.t_min, self.t_max = float(t_min), 1.0
        self.prediction = _check_prediction(self, prediction)
        self.clip_x0 = check_clip_x0(clip_x0)

    def __repr__(self) -> str:
        return (f"VPSDE(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, t_min={self.t_min:g}, "
                f"prediction={self.prediction!r})")

    def signature(self) -> tuple:
        return ("VPSDE", self.prediction, self.beta_min, self.beta_max, self.t_min)

    def network_signature(self) -> tuple:
        return ("VPSDE", self.prediction, self.beta_min, self.beta_max)  # t_min: where sampling stops

    def _integral(self, t: Tensor) -> Tensor:
        """int_0^t beta(s) ds = t^2 (beta_max - beta_min) / 2 + t beta_min."""
        return 0.5 * t * t * (self.beta_max - self.beta_min) + t * self.beta_min

    def sigma_of(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.expm1(self._integral(t)).sqrt()

    def t_of(self, sigma: Tensor) -> Tensor:
        """The root t >= 0 of t^2 (beta_max - beta_min) / 2 + t beta_min = log(1 + sigma^2)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        target = torch.log1p(sigma * sigma)
        d = self.beta_max - self.beta_min
        if d == 0:
            return target / self.beta_min
        # 2 L / (b + sqrt(b^2 + 2 d L)) is the root without the cancellation of (-b + sqrt(...)) / d
        return 2 * target / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * target))

    def scale(self, sigma):
        return vp_scale(sigma)

    def training_times(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """Uniform on [t_min, 1]."""
        return _uniform_times(self.t_min, 1.0, n, generator, device)


class VESDE(Process):
    """The variance-exploding SDE, sigma(t) = sigma_min (sigma_max / sigma_min)^t on [0, 1]
    (Song et al. 2021, eq. 9; NCSN, Song & Ermon 2019).

    sigma_max should be about the largest distance between two training points (Song & Ermon
    2020, technique 1): 50 by default; sigma_min = 0.01. The state x_t = x0 + sigma eps is the
    samplers' own, with no scaling (the network sees inputs of spread up to sigma_max).
    """

    timestep_scale = 999.0
    default_spacing = "uniform"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, prediction: str = "eps",
                 clip_x0: Optional[float] = None) -> None:
        lo = check_positive("sigma_min", sigma_min, " (0.01 in Song et al. 2021)")
        hi = check_positive("sigma_max", sigma_max, " (about the largest distance between training points)")
        if not lo < hi:
            raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_lo, self.sigma_hi = lo, hi
        self.t_min, self.t_max = 0.0, 1.0
        self.prediction = _check_prediction(self, prediction)
        self.clip_x0 = check_clip_x0(clip_x0)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_lo:g}, sigma_max={self.sigma_hi:g}, prediction={self.prediction!r})"

    def signature(self) -> tuple:
        return ("VESDE", self.prediction, self.sigma_lo, self.sigma_hi)

    def network_signature(self) -> tuple:
        return self.signature()  # sigma_min and sigma_max map noise levels to t

    def sigma_of(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.sigma_lo * torch.exp(t * math.log(self.sigma_hi / self.sigma_lo))

    def t_of(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return torch.log(sigma.clamp(min=1e-300) / self.sigma_lo) / math.log(self.sigma_hi / self.sigma_lo)

    def scale(self, sigma):
        return ve_scale(sigma)

    def training_times(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """Uniform on [0, 1]."""
        return _uniform_times(0.0, 1.0, n, generator, device)
