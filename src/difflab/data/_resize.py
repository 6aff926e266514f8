"""Resampling image tensors to a square size (shared by the image loaders)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_square(x: Tensor, size: int) -> Tensor:
    """Bilinear resampling of [N, C, H, W] to [N, C, size, size], antialiased when shrinking."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size must be a positive integer, got {size!r}")
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < min(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
