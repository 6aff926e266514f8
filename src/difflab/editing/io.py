"""Images in and out of the editing commands: PNG / JPEG files <-> tensors in [-1, 1].

A pixel value v in 0..255 maps to v / 127.5 - 1 and back by round((x + 1) * 127.5) (the
mapping of :mod:`difflab.data.images` and :func:`difflab.evaluation.save_image_grid`), so a
PNG written from a read tensor holds the same pixels. A grayscale image of more than 8 bits
(a 16-bit PNG; a float image in [0, 1]) is read at its own depth: v / full scale x 2 - 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..data.grids import check_image_path, save_image_grid
from ..data.images import HIGH_DEPTH, grey_levels

__all__ = ["load_images", "save_images"]

PathLike = Union[str, Path]

def load_images(paths: Union[PathLike, Sequence[PathLike]], channels: Optional[int] = None) -> Tensor:
    """Image files (all the same size) as float32 [N, C, H, W] in [-1, 1].

    ``channels``: 1 (grayscale), 3 (RGB) or None (1 when every file is grayscale, else 3).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no input images given")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (infer), got {channels!r}")
    images = []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input image {str(p)!r} does not exist")
        try:
            with Image.open(p) as img:
                img.load()
                images.append(img.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read {str(p)!r} as an image: {err}") from None
    if channels is None:
        channels = 1 if all(img.mode in ("1", "L", "LA", *HIGH_DEPTH) for img in images) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []  # pixel values on the 0..255 scale
    for p, img in zip(paths, images):
        levels = grey_levels(img, f"input image {str(p)!r}")
        if levels is None:
            arrays.append(np.asarray(img.convert(mode), dtype=np.float32))
        else:
            a = (levels * 255).astype(np.float32)
            arrays.append(a if channels == 1 else np.repeat(a[..., None], 3, axis=-1))
    for p, a in zip(paths, arrays):
        if a.shape != arrays[0].shape:
            raise ValueError(f"input images differ in size: {paths[0].name} is {arrays[0].shape[1]}x"
                             f"{arrays[0].shape[0]} but {p.name} is {a.shape[1]}x{a.shape[0]} (width x height)")
    x = torch.from_numpy(np.stack(arrays))
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    return (x / 127.5 - 1.0).contiguous()


def save_images(images: Tensor, path: PathLike, nrow: Optional[int] = None) -> Path:
    """Write images [N, C, H, W] in [-1, 1] to ``path``: one image as it is, several as a grid
    with ``nrow`` per row (white 2-pixel padding)."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor [N, C, H, W], got {getattr(images, 'shape', type(images).__name__)}")
    path = check_image_path(path, "output")
    if len(images) == 1:
        return save_image_grid(images, path, nrow=1, padding=0)
    return save_image_grid(images, path, nrow=nrow or len(images))
