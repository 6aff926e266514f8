"""The reverse SDE (Euler-Maruyama) and the predictor-corrector sampler of Song et al. 2021.

Every process is the VE SDE x = x0 + sigma eps after a change of time and scale
(:mod:`difflab.processes.base`), so the samplers run there, in the noise level itself:

    forward:   dx = sqrt(d sigma^2 / dt) dw
    reverse:   dx = -(d sigma^2 / dt) score(x, sigma) dt + sqrt(d sigma^2 / dt) dw_bar      (their eq. 6)
    score(x, sigma) = grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2                     (Tweedie)

Euler-Maruyama from sigma_i down to sigma_{i+1}, with h_i = sigma_i^2 - sigma_{i+1}^2 (the
"reverse diffusion" predictor of their VE SDE, their Appendix E and Algorithm 2):

    x_{i+1} = x_i + h_i score(x_i, sigma_i) + sqrt(h_i) z,   z ~ N(0, I)

For the VE SDE this is their VE predictor step for step. For VP processes it is the same
reverse SDE in another discretisation: the step is taken in the VE coordinates x = x_t / a, not
in x_t itself. The last step, to sigma = 0, returns the denoised mean D(x, sigma) with no noise:
their code's final "denoise" step (the noise-free mean of the last predictor update, which is
x + sigma^2 score = D) and the last step of :func:`~difflab.samplers.ddpm.sample_ddpm`.

The corrector (their Algorithm 4, "Langevin", the annealed Langevin dynamics of NCSN with the
step size set by a signal-to-noise ratio r) runs at the new level sigma_{i+1} after each
predictor step, in the order of their Algorithms 1-2 (their code runs the corrector at t_i before
the predictor leaves it: the same alternation, shifted by one level at the ends):

    g = score(x, sigma),  z ~ N(0, I),   eps = 2 (r ||z|| / ||g||)^2,
    x <- x + eps g + sqrt(2 eps) z

with ||.|| the per-sample norms averaged over the batch, as their Appendix G says for large
batches and their code does (``LangevinCorrector.update_fn`` in sampling.py of
yang-song/score_sde: ``norm(grad.reshape(B, -1), axis=-1).mean()``), so one step size serves the
whole batch. Their code multiplies eps by alpha_i = 1 - beta_i for the VP
SDE; here every process uses the VE rule (alpha = 1): the step is taken in VE coordinates,
where the ratio rule is invariant under the scaling x -> x / a.

Noise levels: on a continuous process the process's own (:func:`~.timesteps.default_spacing`:
equal steps in t for the SDEs, Song et al.'s grid, and for flows; rho = 7 for EDM); on the DDPM
chain the "logsnr" spacing, a constant ratio sigma_{i+1} / sigma_i, rather than the chain's own
grid. Euler-Maruyama adds sigma_i^2 - sigma_{i+1}^2 of
noise where the exact reverse step adds sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2, so
its error is small only where that ratio is near 1: a step with sigma_{i+1} << sigma_i leaves an
excess variance of about sigma_i^2, which the later steps shrink by no more than the factor
(V / (V + sigma_{i+1}^2))^2 for data of variance V. The DDPM grid
of the cosine schedule (T = 1000) starts with such a step, sigma 20291 -> 128, which costs a
64-D Gaussian mixture 9x (EM) and 280x (PC) the Frechet distance's noise floor at 200 network
evaluations, against 0.8x on the "logsnr" levels.

For Gaussian data the Langevin step's fixed point is the variance V (1 + r^2) at a level of
variance V (tests/samplers/test_sde.py): PC's limit is over-dispersed by sqrt(1 + r^2) in std,
1.3% at r = 0.16, however many steps it takes.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..validation import is_int, is_real
from .base import Callback, randn_like

__all__ = ["sample_euler_maruyama", "sample_pc", "langevin_step"]


def _reverse_sde_step(x: Tensor, denoised: Tensor, s: float, s_next: float,
                      generator: Optional[torch.Generator]) -> Tensor:
    """One Euler-Maruyama step of the reverse VE SDE from s to s_next (> 0)."""
    h = s * s - s_next * s_next
    score = (denoised - x) / (s * s)
    return x + h * score + math.sqrt(h) * randn_like(x, generator)


@torch.no_grad()
def sample_euler_maruyama(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Optional[torch.Generator] = None,
    callback: Callback = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE: x_{i+1} = x_i + h_i (D - x_i) / sigma_i^2 + sqrt(h_i) z,
    h_i = sigma_i^2 - sigma_{i+1}^2; the last step (to sigma = 0) returns D. One call per step."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        x = _reverse_sde_step(x, denoised, s, s_next, generator) if s_next > 0 else denoised
    return x


def langevin_step(denoiser, x: Tensor, sigma: float, snr: float, generator: Optional[torch.Generator]) -> Tensor:
    """One Langevin corrector step at noise level sigma: x + eps g + sqrt(2 eps) z with
    g = (D(x, sigma) - x) / sigma^2 and eps = 2 (snr mean_b ||z_b|| / mean_b ||g_b||)^2."""
    g = (denoiser(x, sigma) - x) / (sigma * sigma)
    z = randn_like(x, generator)
    g_norm = g.flatten(1).norm(dim=1).mean()
    z_norm = z.flatten(1).norm(dim=1).mean()
    eps = 2 * (snr * z_norm / g_norm) ** 2
    return x + eps * g + (2 * eps).sqrt() * z


def check_pc_options(snr: float, corrector_steps: int) -> None:
    """snr a finite number > 0, corrector_steps an integer >= 0."""
    if not is_real(snr):
        raise TypeError(f"snr must be a number (the corrector's signal-to-noise ratio, 0.16 in Song et al. 2021), "
                        f"got {type(snr).__name__} {snr!r}")
    if not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a finite number > 0 (0.16 in Song et al. 2021 for VE on CIFAR-10), got {snr}")
    if not is_int(corrector_steps):
        raise TypeError(f"corrector_steps must be an integer >= 0 (Langevin steps per noise level), "
                        f"got {type(corrector_steps).__name__} {corrector_steps!r}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0 (0 = Euler-Maruyama alone), got {corrector_steps}")


@torch.no_grad()
def sample_pc(
    denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    snr: float = 0.16,
    corrector_steps: int = 1,
    generator: Optional[torch.Generator] = None,
    callback: Callback = None,
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-3): each step one
    Euler-Maruyama step to sigma_{i+1}, then ``corrector_steps`` Langevin steps there with
    signal-to-noise ratio ``snr``; the last step (to sigma = 0) returns D, uncorrected.

    Calls: steps + (steps - 1) corrector_steps.
    """
    check_pc_options(snr, corrector_steps)
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if callback is not None:
            callback({"i": i, "sigma": s, "x": x, "denoised": denoised})
        if s_next == 0:
            return denoised
        x = _reverse_sde_step(x, denoised, s, s_next, generator)
        for _ in range(corrector_steps):
            x = langevin_step(denoiser, x, s_next, snr, generator)
    return x
