"""Inpainting masks: which pixels to fill (1) and which to keep (0).

A mask m has the image's spatial size; m = 1 marks the region the model fills, m = 0 the
pixels kept from the input, so an inpainted image is  m * generated + (1 - m) * input.
Masks come from simple shapes (``box``, ``half``), from a PNG (white = fill) or as a tensor,
and broadcast against the image batch [B, C, H, W] (a mask [H, W], [1, H, W], [B, 1, H, W]
or the image's own shape).

    mask = parse_mask("box:0,14,28,28", (28, 28))     # the lower half of a 28x28 digit
    mask = parse_mask("half:bottom", (28, 28))        # the same

Clips [B, T, C, H, W] take space-time masks [T, 1, H, W] (they broadcast the same way): whole
frames to fill (prediction, frame interpolation) or a region across frames (video inpainting).

    mask = future_frames_mask(8, (16, 16), given=2)      # prediction: frames 2..7 from frames 0, 1
    mask = between_frames_mask(8, (16, 16), keep=(0, 7)) # interpolation: frames 1..6 between 0 and 7
    mask = across_frames(box_mask((16, 16), 4, 4, 12, 12), 8)  # a box in every frame
    mask = parse_clip_mask("future:2", 8, (16, 16))      # the same masks from text
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..data.images import grey_levels
from ..validation import is_int

__all__ = ["box_mask", "half_mask", "parse_mask", "load_mask", "check_mask", "SIDES", "frames_mask",
           "future_frames_mask", "between_frames_mask", "across_frames", "parse_clip_mask"]

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


# ---------------------------------------------------------------------------- space-time masks
def _frames(frames) -> int:
    if not is_int(frames) or frames < 1:
        raise ValueError(f"frames must be the clip's frame count, an integer >= 1, got {frames!r}")
    return int(frames)


def _indices(name: str, indices, frames: int) -> list[int]:
    """Frame indices as a sorted list of distinct integers in 0 .. frames - 1 (negative ones count
    from the end, as Python's)."""
    if is_int(indices):
        indices = [indices]
    try:
        if isinstance(indices, (str, bytes)):
            raise TypeError
        values = list(indices)
    except TypeError:
        raise ValueError(f"{name} must be frame indices (integers), got {indices!r}") from None
    if not values or not all(is_int(i) for i in values):
        raise ValueError(f"{name} must be one or more frame indices (integers), got {indices!r}")
    bad = [int(i) for i in values if not -frames <= int(i) < frames]
    if bad:
        raise ValueError(f"{name}: frame {bad[0]} is not in a clip of {frames} frames (0 .. {frames - 1})")
    return sorted({int(i) % frames for i in values})


def frames_mask(frames: int, size: Sequence[int], fill) -> Tensor:
    """[T, 1, H, W]: 1 on every pixel of the frames ``fill`` (indices), 0 on the others, so an
    edit generates those frames whole and keeps the rest. Broadcasts against clips [B, T, C, H, W]."""
    frames, (h, w) = _frames(frames), _size(size)
    m = torch.zeros(frames, 1, h, w)
    m[_indices("fill", fill, frames)] = 1.0
    return m


def future_frames_mask(frames: int, size: Sequence[int], given: int) -> Tensor:
    """Prediction: keep the first ``given`` frames (0 .. given - 1) and fill the rest, [T, 1, H, W]."""
    frames = _frames(frames)
    if not is_int(given) or not 1 <= given < frames:
        raise ValueError(f"given (the frames kept at the start) must be an integer in 1 .. {frames - 1} for a clip of "
                         f"{frames} frames (at least one frame given and one to predict), got {given!r}")
    return frames_mask(frames, size, range(int(given), frames))


def between_frames_mask(frames: int, size: Sequence[int], keep) -> Tensor:
    """Frame interpolation: keep the frames ``keep`` (e.g. (0, T - 1), or every other frame) and
    fill every other frame, [T, 1, H, W]."""
    frames = _frames(frames)
    kept = _indices("keep", keep, frames)
    if len(kept) == frames:
        raise ValueError(f"keep names every frame of the clip ({frames}), so nothing would be filled; keep fewer")
    return frames_mask(frames, size, [t for t in range(frames) if t not in kept])


def across_frames(mask: Tensor, frames: int, during=None) -> Tensor:
    """A region across frames (video inpainting): the mask [H, W] of one frame (``box_mask``,
    ``half_mask``, ``load_mask``) on each of the frames ``during`` (default: every frame), 0 on the
    others, [T, 1, H, W]."""
    frames = _frames(frames)
    if not isinstance(mask, Tensor) or mask.ndim != 2:
        raise ValueError(f"mask must be one frame's mask [H, W] (box_mask, half_mask, load_mask), got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    on = frames_mask(frames, mask.shape, range(frames) if during is None else during)
    return on * mask.to(on.dtype)


def parse_clip_mask(spec: str, frames: int, size: Sequence[int]) -> Tensor:
    """A space-time mask [T, 1, H, W] from text: ``future:K`` (keep the first K frames, predict
    the rest), ``between:I,J,...`` (keep those frames, fill the others), or any image mask of
    :func:`parse_mask` (``box:...``, ``half:SIDE``, a PNG) across every frame."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"clip mask must be future:K, between:I,J,..., box:x0,y0,x1,y1, half:SIDE or an image file, "
                         f"got {spec!r}")
    if spec.partition(":")[0] in ("future", "between"):
        kind, _, arg = spec.partition(":")
        try:
            values = [int(v) for v in arg.split(",")] if arg else []
        except ValueError:
            values = []
        if not values or (kind == "future" and len(values) != 1):
            form = "future:K (an integer: the frames given)" if kind == "future" else \
                "between:I,J,... (the frames kept, integers)"
            raise ValueError(f"clip mask {spec!r}: use {form}")
        if kind == "future":
            return future_frames_mask(frames, size, values[0])
        return between_frames_mask(frames, size, values)
    return across_frames(parse_mask(spec, size), frames)
