"""Clips out: a batch of clips [N, T, C, H, W] in [-1, 1] as an animated GIF, or as one picture.

- :func:`save_clips_gif`: GIF frame t is the grid of every clip's frame t (:func:`to_clip_frames`,
  tiled as :func:`~difflab.data.grids.to_image_grid` tiles images), so the clips play side by side;
- :func:`save_frame_grid`: one still picture, a clip a row, its frames left to right
  (:func:`to_frame_grid`).

Every frame of a GIF has one size (the format's logical screen), so clips given as a list must
share their frame count and frame size: others are refused, naming the first that differs, rather
than padded or cropped without a word. Both writers are atomic (:func:`difflab.files.atomic_write`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write
from ..validation import is_int, is_real, positive_int
from .grids import check_image_path, make_parent, to_image_grid

__all__ = ["check_clips", "to_clip_frames", "to_frame_grid", "save_clips_gif", "save_frame_grid"]

Clips = Union[Tensor, Sequence[Tensor]]


def _size(x: Tensor) -> str:
    return f"{x.shape[-2]}x{x.shape[-1]}"


def check_clips(clips: Clips) -> Tensor:
    """``clips`` as a float tensor [N, T, C, H, W], C = 1, 3 or 4. Taken: a tensor [N, T, C, H, W],
    one clip [T, C, H, W], a list of clips [T, C, H, W] or a list of one clip's frames [C, H, W];
    a list must share one frame count, channel count and frame size (ValueError naming the first
    entry that differs)."""
    if isinstance(clips, (list, tuple)):
        if not clips or not all(isinstance(c, Tensor) for c in clips):
            raise ValueError("clips must be a tensor [N, T, C, H, W] or a non-empty list of tensors (clips "
                             "[T, C, H, W] or frames [C, H, W])")
        first = clips[0]
        what = "frame" if first.ndim == 3 else "clip"
        for i, c in enumerate(clips):
            if c.ndim != first.ndim or c.ndim not in (3, 4):
                raise ValueError(f"clips: entry {i} has shape {tuple(c.shape)} but entry 0 {tuple(first.shape)}; give "
                                 "a list of clips [T, C, H, W] or a list of frames [C, H, W], not a mix")
            if c.shape[-2:] != first.shape[-2:]:
                sizes = (f"frame {i} is {_size(c)} pixels but frame 0 is {_size(first)}" if what == "frame" else
                         f"clip {i}'s frames are {_size(c)} pixels but clip 0's are {_size(first)}")
                raise ValueError(f"clips: {sizes}; a GIF's frames share one size: resize or pad them to one size "
                                 "first")
            if c.shape != first.shape:
                raise ValueError(f"clips: {what} {i} has shape {tuple(c.shape)} but {what} 0 {tuple(first.shape)}; "
                                 "give every clip the same frame count and channels")
        clips = torch.stack(list(clips)) if what == "clip" else torch.stack(list(clips))[None]  # frames: one clip
    if not isinstance(clips, Tensor):
        raise ValueError(f"clips must be a tensor [N, T, C, H, W] or a list of tensors, got {type(clips).__name__}")
    if clips.ndim == 4:
        clips = clips[None]  # one clip
    if clips.ndim != 5 or clips.shape[2] not in (1, 3, 4) or 0 in clips.shape[:2] or clips.is_complex():
        raise ValueError(f"clips must be a non-empty tensor [N, T, C, H, W] (or one clip [T, C, H, W]) with "
                         f"C = 1, 3 or 4 channels, got {clips.dtype} {tuple(clips.shape)}")
    return clips.detach().float().cpu()


def _upscale(picture: np.ndarray, scale: int) -> np.ndarray:
    return picture.repeat(scale, 0).repeat(scale, 1) if scale > 1 else picture


def _plain(picture: np.ndarray) -> np.ndarray:
    """[H, W] for one channel (a grayscale image), else [H, W, C]."""
    return picture[:, :, 0] if picture.shape[2] == 1 else picture


def to_clip_frames(clips: Clips, nrow: int = 8, padding: int = 2, pad_value: float = 1.0,
                   scale: int = 1) -> list[np.ndarray]:
    """T pictures, uint8 [H', W'] (one channel) or [H', W', C]: picture t is the grid of the N
    clips' frame t, ``nrow`` clips a row (:func:`~difflab.data.grids.to_image_grid`: values clamped
    to [-1, 1], round((x + 1) * 127.5)), upscaled ``scale`` times by pixel repetition."""
    clips = check_clips(clips)
    scale = positive_int("scale", scale)
    return [_plain(_upscale(to_image_grid(clips[:, t], nrow, padding, pad_value), scale))
            for t in range(clips.shape[1])]


def to_frame_grid(clips: Clips, padding: int = 2, pad_value: float = 1.0, scale: int = 1) -> np.ndarray:
    """One picture, uint8 [H', W'] or [H', W', C]: clip i on row i, its frames left to right."""
    clips = check_clips(clips)
    scale = positive_int("scale", scale)
    return _plain(_upscale(to_image_grid(clips.flatten(0, 1), clips.shape[1], padding, pad_value), scale))


def _check_path(path: Union[str, Path], suffixes: Sequence[str], example: str) -> Path:
    path = check_image_path(path, "path")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"path {str(path)!r}: clips are written as {' or '.join(suffixes)} here; name a file such "
                         f"as {example}")
    return path


def save_clips_gif(clips: Clips, path: Union[str, Path], nrow: int = 8, fps: float = 4.0, scale: int = 1,
                   padding: int = 2, loop: int = 0) -> Path:
    """Write the clips as an animated GIF that plays them side by side (:func:`to_clip_frames`),
    ``fps`` frames a second, repeated ``loop`` times (0: for ever). A grayscale GIF holds every
    uint8 gray level, so the GIF's frames are :func:`to_clip_frames`'s exactly -- but Pillow writes
    consecutive identical frames as one frame shown that many times as long, so a reader that
    ignores durations (``imageio.mimread``) may return fewer frames than were written; count each
    frame's duration in units of 1 / fps to get them all back (``difflab inpaint`` does)."""
    import imageio.v2 as imageio  # (imageio: only where a GIF is written)

    path = _check_path(path, (".gif",), "clips.gif")
    if not is_real(fps) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a number of frames a second > 0, got {fps!r}")
    if not is_int(loop) or loop < 0:
        raise ValueError(f"loop must be an integer >= 0 (0: play for ever), got {loop!r}")
    frames = to_clip_frames(clips, nrow, padding, scale=scale)
    make_parent(path, "path")
    # duration: milliseconds a frame (imageio >= 2.28)
    return atomic_write(path, lambda tmp: imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=int(loop)))


def save_frame_grid(clips: Clips, path: Union[str, Path], scale: int = 1, padding: int = 2) -> Path:
    """Write :func:`to_frame_grid` (a clip a row, its frames left to right) as a still picture
    (PNG, JPEG, ... by the suffix)."""
    from PIL import Image

    path = check_image_path(path, "path")
    picture = to_frame_grid(clips, padding, scale=scale)
    make_parent(path, "path")
    return atomic_write(path, Image.fromarray(picture).save)
