"""Image-to-image translation by SDEdit (Meng et al. 2022): noise the input part way, then denoise.

With strength s in (0, 1], the process starts the fraction s of the way along its own noise-level
ramp, from sigma_min (s -> 0) to sigma_max (s = 1): at its time

    t_s = t_min + s (t_max - t_min)

on its sampling interval [t_min, t_max] -- the DDPM chain's t_s = s (T - 1) (0-based; a
fractional t interpolates log sigma, see ``GaussianDiffusion.sigma_of``), the SDEs' and flows'
t -- except for EDM, whose time is the noise level itself: there s follows EDM's rho = 7 ramp,
sigma_s = (sigma_min^(1/7) + s (sigma_max^(1/7) - sigma_min^(1/7)))^7 (Karras et al. 2022, eq. 5;
linear in sigma, s = 0.1 would already be sigma = 8 of 80). It starts from the
input y noised by the forward process (their eq. 2), in the samplers' VE state for every process:

    x_t = a(t_s) y + s(t_s) eps      <=>      x = y + sigma(t_s) eps

and runs a sampler over the part of the usual grid of ``steps`` levels below sigma(t_s)
(about s * steps steps on the DDPM chain's grid and the 'uniform' one). Small s keeps the
input's layout and details (the noise drowns only fine structure); s -> 0 returns the input;
s = 1 is plain sampling from x_T = eps, exactly ``dl.sample(..., noise=eps)`` (the input's
weight 1 / sqrt(1 + sigma_max^2) in the standardised x_T -- 0.006 for the linear schedule with
T = 1000, 0.001 for FlowMatching's t_max = 0.999 -- is dropped so that the two agree).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..processes import Process
from ..samplers import SAMPLERS, sample, sampler_sigmas, sampling_sigmas
from ..samplers.base import randn
from ..samplers.timesteps import default_spacing
from ..validation import NOISE_FIX, check_finite, check_labels, is_real
from ._common import check_image, check_sampler, check_steps, model_device, to_model
from .latent import from_latents, to_latents

__all__ = ["img2img", "sdedit_sigmas", "start_sigma", "check_strength"]


def check_strength(strength) -> float:
    if not is_real(strength) or not math.isfinite(strength):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(
            f"strength must lie in (0, 1] (the fraction of the diffusion to redo: 1 = plain sampling; "
            f"0 would return the input unchanged), got {strength}"
        )
    return float(strength)


def start_sigma(proc: Process, strength: float) -> Tensor:
    """The noise level SDEdit starts from, [1] float64: sigma(t_min + strength (t_max - t_min)); on a
    process sampled on rho-7 levels (EDM), the point ``strength`` of the way along that ramp."""
    if proc.default_spacing == "karras":
        lo, hi = proc.sigma_min ** (1 / 7), proc.sigma_max ** (1 / 7)
        return torch.tensor([(lo + strength * (hi - lo)) ** 7], dtype=torch.float64)
    t = torch.tensor(proc.t_min + strength * (proc.t_max - proc.t_min), dtype=torch.float64)
    return proc.sigma_of(t).reshape(1)


def sdedit_sigmas(proc: Process, strength: float, steps: int = 50, spacing: Optional[str] = None,
                  sampler: Optional[str] = None) -> Tensor:
    """The decreasing noise levels SDEdit runs over: :func:`start_sigma`, then the grid's levels
    below it, then 0.

    ``strength = 1`` gives the full grid of ``sampling_sigmas(proc, steps, spacing)``, or with
    ``sampler`` the levels that sampler visits (``samplers.sampler_sigmas``); ``spacing`` defaults
    to "trailing" on the DDPM chain and to the process's own spacing otherwise.
    """
    strength = check_strength(strength)
    if strength == 0.0:
        raise ValueError("strength 0 runs no step (the input is returned as it is)")
    spacing = spacing or default_spacing(proc, "trailing")
    full = sampling_sigmas(proc, steps, spacing) if sampler is None else sampler_sigmas(proc, sampler, steps, spacing)
    if strength == 1.0:
        return full
    start = start_sigma(proc, strength)
    return torch.cat([start, full[full < start]])


@torch.no_grad()
def img2img(
    model: Callable,
    proc: Process,
    image: Tensor,
    strength: float = 0.5,
    sampler: str = "ddim",
    steps: int = 50,
    *,
    eta: float = 0.0,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    spacing: Optional[str] = None,
    clip_x0: Optional[float] = ...,  # type: ignore[assignment]  # the process's data range
    callback: Optional[Callable[[dict], None]] = None,
    progress: bool = False,
    autoencoder: Optional[nn.Module] = None,
    **options,
) -> Tensor:
    """SDEdit: ``image`` [B, ...] in [-1, 1] noised to ``strength`` and denoised by ``sampler``.

    ``steps`` is the size of the whole grid (strength 1 runs all of it). ``noise`` is eps,
    the image's shape (drawn from ``generator`` when None). Every sampler and its options
    work, ``cond``/``guidance`` steer the result (e.g. towards another class). ``clip_x0=c``
    clamps the x0 estimates to [-c, c] (``clip_x0=1``: the image range), as in
    :func:`difflab.sample`; by default to the process's data range (``proc.clip_x0``; a loaded
    run's process knows it), and ``clip_x0=None`` does not clip. Images [B, C, H, W] must be
    scaled to [-1, 1] (vectors [B, D] are in the model's own scale); they run in the model's
    parameter dtype.
    ``autoencoder``: a latent model's (``dl.load(RUN).autoencoder``): the image is encoded (the
    posterior's mean), SDEdit runs on its latents and the result is decoded (:mod:`.latent`;
    strength 0 gives the decode of the encode); ``noise`` then has the latents' shape.
    """
    image = check_image(image, "image")
    strength = check_strength(strength)
    if autoencoder is not None:  # latent diffusion: the edit runs on the image's latents (editing/latent.py)
        image = to_latents(autoencoder, image, model)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}")
    spec = check_sampler(sampler, {k: v for k, v in options.items()})
    steps = check_steps(steps, proc)
    device = model_device(model, image)
    cond = check_labels(model, cond, image.shape[0], device)
    x0 = to_model(image, model, device)
    if noise is None:
        noise = randn(image.shape, generator, device, x0.dtype)
    elif not isinstance(noise, Tensor) or noise.shape != image.shape:
        raise ValueError(f"noise must have the image's shape {tuple(image.shape)}, got "
                         f"{tuple(getattr(noise, 'shape', ())) or type(noise).__name__}")
    elif not noise.is_floating_point():
        raise TypeError(f"noise must be a float tensor (standard normal draws), got {noise.dtype}")
    else:
        check_finite(noise, "noise", NOISE_FIX)
    if strength == 0.0:
        return from_latents(autoencoder, image.clone())
    noise = noise.to(device, x0.dtype)
    sigmas = sdedit_sigmas(proc, strength, steps, spacing or default_spacing(proc, spec.default_spacing), sampler)
    if strength == 1.0:
        x_start = noise  # the prior N(0, I): plain sampling
    else:
        s = float(sigmas[0])
        x_start = (x0 + s * noise) / math.sqrt(1.0 + s * s)  # q(x | y), standardised as dl.sample's noise
    return from_latents(autoencoder, sample(
        model, proc, image.shape, sampler, eta=eta, cond=cond, guidance=guidance, noise=x_start, generator=generator,
        device=device, progress=progress, sigmas=sigmas, callback=callback, clip_x0=clip_x0, **options))
