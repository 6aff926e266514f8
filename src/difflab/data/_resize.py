"""Resampling image tensors to a square size (shared by the image loaders)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..validation import positive_int


def resize_square(x: Tensor, size: int) -> Tensor:
    """Bilinear resampling of [N, C, H, W] to [N, C, size, size], antialiased when shrinking."""
    size = positive_int("image_size", size)
    if x.shape[-2:] == (size, size):
        return x
    shrink = size < min(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
