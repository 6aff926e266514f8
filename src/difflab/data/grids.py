"""Sample grids: a batch of images in [-1, 1] tiled into one picture."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write
from ..validation import positive_int

__all__ = ["to_image_grid", "save_image_grid", "check_image_path", "make_parent", "IMAGE_SUFFIXES"]

# What Pillow writes by suffix and the image commands accept for their outputs.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def to_image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] as one uint8 array [rows*(H+p)+p, nrow*(W+p)+p, C], C = 1 or 3.

    ``nrow`` images per row; values are clamped to [-1, 1] and mapped to 0..255 by
    round((x + 1) * 127.5). The padding between tiles has the value ``pad_value`` (1 = white).
    """
    if (
        not isinstance(images, Tensor)
        or images.ndim != 4
        or images.shape[1] not in (1, 3, 4)
        or len(images) == 0
    ):
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty tensor [N, C, H, W] with C = 1, 3 or 4, got {got}")
    nrow = positive_int("nrow (images per row)", nrow)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    x = images.detach().float().cpu().nan_to_num(0.0).clamp(-1, 1)
    N, C, H, W = x.shape
    ncol = min(nrow, N)
    rows = math.ceil(N / ncol)
    grid = torch.full((C, rows * (H + padding) + padding, ncol * (W + padding) + padding), float(pad_value))
    for i in range(N):
        r, c = divmod(i, ncol)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top : top + H, left : left + W] = x[i]
    return ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def check_image_path(path: Union[str, Path], what: str = "output", mkdir: bool = False) -> Path:
    """``path`` as a Path if it names an image file Pillow can write (a suffix of
    :data:`IMAGE_SUFFIXES`, not a folder), else ValueError naming ``what`` (the argument or flag).
    ``mkdir``: also create its folder (what saving does), so a bad folder fails before any work."""
    shown = str(path)
    path = Path(path)
    if shown == "" or path.is_dir():
        raise ValueError(f"{what} {shown!r} is {'empty' if shown == '' else 'a folder'}; "
                         "name an image file such as samples.png")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{what} {shown!r} needs an image suffix such as .png "
                         f"(one of {', '.join(IMAGE_SUFFIXES)})")
    if mkdir:
        make_parent(path, what)
    return path


def make_parent(path: Path, what: str) -> None:
    """Create ``path``'s folder, or ValueError naming ``what`` when a file is in the way; an OS
    failure (a read-only folder, a full disk) stays an OSError naming the folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if not isinstance(err, (FileExistsError, NotADirectoryError)):
            raise
        raise ValueError(f"{what} {str(path)!r}: cannot create its folder {str(path.parent)!r} "
                         f"({err.strerror or err}); choose a writable location") from None


def save_image_grid(images: Tensor, path: Union[str, Path], nrow: int = 8, **kwargs) -> Path:
    """Write ``to_image_grid(images, nrow)`` to ``path`` (PNG, JPEG, ... by its suffix; Pillow)."""
    from PIL import Image

    path = check_image_path(path, "path")
    grid = to_image_grid(images, nrow, **kwargs)
    make_parent(path, "path")
    image = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    return atomic_write(path, image.save)  # a crash leaves the old file or none, never a part
