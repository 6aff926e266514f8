"""Images between the sampler and the page: tensors in [-1, 1] <-> PNG bytes (and clips -> GIF).

A pixel value v in 0..255 maps to v / 127.5 - 1 and back by round((x + 1) * 127.5), the
mapping of :mod:`difflab.editing.io` and :func:`difflab.data.grids.to_image_grid`, so an image
the page sends back (a generated one, to inpaint) reaches the model with the pixels it was
shown. Uploads are read from memory, never from a path, and their size in pixels is checked
from the PNG header before any pixel is decoded (a small file may claim a huge image). A clip
[T, C, H, W] is an animated GIF of its frames (:func:`difflab.data.clips.to_clip_frames`, as
``save_clips_gif`` writes them: a grayscale GIF keeps every uint8 level).
"""

from __future__ import annotations

import base64
import io
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..data.clips import to_clip_frames, to_frame_grid
from ..data.grids import to_image_grid

__all__ = ["to_png", "to_gif", "clip_grid_png", "data_url", "read_image", "read_mask", "BadImage", "CLIP_FPS"]

CLIP_FPS = 4.0  # frames a second of a clip's GIF, as save_clips_gif's default


class BadImage(ValueError):
    """An uploaded image or mask the server cannot use; the message says why and what to send."""


def to_png(images: Tensor, nrow: Optional[int] = None, padding: int = 2) -> bytes:
    """Images [N, C, H, W] in [-1, 1] as PNG bytes: one image as it is, several as a grid with
    ``nrow`` per row (default: all in one row) and white ``padding`` between them."""
    if len(images) == 1:
        padding = 0
    grid = to_image_grid(images, nrow=nrow or len(images), padding=padding)  # uint8 [H, W, C]
    return _png_of(grid[..., 0] if grid.shape[-1] == 1 else grid)


def _png_of(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG")
    return buffer.getvalue()


def to_gif(clip: Tensor, fps: float = CLIP_FPS) -> bytes:
    """One clip [1, T, C, H, W] (or [T, C, H, W]) in [-1, 1] as an animated GIF, ``fps`` frames a
    second, looping; its frames are :func:`~difflab.data.clips.to_clip_frames`'s."""
    import imageio.v2 as imageio  # (as data.clips: imported only where a GIF is written)

    frames = to_clip_frames(clip, nrow=1, padding=0)
    buffer = io.BytesIO()
    imageio.mimwrite(buffer, frames, format="GIF", duration=1000.0 / fps, loop=0)  # duration: ms a frame
    return buffer.getvalue()


def clip_grid_png(clips: Tensor) -> bytes:
    """Clips [N, T, C, H, W] as one PNG: clip i on row i, its frames left to right (the preview of
    a clip's denoised estimates: every frame at once)."""
    return _png_of(to_frame_grid(clips))


def data_url(data: bytes, media: str = "image/png") -> str:
    """``data:image/png;base64,...``: a PNG (or a GIF: ``media="image/gif"``) the page shows and
    downloads without another request."""
    return f"data:{media};base64," + base64.b64encode(data).decode("ascii")


def _open(data: bytes, size: Sequence[int], what: str) -> Image.Image:
    """The image in ``data``, decoded only when it is ``size`` = (H, W) pixels."""
    if not data:
        raise BadImage(f"{what} is empty: send a PNG (or JPEG) file")
    try:
        # reads the header only; PNG and JPEG alone: other formats' decoders run more code on what a
        # client sent (EPS even starts Ghostscript)
        img = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except (UnidentifiedImageError, OSError):
        raise BadImage(f"{what} is not an image PNG or JPEG can decode; send a PNG file") from None
    h, w = size
    if img.size != (w, h):
        raise BadImage(f"{what} is {img.size[0]}x{img.size[1]} pixels, but the model works on {w}x{h} images; "
                       f"scale it to {w}x{h} first (the page does so when it loads a file)")
    try:
        img.load()
    except (OSError, ValueError) as err:  # truncated or corrupt pixel data after a good header
        raise BadImage(f"{what} is damaged ({err}); send the PNG again") from None
    return img


def read_image(data: bytes, shape: Sequence[int], what: str = "the image") -> Tensor:
    """An uploaded image as float32 [1, C, H, W] in [-1, 1] for a model of image ``shape``
    (C, H, W); C = 1 takes the luminance, C = 3 the RGB channels (alpha is dropped, as
    :func:`difflab.editing.load_images` does)."""
    c, h, w = shape
    if c not in (1, 3):
        raise BadImage(f"the model makes images with {c} channels; the page edits 1- or 3-channel images only")
    img = _open(data, (h, w), what)
    a = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32)
    x = torch.from_numpy(a)[None] if c == 1 else torch.from_numpy(a).permute(2, 0, 1)
    return (x / 127.5 - 1.0)[None].contiguous()


def read_mask(data: bytes, size: Sequence[int], what: str = "the mask") -> Tensor:
    """A painted mask as float32 [1, 1, H, W] of 0 and 1: 1 (a pixel brighter than mid-grey,
    128 or more in its luminance) is filled in by the model, 0 is kept, as in ``difflab inpaint``.
    An empty mask has nothing to fill and is refused."""
    img = _open(data, size, what)
    m = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.uint8) >= 128).float()
    if not m.any():
        raise BadImage(f"{what} is empty: paint the region the model should fill (white = fill)")
    return m[None, None]
