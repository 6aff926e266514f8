"""A folder of PNG / JPEG images as one tensor in [-1, 1] (read with Pillow).

    images, _ = dl.data.images.load_folder("my_faces/", image_size=64)

The folder is searched recursively; files are taken in sorted path order. There are no
labels (the second value is None).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..validation import is_int

__all__ = ["load_folder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F", "P;L")
_CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}

# Pillow's single-channel modes of more than 8 bits and their full scale: 16-bit PNGs open as
# I;16 (Pillow >= 10) or I (older), float images as F. convert("L") clips them at 255 instead of
# rescaling, which turned a 16-bit image white.
HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1}


def grey_levels(img, what: str) -> Optional[np.ndarray]:
    """A single-channel image of more than 8 bits as float64 levels in [0, 1] (0 black, 1 white),
    or None for an image of another mode. ``what`` names the file in the error for values
    outside the mode's range."""
    full = HIGH_DEPTH.get(img.mode)
    if full is None:
        return None
    a = np.asarray(img, dtype=np.float64)
    if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > full):
        expected = "0..65535 (16 bits)" if full > 1 else "floats in [0, 1]"
        raise ValueError(f"{what}: a {img.mode} image with values in [{a.min():g}, {a.max():g}], expected "
                         f"{expected}; save it as an 8- or 16-bit PNG")
    return a / full


def _open(path: Path, mode: Optional[str] = None):
    """The image at ``path`` decoded and converted to ``mode``; without a mode, only its (size, mode).
    An image of more than 8 bits comes back as a float image ("F") of values on the 0..255
    scale, whatever ``mode``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if mode is None:
                return img.size, img.mode
            img.load()
            levels = grey_levels(img, str(path))
            if levels is not None:
                return Image.fromarray((levels * 255).astype(np.float32), mode="F")
            return img.convert(mode) if img.mode != mode else img.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(
            f"cannot read {path} as an image ({type(err).__name__}: {err}); remove or replace it"
        ) from None


def _square(img, size: int):
    """Resize the shorter side to ``size`` (bicubic, antialiased), then crop the centre square."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_folder(
    path: Union[str, Path], image_size: Optional[int] = None, channels: Optional[int] = None
) -> tuple[Tensor, None]:
    """All PNG / JPEG files under ``path``: images float32 [N, C, H, W] in [-1, 1], and None.

    ``image_size=s`` resizes each image's shorter side to s and crops the centre s x s;
    without it every image must already have the same size. ``channels`` is 1 (grayscale),
    3 (RGB) or 4 (RGBA); by default 1 when every image is grayscale, else 3 (alpha dropped).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {str(root)!r} {what}")
    if image_size is not None and (not is_int(image_size) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    image_size = None if image_size is None else int(image_size)
    if channels is not None and channels not in _CHANNEL_MODES:
        raise ValueError(f"channels must be 1, 3, 4 or None (infer), got {channels!r}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sorted(p.name for p in root.rglob("*") if p.is_file())[:5]
        raise FileNotFoundError(
            f"no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} images in {str(root)!r}"
            + (f" (found other files, e.g. {', '.join(others)})" if others else " (the folder is empty)")
        )
    headers = [_open(p) for p in files]  # sizes and modes, without decoding
    if image_size is None:
        first = headers[0][0]
        for p, (size, _) in zip(files, headers):
            if size != first:
                raise ValueError(
                    f"images in {str(root)!r} differ in size: {files[0].relative_to(root)} is "
                    f"{first[0]}x{first[1]} but {p.relative_to(root)} is {size[0]}x{size[1]} (width x height); "
                    "pass image_size=S to resize and centre-crop all of them to S x S"
                )
    if channels is None:
        channels = 1 if all(m in _GRAY_MODES for _, m in headers) else 3
    mode = _CHANNEL_MODES[channels]
    arrays = []
    for p in files:
        img = _open(p, mode)
        if image_size is not None:
            img = _square(img, image_size)
        a = np.asarray(img, dtype=np.float32)  # 0..255 (a float image of more than 8 bits: unrounded)
        if a.ndim == 2:  # grayscale, or a grey image of more than 8 bits wanted in colour (opaque)
            a = np.repeat(a[:, :, None], min(channels, 3), axis=2)
            if channels == 4:
                a = np.concatenate([a, np.full_like(a[:, :, :1], 255.0)], axis=2)
        arrays.append(a)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div_(127.5).sub_(1.0)
    return x.contiguous(), None
