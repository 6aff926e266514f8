"""Super-resolution networks: a diffusion model of the high-resolution image given a low-resolution one.

SR3-style conditioning (Saharia et al. 2022, sec. 2; Ho et al. 2022 "cascaded", sec. 3): the
low-resolution image y (here 14x14) is upsampled to the target size and concatenated to x_t
as extra input channels of the U-Net, which predicts eps (or x0, v) for the high-resolution
channels only:

    model(x_t, t, cond, lowres=y) = UNet([x_t, up(y)], t, cond),   in = 2C channels, out = C

Training pairs come from the data, y = down(x0) (area averaging over ``scale`` x ``scale``
pixels): :class:`difflab.training.loss.SuperResLoss`. Sampling: :func:`difflab.editing.upscale`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import is_int, unwrapped_instance
from .bound import BoundInputs
from .registry import build

__all__ = ["LowResConditioned", "WithLowRes", "downsample", "upsample", "lowres_model", "UPSAMPLE_MODES",
           "NEEDS_LOWRES"]

UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")

NEEDS_LOWRES = ("this is a super-resolution model: it needs a low-resolution image to condition on (lowres=); "
                "sample it with `difflab upscale --ckpt RUN --input LOW.png` / dl.editing.upscale(model, proc, "
                "lowres), and train it with `loss: superres` in the config (configs/mnist_superres.yaml)")


def downsample(x: Tensor, scale: int) -> Tensor:
    """Area downsampling by an integer factor: the mean of each ``scale`` x ``scale`` block."""
    if not is_int(scale) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"downsample needs a float tensor of images [B, C, H, W] in [-1, 1], got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4 or x.shape[-1] % scale or x.shape[-2] % scale:
        raise ValueError(f"downsample needs images [B, C, H, W] with H and W divisible by scale = {scale}, "
                         f"got shape {tuple(x.shape)}")
    return F.avg_pool2d(x, scale) if scale > 1 else x


def upsample(x: Tensor, size, mode: str = "bicubic") -> Tensor:
    """Resample [B, C, h, w] to ``size`` = (H, W) by ``mode`` (bicubic: Keys' a = -0.75, as PyTorch)."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample mode must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"upsample needs a float tensor of images [B, C, h, w] in [-1, 1], got "
                         f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kw)


class LowResConditioned(nn.Module):
    """A network of the model convention conditioned on a low-resolution image (see module doc).

    Args:
        base: the registered network to build (``unet_mnist``, ``unet_tiny``, ``unet``, ...); it
            gets ``in_channels = 2 * image_channels`` and ``out_channels = image_channels``.
        scale: the upsampling factor (2: 14x14 -> 28x28).
        image_channels: C, the channels of the images.
        upsample: how the low-res image is brought to the target size before concatenation.
        **kwargs: the base network's other arguments (``num_classes``, ``channels``, ...).

    ``forward(x_t, t, cond=None, lowres=None)``: ``lowres`` [B, C, H / scale, W / scale]. A
    batch of k * B states (classifier-free guidance doubles it) reuses the B low-res images in
    order. A call without ``lowres`` is an error: sampling or editing the bare model would have
    nothing to condition on (use :func:`difflab.editing.upscale`, which binds the images), and
    training it needs the super-resolution loss."""

    def __init__(self, base: str = "unet_mnist", scale: int = 2, image_channels: int = 1,
                 upsample: str = "bicubic", **kwargs) -> None:
        super().__init__()
        if base == "superres":
            raise ValueError("base must be an ordinary network (e.g. unet_mnist), not 'superres' itself")
        if not is_int(scale) or scale < 1:
            raise ValueError(f"scale must be a positive integer (2 for 14x14 -> 28x28), got {scale!r}")
        scale = int(scale)
        if not is_int(image_channels) or image_channels < 1:
            raise ValueError(f"image_channels must be a positive integer, got {image_channels!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        for k in ("in_channels", "out_channels"):
            if k in kwargs:
                raise ValueError(f"{k} is set by the super-resolution wrapper (2 * image_channels in, "
                                 "image_channels out); give image_channels instead")
        self.net = build(base, in_channels=2 * image_channels, out_channels=image_channels, **kwargs)
        self.base, self.scale, self.image_channels, self.upsample = base, scale, image_channels, upsample
        self.num_classes = getattr(self.net, "num_classes", None)

    def extra_repr(self) -> str:
        return (f"base={self.base!r}, scale={self.scale}, image_channels={self.image_channels}, "
                f"upsample={self.upsample!r}")

    def lowres_shape(self, x_t: Tensor) -> tuple[int, ...]:
        return (self.image_channels, x_t.shape[-2] // self.scale, x_t.shape[-1] // self.scale)

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None, lowres: Optional[Tensor] = None) -> Tensor:
        if not isinstance(x_t, Tensor) or x_t.ndim != 4 or x_t.shape[1] != self.image_channels:
            got = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(
                f"this super-resolution model takes x_t of shape [B, {self.image_channels}, H, W], got {got}")
        B = x_t.shape[0]
        if lowres is None:
            raise ValueError(NEEDS_LOWRES)
        want = self.lowres_shape(x_t)
        if lowres.ndim != 4 or tuple(lowres.shape[1:]) != want or B % lowres.shape[0]:
            raise ValueError(
                f"lowres must have shape [B, {want[0]}, {want[1]}, {want[2]}] (1/{self.scale} of x_t's "
                f"{x_t.shape[-2]}x{x_t.shape[-1]}), got {tuple(lowres.shape)}"
            )
        if lowres.shape[0] != B:  # guidance stacks [cond; uncond] states: reuse the images in order
            lowres = lowres.repeat(B // lowres.shape[0], 1, 1, 1)
        up = upsample(lowres.to(x_t.dtype), x_t.shape[-2:], self.upsample)
        h = torch.cat([x_t, up], dim=1)
        return self.net(h, t) if cond is None else self.net(h, t, cond)


def lowres_model(model) -> Optional[LowResConditioned]:
    """The :class:`LowResConditioned` inside ``model`` (unwrapping the wrappers that keep the
    model as ``.module`` -- DDP, the speed layer's Accelerated -- or ``._orig_mod`` -- torch.compile;
    not :class:`WithLowRes`, whose images are bound), else None."""
    return unwrapped_instance(model, LowResConditioned)


class WithLowRes(BoundInputs):
    """``model`` with its low-resolution images bound: ``WithLowRes(m, y)(x_t, t, cond)``, the model
    convention the samplers and losses call."""

    bound = "these low-resolution images"

    def __init__(self, model: nn.Module, lowres: Tensor) -> None:
        super().__init__(model)
        self.lowres = lowres

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.model(x_t, t, cond, lowres=self.lowres)
