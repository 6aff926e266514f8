"""Which noise levels a sampler visits: timestep spacings and Karras sigmas.

A sampler runs over a decreasing tensor of VE noise levels
``sigmas[0] > sigmas[1] > ... > sigmas[steps] = 0``; sigma = sqrt((1 - abar_t) / abar_t).
The discrete DDPM grid is one case: ``sigmas[i] = proc.sigmas[timesteps[i]]``.

Spacings (the names and meanings of diffusers' ``timestep_spacing``; Lin et al. 2023, table 2):

- ``"leading"``:  t = k * (T // steps) for k = steps-1 .. 0           (DDIM paper; ends at t = 0)
- ``"trailing"``: t = round(T - k * T / steps) - 1 for k = 0 .. steps-1 (starts at t = T-1)
- ``"linspace"``: t = round(linspace(0, T - 1, steps))                  (both ends)
- ``"karras"``:   sigmas of Karras et al. 2022, eq. 5, rho = 7, between the schedule's
  sigma_min and sigma_max (continuous levels: networks get a fractional t).
- ``"logsnr"``:   uniform in log-SNR = -2 log sigma between sigma_max and sigma_min (Lu et al.
  2022, DPM-Solver, sec. 3.3; diffusers' ``use_lu_lambdas``), continuous levels like "karras".
- ``"uniform"``:  equal steps in the process's own time, t_i = t_max - i (t_max - t_min) / steps
  (Song et al. 2021's grid for the SDEs; a flow's Euler steps in t), then the final sigma = 0.

The three grid spacings need a discrete process (a GaussianDiffusion); the others work for every process.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..validation import is_int, is_real, positive_int

__all__ = [
    "SPACINGS",
    "timesteps",
    "karras_sigmas",
    "logsnr_sigmas",
    "sampling_sigmas",
    "sigmas_from_timesteps",
    "default_spacing",
]

SPACINGS = ("leading", "trailing", "linspace", "karras", "logsnr", "uniform")
DISCRETE_SPACINGS = ("leading", "trailing", "linspace")


def default_spacing(proc, preferred: str) -> str:
    """The spacing a sampler uses unless told: on the DDPM chain the sampler's own (``preferred``:
    "trailing" for DDPM/DDIM, "logsnr" for the higher-order solvers); on a continuous process the
    process's, for every sampler ("uniform" for the SDEs and flows, as in Song et al. 2021 and
    rectified flow; "karras" for EDM). A flow on log-SNR levels would spend its second step
    between sigma_min and 0, so 2 steps would sample like 1."""
    return preferred if proc.discrete else proc.default_spacing


def _check_steps(steps: int, T: int) -> None:
    if not is_int(steps):
        raise TypeError(f"steps must be an integer, got {type(steps).__name__}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in 1 .. T = {T} for a spacing on the training grid, got {steps}")


def timesteps(T: int, steps: int, spacing: str = "trailing", steps_offset: int = 0) -> Tensor:
    """``steps`` decreasing integer timesteps in 0 .. T-1 (a torch.long tensor)."""
    for name, value in (("T", T), ("steps_offset", steps_offset)):
        if not is_int(value):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    _check_steps(steps, T)
    if spacing == "leading":
        ts = np.arange(steps)[::-1] * (T // steps) + steps_offset
    elif spacing == "trailing":
        ts = np.round(T - np.arange(steps) * (T / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, steps))[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(DISCRETE_SPACINGS)}")
    ts = torch.from_numpy(ts.copy()).long()  # copy: numpy keeps a reversed 1-element view's negative stride
    if (ts < 0).any() or (ts >= T).any():
        raise ValueError(f"steps_offset={steps_offset} puts timesteps outside 0 .. {T - 1}")
    return ts


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho  (Karras et al. 2022, eq. 5)."""
    steps = positive_int("steps", steps)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if not is_real(rho) or not rho > 0:
        raise ValueError(f"rho must be a number > 0, got {rho!r}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def logsnr_sigmas(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """sigma_i = exp(log sigma_max + i/(n-1) (log sigma_min - log sigma_max)): equal steps in log-SNR.

    The step size h = log(sigma_i / sigma_{i+1}) of the exponential integrators (DPM-Solver,
    Lu et al. 2022, sec. 3.3) is then constant; it is Karras' eq. 5 in the limit rho -> inf.
    """
    steps = positive_int("steps", steps)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    return (math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))).exp()


def sigmas_from_timesteps(proc, ts: Tensor) -> Tensor:
    """The noise levels of decreasing times ``ts`` of the process (a DDPM chain's integer or
    fractional timesteps; a continuous process's t), with the final 0 appended."""
    ts = torch.as_tensor(ts)
    if ts.ndim != 1 or ts.numel() < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}")
    if ts.dtype == torch.bool or ts.is_complex():
        raise ValueError(f"timesteps must be integers or floats in 0 .. T-1, got dtype {ts.dtype}")
    if not torch.isfinite(ts).all() or (ts < proc.t_min).any() or (ts > proc.t_max).any():
        where = (f"0 .. T-1 = {proc.T - 1} (0-based, as diffusers counts them)" if proc.discrete else
                 f"[t_min, t_max] = [{proc.t_min:g}, {proc.t_max:g}], {type(proc).__name__}'s own time")
        raise ValueError(f"timesteps must lie in {where}, got values in [{ts.min().item()}, {ts.max().item()}]")
    sig = proc.sigma_of(ts.cpu())
    if (sig[1:] >= sig[:-1]).any():
        raise ValueError("timesteps must be strictly decreasing")
    return torch.cat([sig, sig.new_zeros(1)])


def sampling_sigmas(proc, steps: int, spacing: str = "trailing", rho: float = 7.0) -> Tensor:
    """``steps + 1`` decreasing noise levels ending in 0 for the process ``proc``."""
    if spacing == "karras":
        sig = karras_sigmas(steps, proc.sigma_min, proc.sigma_max, rho)
        return torch.cat([sig, sig.new_zeros(1)])
    if spacing == "logsnr":
        sig = logsnr_sigmas(steps, proc.sigma_min, proc.sigma_max)
        return torch.cat([sig, sig.new_zeros(1)])
    if spacing == "uniform":
        steps = positive_int("steps", steps)
        t = torch.linspace(proc.t_max, proc.t_min, steps + 1, dtype=torch.float64)[:-1]
        return torch.cat([proc.sigma_of(t), torch.zeros(1, dtype=torch.float64)])
    if spacing not in DISCRETE_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not proc.discrete:
        raise ValueError(f"spacing {spacing!r} picks timesteps of a discrete grid, which {type(proc).__name__} "
                         "(a continuous-time process) has none of: use 'uniform', 'karras' or 'logsnr'")
    return sigmas_from_timesteps(proc, timesteps(proc.T, steps, spacing))
