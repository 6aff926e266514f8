"""scikit-learn's 8x8 handwritten digits (UCI optdigits test set): 1,797 images, 10 classes.

Bundled with scikit-learn, so it needs no download: the CPU-sized image data set for tests,
examples and quick runs. Pixel values 0..16 map linearly to [-1, 1]: x = v / 8 - 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import positive_int
from ._resize import resize_square

__all__ = ["load"]


def load(image_size: int = 8) -> tuple[Tensor, Tensor]:
    """images float32 [1797, 1, image_size, image_size] in [-1, 1] and labels long [1797].

    ``image_size`` other than 8 resamples bilinearly (e.g. 16 or 32 for a U-Net with more levels).
    """
    from sklearn.datasets import load_digits

    image_size = positive_int("image_size", image_size)
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return resize_square(x, image_size), y
