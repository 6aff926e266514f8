"""Mask-conditioned networks: a diffusion model of the unknown part of x given the known part.

Stable Diffusion's inpainting design (Rombach et al. 2022, sec. 4.5: the U-Net's first layer
takes the masked image and the mask as extra channels), which for clips is the conditioning of
MCVD (Voleti et al. 2022: the given frames as the network's input, one network for prediction,
interpolation and generation by masking) and of Ho et al.'s (2022) models trained on the
conditional task: the known data y and the mask m are concatenated to x_t on the channel axis,

    model(x_t, t, cond, known=y, mask=m) = net([x_t, (1 - m) * y, m], t, cond),   in = 3C, out = C

with m = 1 where the model generates and 0 where y is given (the convention of
:func:`difflab.editing.inpaint` and :mod:`difflab.editing.masks`). The known channels carry the
clean given data, not its noised copy, so the network reads the given frames exactly at every
noise level: that is what the replacement method cannot give a network trained without them
(at high noise its noised copy carries almost nothing, docs/video.md). m = 1 everywhere (nothing
given) is unconditional generation, so one network does every task.

The channel axis is dim 1 for images [B, C, H, W] and dim 2 for clips [B, T, C, H, W] (the
layout of :class:`~difflab.models.video.VideoUNet`): the frames keep their own known data and mask.

Training: :class:`difflab.training.loss.MaskedLoss` (``loss: masked``) draws a mask per clip from
a mix of the tasks. Sampling: :func:`difflab.editing.inpaint` binds (y, m) to the model
(:class:`WithKnown`) and keeps replacing the known part as for any model.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..validation import is_int, unwrapped_instance
from .bound import BoundInputs
from .registry import build

__all__ = ["MaskConditioned", "WithKnown", "masked_model", "NEEDS_KNOWN"]

NEEDS_KNOWN = ("this is a mask-conditioned model: it needs the known data and the mask to condition on "
               "(known=y, mask=m; m = 1 where to generate, 0 where y is given). Sample it with "
               "`difflab inpaint --ckpt RUN --input CLIP.gif --mask ...` / dl.editing.inpaint(model, proc, y, m, ...), "
               "which binds them; `difflab sample` / run.sample bind nothing given (an all-ones mask), as does "
               "WithKnown(model, zeros, ones) for dl.sample")


def _channel_axis(ndim: int) -> int:
    """1 for images [B, C, H, W], 2 for clips [B, T, C, H, W]."""
    return ndim - 3


class MaskConditioned(nn.Module):
    """A network of the model convention conditioned on known data and a mask (see module doc).

    Args:
        base: the registered network to build (``video_unet_tiny``, ``video_unet``; an image network
            such as ``unet_tiny`` builds and samples, but ``loss: masked`` trains clips only); it gets
            ``in_channels = 3 * data_channels`` and ``out_channels = data_channels``.
        data_channels: C, the channels of the data (of each frame of a clip).
        **kwargs: the base network's other arguments (``num_classes``, ``channels``, ...).

    ``forward(x_t, t, cond=None, known=None, mask=None)``: ``known`` y of x_t's shape, ``mask`` m
    broadcastable to it (e.g. [B, T, 1, 1, 1] for whole frames, [1, 1, 1, H, W] for a box in every
    frame), values in [0, 1]. A batch of k * B states (classifier-free guidance stacks [cond;
    uncond]) reuses the B known clips and masks in order. A call without them is an error: the bare
    model has nothing to condition on (:func:`difflab.editing.inpaint` binds them; an all-ones
    mask samples unconditionally).
    """

    def __init__(self, base: str = "video_unet_tiny", data_channels: int = 1, **kwargs) -> None:
        super().__init__()
        if base == "masked":
            raise ValueError("base must be an ordinary network (e.g. video_unet_tiny), not 'masked' itself")
        if not is_int(data_channels) or data_channels < 1:
            raise ValueError(f"data_channels must be a positive integer (1 for grey digits), got {data_channels!r}")
        for k in ("in_channels", "out_channels"):
            if k in kwargs:
                raise ValueError(f"{k} is set by the mask-conditioned wrapper (3 * data_channels in: x_t, the known "
                                 "data and the mask; data_channels out); give data_channels instead")
        self.net = build(base, in_channels=3 * int(data_channels), out_channels=int(data_channels), **kwargs)
        self.base, self.data_channels = base, int(data_channels)
        self.num_classes = getattr(self.net, "num_classes", None)

    def extra_repr(self) -> str:
        return f"base={self.base!r}, data_channels={self.data_channels}"

    def inputs(self, x_t: Tensor, known: Optional[Tensor], mask: Optional[Tensor]) -> Tensor:
        """The network's input [x_t, (1 - m) * y, m], concatenated on the channel axis."""
        if not isinstance(x_t, Tensor) or x_t.ndim not in (4, 5) or x_t.shape[_channel_axis(x_t.ndim)] != \
                self.data_channels:
            got = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"this mask-conditioned model takes x_t of shape [B, T, {self.data_channels}, H, W] "
                             f"(clips) or [B, {self.data_channels}, H, W] (images), got {got}")
        if known is None or mask is None:
            raise ValueError(NEEDS_KNOWN + f" (got known={'None' if known is None else 'a tensor'}, "
                             f"mask={'None' if mask is None else 'a tensor'})")
        B, shape = x_t.shape[0], tuple(x_t.shape[1:])
        if not isinstance(known, Tensor) or not known.is_floating_point() or tuple(known.shape[1:]) != shape \
                or known.shape[0] < 1 or B % known.shape[0]:
            got = (f"{known.dtype} of shape {tuple(known.shape)}" if isinstance(known, Tensor)
                   else type(known).__name__)
            raise ValueError(f"known (the given data y) must be a float tensor of x_t's shape [B, "
                             f"{', '.join(map(str, shape))}] (B = {B}, or a divisor of it under guidance), got {got}")
        Bk = known.shape[0]
        if not isinstance(mask, Tensor) or mask.ndim != x_t.ndim or \
                any(m not in (1, n) for m, n in zip(mask.shape, (Bk, *shape))):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a tensor of known's shape {(Bk, *shape)} or broadcastable to it with "
                             f"the same number of dimensions (e.g. [{Bk}, T, 1, 1, 1]: whole frames of a clip), "
                             f"1 where to generate and 0 where known is given; got {got}")
        mask = mask.to(device=x_t.device, dtype=x_t.dtype).expand(Bk, *shape)
        known = known.to(device=x_t.device, dtype=x_t.dtype)
        if B != Bk:  # guidance stacks [cond; uncond] states: reuse the known data and masks in order
            known, mask = known.repeat(B // Bk, *([1] * len(shape))), mask.repeat(B // Bk, *([1] * len(shape)))
        return torch.cat([x_t, (1 - mask) * known, mask], dim=_channel_axis(x_t.ndim))

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None, known: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        h = self.inputs(x_t, known, mask)
        return self.net(h, t) if cond is None else self.net(h, t, cond)


def masked_model(model) -> Optional[MaskConditioned]:
    """The :class:`MaskConditioned` inside ``model`` (unwrapping the wrappers that keep the model as
    ``.module`` -- DDP, the speed layer's Accelerated -- or ``._orig_mod`` -- torch.compile; not
    :class:`WithKnown`, whose data are bound), else None."""
    return unwrapped_instance(model, MaskConditioned)


class WithKnown(BoundInputs):
    """``model`` with its known data and mask bound: ``WithKnown(m, y, mask)(x_t, t, cond)``, the
    model convention the samplers and losses call."""

    bound = "this known data and mask"

    def __init__(self, model: nn.Module, known: Tensor, mask: Tensor) -> None:
        super().__init__(model)
        self.known, self.mask = known, mask

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.model(x_t, t, cond, known=self.known, mask=self.mask)

