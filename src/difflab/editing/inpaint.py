"""Inpainting with an unconditional diffusion model: replacement and RePaint's resampling.

Given an image y and a mask m (1 = fill, 0 = keep, see :mod:`.masks`), sample x0 from the
model so that it agrees with y where m = 0. Both methods run a sampler down the noise levels
sigma_0 > ... > sigma_N = 0 in the VE state x = x0 + sigma eps and, after every step to
sigma_{i+1}, overwrite the kept pixels with the input noised to that level, a draw of
q(x_{i+1} | y) (Song et al. 2021 "score SDE", app. I.2; Lugmayr et al. 2022, eq. 8):

    x_{i+1} = m * step(x_i)  +  (1 - m) * (y + sigma_{i+1} z),   z ~ N(0, I)

At the last step sigma_N = 0, so this is the final paste: the kept pixels equal y exactly.

RePaint (Lugmayr et al. 2022, sec. 4.2 and app. B) also walks back up: after reaching a level
it re-noises the whole state by the forward process q(x_{i-1} | x_i), which in VE form adds
independent noise of variance sigma_{i-1}^2 - sigma_i^2,

    x_{i-1} = x_i + sqrt(sigma_{i-1}^2 - sigma_i^2) z,

and denoises again, so the generated region can harmonise with the kept one. Its jump
schedule goes ``jump_length`` (j) levels back up ``resample - 1`` (r - 1) times at every j-th
level; ``resample = 1`` is the plain replacement method. The network is evaluated
N + (r - 1) j floor((N - 1) / j) times (times the sampler's evaluations per step).

Both formulas hold for every process: the DDPM chain's forward step q(x_t' | x_t) =
N(sqrt(abar_t' / abar_t) x_t, (1 - abar_t' / abar_t) I) divided by sqrt(abar_t') is the VE step
above, and every process x_t = a x0 + s eps is, in VE form x = x_t / a, that same process over
its own noise levels.

``reconstruction_guidance`` w_r > 0 adds Ho et al.'s (2022) reconstruction guidance to the
denoiser the sampler steps with (:mod:`.reconstruction`): the unknown part's estimate of x0 is
moved along -(w_r / 2) grad_x ||(1 - m)(y - D(x, sigma))||^2, so the given part steers the
filled part through the network at every level, not only through its noised copy. The
replacement of the known part is unchanged.

A mask-conditioned model (:mod:`difflab.models.masked`, trained on the conditional task with the
given data and the mask as input channels) gets the image and the mask bound to it
(:class:`~difflab.models.masked.WithKnown`): the network reads the known part exactly at every
level, and the replacement runs as for any model.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..models.masked import WithKnown, masked_model
from ..processes import Process
from ..samplers import Denoiser, sampler_sigmas
from ..samplers.base import randn, randn_like
from ..validation import NOISE_FIX, check_finite, check_labels, positive_int
from ._common import check_image, check_sampler, check_steps, eval_mode, model_device, to_model
from .latent import from_latents, latent_mask, to_latents
from .masks import check_mask
from .reconstruction import ReconstructionGuided, check_reconstruction_weight

__all__ = ["inpaint", "repaint_schedule", "paste", "STEPWISE_SAMPLERS"]

# Samplers whose one step depends only on the current state, so the known region can be
# replaced between steps (a multistep solver's history would refer to states never visited).
STEPWISE_SAMPLERS = ("ddpm", "ddim", "euler", "heun")


def paste(x: Tensor, image: Tensor, mask: Tensor) -> Tensor:
    """m * x + (1 - m) * image: the generated pixels where m = 1, the input's elsewhere."""
    mask = check_mask(mask, check_image(image))
    return mask * x + (1 - mask) * image


def repaint_schedule(steps: int, jump_length: int = 10, resample: int = 10) -> list[int]:
    """The indices of the noise levels RePaint visits, from 0 (sigmas[0]) to ``steps`` (x0).

    Consecutive indices differ by +1 (a denoising step) or -1 (one forward-process step).
    Lugmayr et al. 2022, app. B: at every ``jump_length``-th of the RePaint times
    t = 0, j, 2j, ... < steps - j (t counts levels above x0, t = steps - 1 - index) it jumps
    back up j levels ``resample - 1`` times. ``resample = 1`` is the monotone walk 0, 1, ..., steps.
    """
    steps, j, r = (positive_int(n, v) for n, v in (("steps", steps), ("jump_length", jump_length),
                                                    ("resample", resample)))
    if r > 1 and j >= steps:
        raise ValueError(f"jump_length={j} must be smaller than steps={steps} for RePaint to resample "
                         "(or use resample=1 for the plain replacement method)")
    jumps = {t: r - 1 for t in range(0, steps - j, j)}
    t, times = steps, []
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(j):
                t += 1
                times.append(t)
    times.append(-1)
    return [steps - 1 - t for t in times]


@torch.no_grad()
def inpaint(
    model: Callable,
    proc: Process,
    image: Tensor,
    mask: Tensor,
    sampler: str = "ddpm",
    steps: int = 100,
    *,
    jump_length: int = 1,
    resample: int = 1,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    reconstruction_guidance: float = 0.0,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    spacing: Optional[str] = None,
    clip_x0: Optional[float] = ...,  # type: ignore[assignment]  # the process's data range
    paste_final: bool = True,
    callback: Optional[Callable[[dict], None]] = None,
    progress: bool = False,
    autoencoder: Optional[nn.Module] = None,
    **options,
) -> Tensor:
    """Fill ``image`` [B, ...] where ``mask`` is 1 with samples of ``model`` that agree with the rest.

    ``sampler``: one of :data:`STEPWISE_SAMPLERS` (DDPM ancestral, as in RePaint, or DDIM with
    ``eta``), ``steps`` noise levels with the sampler's default ``spacing`` (a continuous-time
    process, which has no grid, uses its own: ``samplers.timesteps.default_spacing``).
    ``resample`` r and ``jump_length`` j: RePaint's resampling (r = 1: the replacement method;
    the paper uses r = j = 10). ``noise``: the starting x_T (the image's shape, standard normal
    for every process); ``generator`` seeds every other draw. ``cond``/``guidance``: class
    labels and classifier-free guidance, and ``clip_x0=1`` clamps the model's x0 estimates to
    [-1, 1], as in :func:`difflab.sample` (default: the process's ``clip_x0``; None: no clipping).
    ``reconstruction_guidance``: the weight w_r >= 0 of reconstruction-guided sampling (Ho et al.
    2022, eq. 7; :mod:`.reconstruction`), 0 = the replacement method alone. Each network
    evaluation then has a backward pass through the network (2 to 3 times the time); it works
    with every sampler here, RePaint's resampling, guidance and in a latent model's latents.
    ``paste_final=False`` returns the last sampler output without the final paste (its kept
    region is the model's own estimate, close to the input).
    ``callback`` receives {"i", "sigma", "x" (the process's state x_t = a(sigma) x, as in
    :func:`difflab.sample`), "denoised"} per network step. ``steps``: 1 .. T on the DDPM chain,
    any number >= 1 for a continuous-time process.
    Images [B, C, H, W] must be scaled to [-1, 1] (vectors [B, D] are in the model's own scale);
    they run in the model's parameter dtype.
    ``autoencoder``: a latent model's (``dl.load(RUN).autoencoder``): ``image`` and ``mask`` are
    pixels, the image is encoded, the mask max-pooled to the latent grid (a latent is kept only if
    all its pixels are), the latents inpainted and decoded, and (``paste_final``) the kept pixels
    pasted back (:mod:`.latent`); ``noise`` then has the latents' shape.
    """
    image = check_image(image, "image")
    mask = check_mask(mask, image)
    reconstruction_guidance = check_reconstruction_weight(reconstruction_guidance)
    pixels, pixel_mask = image, mask
    if autoencoder is not None:  # latent diffusion: the edit runs on the image's latents (editing/latent.py)
        image, mask = to_latents(autoencoder, image, model), latent_mask(mask, autoencoder)
    spec = check_sampler(sampler, options, STEPWISE_SAMPLERS)
    per_run = sorted(set(options) - {"eta", "variance"})
    if per_run:  # EDM's churn is scheduled over the whole grid: it has no meaning for a single step
        raise ValueError(f"option {', '.join(per_run)} of sampler {sampler!r} does not apply to inpainting, "
                         "which runs the sampler one step at a time")
    steps = check_steps(steps, proc)
    path = repaint_schedule(steps, jump_length, resample)
    device = model_device(model, image)
    image = to_model(image, model, device)
    mask = mask.to(device, image.dtype)
    cond = check_labels(model, cond, image.shape[0], device)
    if masked_model(model) is not None:  # a network trained on the task reads y and m itself (models/masked.py)
        model = WithKnown(model, image, mask)
    clip_x0 = proc.clip_x0 if clip_x0 is ... else clip_x0
    if reconstruction_guidance > 0:  # the gradient is taken through the unclipped estimate (reconstruction.py)
        denoiser = ReconstructionGuided(Denoiser(model, proc, cond, guidance), image, mask, reconstruction_guidance,
                                        clip_x0=clip_x0)
    else:
        denoiser = Denoiser(model, proc, cond, guidance, clip_x0=clip_x0)
    sigmas = sampler_sigmas(proc, spec, steps, spacing)
    keep = 1 - mask

    s0 = float(sigmas[0])
    if noise is None:
        noise = randn(image.shape, generator, device, image.dtype)
    elif not isinstance(noise, Tensor) or noise.shape != image.shape:
        shape = "the latents' shape" if autoencoder is not None else "the image's shape"
        raise ValueError(f"noise must have {shape} {tuple(image.shape)}, got "
                         f"{tuple(getattr(noise, 'shape', ())) or type(noise).__name__}")
    elif not noise.is_floating_point():
        raise TypeError(f"noise must be a float tensor (standard normal draws), got {noise.dtype}")
    else:
        check_finite(noise, "noise", NOISE_FIX)
    x = noise.to(device, image.dtype) * math.sqrt(1.0 + s0 * s0)  # standard normal x_T -> VE, as dl.sample
    x = mask * x + keep * (image + s0 * randn_like(image, generator))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(path) - 1, desc=f"inpaint ({sampler})", leave=False)
    count = 0

    def report(step: dict) -> None:
        if callback is not None:
            a = float(proc.scale(float(step["sigma"])))  # the process's own state x_t = a x
            callback(dict(step, i=count, x=step["x"] * a))

    try:
        with eval_mode(model):
            for a, b in zip(path[:-1], path[1:]):
                if b == a + 1:  # denoise from sigma_a to sigma_b, then replace the kept region
                    x = spec.fn(denoiser, x, sigmas[a:b + 1], generator=generator, callback=report, **options)
                    s = float(sigmas[b])
                    if s > 0:
                        x = mask * x + keep * (image + s * randn_like(image, generator))
                    elif paste_final:
                        x = mask * x + keep * image
                else:  # one forward step up: q(x_b | x_a) adds variance sigma_b^2 - sigma_a^2
                    var = float(sigmas[b]) ** 2 - float(sigmas[a]) ** 2
                    x = x + math.sqrt(var) * randn_like(x, generator)
                count += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return from_latents(autoencoder, x, pixels, pixel_mask if paste_final else None)

