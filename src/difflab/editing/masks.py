"""Inpainting masks: which pixels to fill (1) and which to keep (0).

A mask m has the image's spatial size; m = 1 marks the region the model fills, m = 0 the
pixels kept from the input, so an inpainted image is  m * generated + (1 - m) * input.
Masks come from simple shapes (``box``, ``half``), from a PNG (white = fill) or as a tensor,
and broadcast against the image batch [B, C, H, W] (a mask [H, W], [1, H, W], [B, 1, H, W]
or the image's own shape).

    mask = parse_mask("box:0,14,28,28", (28, 28))     # the lower half of a 28x28 digit
    mask = parse_mask("half:bottom", (28, 28))        # the same
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..data.images import grey_levels
from ..validation import is_int

__all__ = ["box_mask", "half_mask", "parse_mask", "load_mask", "check_mask", "SIDES"]

SIDES = ("left", "right", "top", "bottom")


def _size(size) -> tuple[int, int]:
    try:
        if isinstance(size, (str, bytes)):  # "28" would read as (2, 8)
            raise TypeError
        h, w = size
        if any(not is_int(s) for s in (h, w)):
            raise TypeError
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), two integers, got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be (height, width) with both >= 1, got {size!r}")
    return h, w


def box_mask(size: Sequence[int], x0: int, y0: int, x1: int, y1: int) -> Tensor:
    """1 inside the box of columns x0 <= x < x1 and rows y0 <= y < y1 (pixel corners, as PIL),
    0 elsewhere; a float tensor [H, W]."""
    h, w = _size(size)
    coords = (x0, y0, x1, y1)
    if not all(is_int(c) for c in coords):
        raise ValueError(f"box corners must be integers x0,y0,x1,y1, got {coords}")
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(
            f"box x0,y0,x1,y1 = {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= width = {w} and "
            f"0 <= y0 < y1 <= height = {h} (columns x, rows y, end exclusive)"
        )
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1.0
    return m


def half_mask(size: Sequence[int], side: str) -> Tensor:
    """1 on the ``side`` half (left, right, top or bottom) of an [H, W] image; odd sizes give
    the named half the extra middle row/column's lower share (floor(H / 2) rows for top)."""
    h, w = _size(size)
    if side not in SIDES:
        raise ValueError(f"half mask side must be one of {', '.join(SIDES)}, got {side!r}")
    m = torch.zeros(h, w)
    if side == "left":
        m[:, : w // 2] = 1.0
    elif side == "right":
        m[:, w // 2:] = 1.0
    elif side == "top":
        m[: h // 2] = 1.0
    else:
        m[h // 2:] = 1.0
    return m


def load_mask(path: Union[str, Path], size: Sequence[int] | None = None) -> Tensor:
    """A mask from an image file: pixels brighter than mid-grey (>= 128 of 255) are filled (1);
    a mask with no such pixel (nothing to fill) is refused, as an empty box is."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"mask file {str(path)!r} does not exist (or give a shape: box:x0,y0,x1,y1 or half:SIDE)")
    try:
        with Image.open(path) as img:
            levels = grey_levels(img, f"mask {str(path)!r}")  # more than 8 bits: at its own depth
            a = np.asarray(img.convert("L"), dtype=np.uint8) if levels is None else levels * 255
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read mask {str(path)!r} as an image: {err}") from None
    if size is not None and a.shape != _size(size):
        h, w = _size(size)
        raise ValueError(f"mask {str(path)!r} is {a.shape[1]}x{a.shape[0]} (width x height) but the image is "
                         f"{w}x{h}; mask and image must have the same size")
    fill = a >= 128
    if not fill.any():  # as an empty box is refused: an edit that changes nothing hides the mistake
        raise ValueError(f"mask {str(path)!r} has no white pixel (none >= 128 of 255, brightest {int(a.max())}), "
                         "so nothing would be filled; paint the region to fill white (or invert the mask)")
    return torch.from_numpy(fill.astype(np.float32))


def parse_mask(spec: str, size: Sequence[int]) -> Tensor:
    """A mask [H, W] from text: ``box:x0,y0,x1,y1``, ``half:left|right|top|bottom`` or a PNG path."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"mask must be box:x0,y0,x1,y1, half:SIDE or an image file, got {spec!r}")
    kind, _, arg = spec.partition(":")
    if kind == "box" and arg:
        try:
            coords = [int(v) for v in arg.split(",")]
        except ValueError:
            coords = []
        if len(coords) != 4:
            raise ValueError(f"mask {spec!r}: a box is box:x0,y0,x1,y1 with four integers (pixels)")
        return box_mask(size, *coords)
    if kind == "half" and arg:
        return half_mask(size, arg)
    if kind in ("box", "half") and not arg:
        raise ValueError(f"mask {spec!r} is incomplete: use box:x0,y0,x1,y1 or half:{'|'.join(SIDES)}")
    return load_mask(spec, size)


def check_mask(mask, image: Tensor) -> Tensor:
    """The mask as a float tensor broadcast to ``image``'s shape, values in [0, 1]."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch tensor (1 = fill, 0 = keep), got {type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError:
        shape = None
    if shape != image.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not fit the image of shape {tuple(image.shape)}: "
            f"mask and image must have the same size {tuple(image.shape[2:]) or tuple(image.shape[1:])} "
            "(a mask [H, W], [1, H, W], [B, 1, H, W] or the image's shape)"
        )
    mask = mask.to(device=image.device, dtype=image.dtype)
    if not torch.isfinite(mask).all() or (mask < 0).any() or (mask > 1).any():
        raise ValueError("mask values must lie in [0, 1] (1 = fill, 0 = keep)")
    return mask.expand_as(image)
