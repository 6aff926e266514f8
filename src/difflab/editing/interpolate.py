"""Inversion and interpolation: DDIM inversion of images to x_T, and spherical interpolation.

DDIM inversion (Song et al. 2021, sec. 4.3; :func:`difflab.invert`) runs the deterministic
eta = 0 update up the noise levels, mapping an image to the x_T from which DDIM sampling
returns it; :func:`reconstruct` is the round trip.

Gaussian noise in D dimensions concentrates on the sphere of radius sqrt(D), so straight
lines between two noises pass through atypically short vectors (the midpoint has norm
about sqrt(D / 2)); interpolation follows the great circle instead (Shoemake 1985, used for
diffusion latents since Song et al. 2021, fig. 6):

    slerp(a, b; u) = sin((1 - u) theta) / sin(theta) a + sin(u theta) / sin(theta) b,
    cos(theta) = <a, b> / (|a| |b|),

which keeps the norm when |a| = |b|. :func:`interpolate` decodes slerp(z_a, z_b; u) for
u = 0 .. 1 with DDIM, from two noises or from two inverted images.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..processes import Process
from ..samplers import invert, sample
from ..samplers.timesteps import default_spacing
from ..validation import check_labels, is_int
from ._common import check_image, check_steps, model_device, to_model
from .latent import from_latents, to_latents

__all__ = ["slerp", "interpolate", "reconstruct"]


def slerp(a: Tensor, b: Tensor, u) -> Tensor:
    """Spherical interpolation (Shoemake 1985) between ``a`` and ``b``, each taken whole as one
    vector (as DDIM interpolates latents): sin((1-u)θ)/sin θ · a + sin(uθ)/sin θ · b, θ the angle
    between them. ``u``: a float (-> a's shape) or a 1-D tensor of n weights (-> [n, *a.shape]).
    For a batch of pairs, call it per pair.

    Nearly parallel a and b (θ < 1e-4) fall back to linear interpolation; nearly opposite ones
    (π - θ < 1e-4) are refused: no single great circle joins them.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape:
        raise ValueError(f"slerp needs two tensors of the same shape, got "
                         f"{tuple(getattr(a, 'shape', ()))} and {tuple(getattr(b, 'shape', ()))}")
    if not a.is_floating_point() or not b.is_floating_point():
        raise TypeError(f"slerp needs float tensors, got {a.dtype} and {b.dtype}")
    scalar = not isinstance(u, Tensor) or u.ndim == 0
    u = torch.as_tensor(u, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(u).all():
        raise ValueError("the interpolation weights u must be finite")
    a64, b64 = a.to(torch.float64).reshape(1, -1), b.to(torch.float64).reshape(1, -1)
    na, nb = a64.norm(dim=1), b64.norm(dim=1)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("slerp is undefined for a zero vector (it has no direction)")
    cos = ((a64 * b64).sum(1) / (na * nb)).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    if math.pi - float(theta) < 1e-4:
        raise ValueError("slerp is undefined for opposite vectors a and -a (every great circle joins them); "
                         "perturb one of them or interpolate linearly")
    uu = u[:, None]
    if float(theta) < 1e-4:
        out = (1 - uu) * a64 + uu * b64
    else:
        s = torch.sin(theta)
        out = torch.sin((1 - uu) * theta) / s * a64 + torch.sin(uu * theta) / s * b64
    out = out.to(a.dtype).reshape(len(u), *a.shape)
    return out[0] if scalar else out


@torch.no_grad()
def reconstruct(
    model: Callable,
    proc: Process,
    image: Tensor,
    steps: int = 50,
    *,
    cond: Optional[Tensor] = None,
    spacing: Optional[str] = None,
    return_latent: bool = False,
    autoencoder: Optional[nn.Module] = None,
):
    """DDIM inversion of ``image`` to x_T and DDIM sampling back: the round trip x0 -> x_T -> x0'.

    Returns x0' (and x_T with ``return_latent=True``); the error |x0' - x0| measures how
    well the model's probability-flow ODE is discretised by ``steps`` steps (DDIM is Euler's
    method for it in the VE state, first order: the error falls like 1 / steps). ``spacing``:
    "trailing" on the DDPM chain, the process's own spacing otherwise (e.g. "uniform" in a flow's
    t, "karras" for EDM). Images [B, C, H, W] must be scaled to [-1, 1]; they run in the model's
    parameter dtype. ``autoencoder``: a latent model's: the round trip runs on the image's latents
    (the posterior's mean) and x0' is their decoding (:mod:`.latent`); x_T has the latents' shape.
    """
    image = check_image(image, "image")
    if autoencoder is not None:  # latent diffusion: invert the image's latents (editing/latent.py)
        image = to_latents(autoencoder, image, model)
    steps = check_steps(steps, proc)
    spacing = spacing or default_spacing(proc, "trailing")
    device = model_device(model, image)
    cond = check_labels(model, cond, image.shape[0], device)
    image = to_model(image, model, device)
    x_T = invert(model, proc, image, steps, cond=cond, spacing=spacing)
    x0 = from_latents(autoencoder, sample(model, proc, image.shape, "ddim", steps, cond=cond, noise=x_T,
                                          spacing=spacing))
    return (x0, x_T) if return_latent else x0


@torch.no_grad()
def interpolate(
    model: Callable,
    proc: Process,
    a: Tensor,
    b: Tensor,
    frames: int = 8,
    steps: int = 50,
    *,
    latents: bool = False,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    spacing: Optional[str] = None,
    autoencoder: Optional[nn.Module] = None,
) -> Tensor:
    """A strip of ``frames`` images [frames, ...] morphing from ``a`` to ``b``.

    ``a``, ``b``: two single images without a batch dimension ([C, H, W], e.g. ``x[0]``), to
    invert with DDIM, or, with ``latents=True``, two noises x_T of that shape (``torch.randn``).
    Each frame is DDIM-decoded (eta = 0, ``steps`` steps) from slerp(x_T^a, x_T^b; u),
    u = 0, 1/(frames-1), ..., 1; ``cond`` (one label for all frames) and ``guidance`` apply to
    the decoding (inversion uses cond only). Latents are standard normal draws, whatever the
    process (x = z sqrt(1 + sigma_0^2) at the top level, as in :func:`difflab.sample`); the noise
    levels are those of :func:`reconstruct`. Images must be scaled to [-1, 1] (latents are not
    range checked); they run in the model's parameter dtype. ``autoencoder``: a latent model's: images
    are encoded (the posterior's mean) before the inversion, latents have the latents' shape, and the
    frames are decoded (:mod:`.latent`).
    """
    if not is_int(frames) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2 (the strip includes both ends), got {frames!r}")
    steps = check_steps(steps, proc)
    spacing = spacing or default_spacing(proc, "trailing")
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor (one image without a batch dimension), got {type(x).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (one image each, no batch dimension), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    frames = int(frames)
    a, b = check_image(a[None], "a", check_range=not latents), check_image(b[None], "b", check_range=not latents)
    if autoencoder is not None and not latents:  # latent diffusion: interpolate the images' latents
        a, b = to_latents(autoencoder, a, model), to_latents(autoencoder, b, model)
    device = model_device(model, a)
    a, b = to_model(a, model, device), to_model(b, model, device)
    if cond is not None:
        if isinstance(cond, Tensor) and cond.numel() == 1:
            cond = cond.reshape(1)
        cond = check_labels(model, cond, 1, device)  # one label (an int or a 1-element tensor)
    if not latents:
        a = invert(model, proc, a, steps, cond=cond, spacing=spacing)
        b = invert(model, proc, b, steps, cond=cond, spacing=spacing)
    u = torch.linspace(0, 1, frames, dtype=torch.float64)
    z = slerp(a[0], b[0], u)  # [frames, ...]
    frame_cond = cond.expand(frames, *cond.shape[1:]) if cond is not None else None  # (a label, or token ids [1, L])
    return from_latents(autoencoder, sample(model, proc, z.shape, "ddim", steps, cond=frame_cond, guidance=guidance,
                                            noise=z, spacing=spacing, device=device))
