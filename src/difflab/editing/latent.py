"""Editing with a latent diffusion model: images in, images out, the edit in the autoencoder's
latent space (``autoencoder=`` of :func:`~difflab.editing.inpaint` and :func:`~difflab.editing.img2img`).

The image is encoded to latents s (mean of q(z | x) - shift) -- the posterior's mean, not a draw:
an edit should start from the image as faithfully as the autoencoder can give it, and strength 0
then returns exactly the decode of the encode --, the edit runs on the latents as it runs on
pixels, and the result is decoded (clamped to [-1, 1]).

Inpainting's mask is given in pixels (1 = fill, 0 = keep) and goes to the latent grid by the
rule "a latent is kept only if every pixel of its f x f cell (in every channel) is kept": the
latent mask is the max-pool of the fill mask over each cell,

    m_latent[b, 0, i, j] = max over c, f i <= y < f (i + 1), f j <= x < f (j + 1) of m[b, c, y, x],

so no pixel to be filled is pinned to the input's content by a kept latent (an area average
would keep a latent half of whose pixels are to be filled, and leave them as they were). A cell
that is partly kept is regenerated whole; with ``paste_final`` (the default) the kept pixels are
then pasted back from the input in pixel space, so they equal the input exactly, as in pixel
space; the decoded region around the mask blends into them.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor

from ..models.autoencoder import AutoencoderKL
from ..training.latent import check_autoencoder, check_latent_channels, decode_latents, encode_images

__all__ = ["latent_mask", "to_latents", "from_latents"]


def _check(autoencoder, model: Optional[Callable] = None) -> AutoencoderKL:
    if not isinstance(autoencoder, AutoencoderKL):
        raise TypeError(f"autoencoder must be a difflab AutoencoderKL (a latent run's: dl.load(RUN).autoencoder) "
                        f"or None (pixel space), got {type(autoencoder).__name__}")
    check_autoencoder(autoencoder, "autoencoder= (a latent run's: dl.load(RUN).autoencoder)")  # its scale measured
    if model is not None:
        check_latent_channels(model, autoencoder, "given", "the model")
    return autoencoder


def latent_mask(mask: Tensor, autoencoder: AutoencoderKL) -> Tensor:
    """The pixel fill mask (1 = fill) on the latent grid [B, 1, H/f, W/f]: the max over each
    f x f cell and the channels (a latent is kept only if all its pixels are kept). The mask is
    [B, C, H, W] or any shape that broadcasts to it from the right, as inpainting takes it
    ([H, W], [1, H, W], [B, 1, H, W]); the missing leading axes count 1 (B = 1 for [H, W])."""
    f = _check(autoencoder).downsample_factor
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch tensor (1 = fill, 0 = keep), got {type(mask).__name__}")
    if not 2 <= mask.ndim <= 4:
        raise ValueError(f"the mask must be [H, W], [1, H, W], [B, 1, H, W] or [B, C, H, W], got shape "
                         f"{tuple(mask.shape)}")
    mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if mask.shape[-2] % f or mask.shape[-1] % f:
        raise ValueError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]}, and the autoencoder's latent grid has a cell "
                         f"of f = {f} pixels a side: give images and masks whose size f divides")
    return F.max_pool2d(mask.amax(dim=1, keepdim=True), f)


def to_latents(autoencoder, image: Tensor, model: Optional[Callable] = None) -> Tensor:
    """The latents of ``image`` [B, C, H, W] in [-1, 1] (the posterior's mean, scaled), checked
    against the autoencoder and, given ``model``, the model's input channels."""
    autoencoder = _check(autoencoder, model)
    if image.ndim != 4:
        raise ValueError(f"a latent model edits images [B, C, H, W] through its autoencoder, got shape "
                         f"{tuple(image.shape)}")
    return encode_images(autoencoder, image).to(image.device, image.dtype)


def from_latents(autoencoder: Optional[AutoencoderKL], x: Tensor, image: Optional[Tensor] = None,
                 mask: Optional[Tensor] = None) -> Tensor:
    """``x`` itself without an autoencoder; else its decoding, and with ``image`` and its pixel
    ``mask`` the kept pixels pasted back: m decode(x) + (1 - m) image."""
    if autoencoder is None:
        return x
    decoded = decode_latents(autoencoder, x)
    if mask is None:
        return decoded
    mask = mask.to(decoded.device, decoded.dtype)
    return mask * decoded + (1 - mask) * image.to(decoded.device, decoded.dtype)
