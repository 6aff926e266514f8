"""Clips out: clips [N, T, C, H, W] in [-1, 1] as an animated GIF or an MP4, or as one picture.

- :func:`save_clips_gif`: GIF frame t is the grid of every clip's frame t (:func:`to_clip_frames`,
  tiled as :func:`~difflab.data.grids.to_image_grid` tiles images), so the clips play side by side;
- :func:`save_clips_mp4`: the same frames as an H.264 MP4 video (lossy; the optional package
  imageio-ffmpeg, ``pip install "difflab[video]"``), upscaled so that small clips can be seen;
- :func:`save_frame_grid`: one still picture, a clip a row, its frames left to right
  (:func:`to_frame_grid`);
- :func:`save_clips`: one of the three by the path's suffix (.gif, .mp4, else a picture);
- :func:`read_clip_mp4`: one clip back from an MP4 at a model's frame size, undoing
  :func:`save_clips_mp4`'s upscaling and white padding (:func:`mp4_layout`).

Every frame of a GIF has one size (the format's logical screen), so clips given as a list must
share their frame count and frame size: others are refused, naming the first that differs, rather
than padded or cropped without a word. Every writer is atomic (:func:`difflab.files.atomic_write`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write
from ..validation import is_int, is_real, positive_int
from .grids import IMAGE_SUFFIXES, check_image_path, make_parent, to_image_grid

__all__ = ["check_clips", "to_clip_frames", "to_frame_grid", "save_clips_gif", "save_clips_mp4", "save_frame_grid",
           "save_clips", "check_video_or_image_path", "check_mp4_writer", "mp4_scale", "VIDEO_EXTRA", "read_clip_mp4",
           "mp4_layout", "Mp4Layout"]

# The optional package MP4 output needs, and how to get it (the CLI shows messages naming "pip install" as they are).
VIDEO_EXTRA = 'pip install "difflab[video]"  (or: pip install imageio-ffmpeg)'

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
    if not set(suffixes) <= set(IMAGE_SUFFIXES):  # a video: not a file Pillow writes
        shown, path = str(path), Path(path)
        if shown == "" or path.is_dir():
            raise ValueError(f"path {shown!r} is {'empty' if shown == '' else 'a folder'}; name a file such as "
                             f"{example}")
    else:
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


def check_mp4_writer() -> None:
    """Nothing if MP4s can be written, else ModuleNotFoundError naming the extra to install: MP4
    goes through imageio's ffmpeg plugin, whose package imageio-ffmpeg (an ffmpeg binary in a
    wheel) is optional. The CLI calls this before any sampling."""
    _require_imageio_ffmpeg("writing", "write")


def _require_imageio_ffmpeg(doing: str, instead: str) -> None:
    """ModuleNotFoundError naming the extra when imageio's ffmpeg plugin (imageio-ffmpeg) is missing:
    "{doing} MP4 video needs ...; or {instead} a .gif"."""
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's ffmpeg plugin loads it again when it runs)
    except ImportError as err:
        raise ModuleNotFoundError(f"{doing} MP4 video needs the package imageio-ffmpeg ({err}); install it: "
                                  f"{VIDEO_EXTRA}; or {instead} a .gif", name="imageio_ffmpeg") from None


def mp4_scale(frame_size: Sequence[int], min_side: int = 64) -> int:
    """The pixel repetition :func:`save_clips_mp4` uses by default: the smallest even integer s
    with s * min(H, W) >= ``min_side`` (64), so 16x16 digits play as 64x64 and 64x64 Moving MNIST
    frames as 128x128 (players scale a small video smoothly: a blur). Even, because yuv420p keeps
    one colour (chroma) sample per 2x2 block of pixels: with s even every such block lies inside
    one repeated pixel, so only the pixels' edges blur in colour (ffmpeg's chroma filters), and the
    sizes come out even. Measured on random per-pixel colours (crf 0), the mean error read back is
    45 levels at s = 1, 23 at s = 3, 8 at s = 2 and 4 at s = 4 (docs/video.md)."""
    side = max(1, min(int(s) for s in frame_size))
    s = -(-positive_int("min_side", min_side) // side)
    return max(2, s + s % 2)


def _even(picture: np.ndarray, fill: int) -> np.ndarray:
    """``picture`` padded by one row and/or column of ``fill`` at the bottom / right up to even
    sizes: yuv420p stores one chroma sample per 2x2 block, so H.264 in yuv420p takes even sizes only."""
    h, w = picture.shape[:2]
    pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (picture.ndim - 2)
    return np.pad(picture, pad, constant_values=fill) if h % 2 or w % 2 else picture


def save_clips_mp4(clips: Clips, path: Union[str, Path], nrow: int = 8, fps: float = 4.0,
                   scale: Optional[int] = None, padding: int = 2, crf: int = 18) -> Path:
    """Write the clips as an H.264 MP4 (yuv420p, the format every browser and player plays) that
    plays them side by side: frame t is :func:`to_clip_frames`'s picture t (the GIF's mapping,
    round((x + 1) * 127.5) on the grid), upscaled ``scale`` times by pixel repetition (default
    :func:`mp4_scale`: even, frames at least 64 pixels a side), padded with white at the bottom /
    right to even sizes where an odd ``scale`` leaves them odd (yuv420p needs them), ``fps``
    frames a second, every frame stored (no merging of repeats, as GIF does).

    MP4 is lossy, unlike the GIF: the colours go to limited-range BT.601 YUV (luma in 16..235, so
    about one grey level of rounding), chroma is shared by 2x2 pixels (:func:`mp4_scale`: little
    lost at an even ``scale``), and x264 quantises at constant quality ``crf`` (0: lossless luma,
    18: visually lossless, 23: ffmpeg's default, 51: worst). Read back at the defaults, moving
    digits are within 0.05 grey levels on average (at most 2), grey noise within 0.7 (at most 8;
    docs/video.md). Keep the GIF or the tensors (``--save-tensor``) for exact values. RGBA clips
    lose alpha (MP4 has none). Needs imageio-ffmpeg (:func:`check_mp4_writer`)."""
    import imageio.v2 as imageio  # (imageio: only where a video is written)

    path = _check_path(path, (".mp4",), "clips.mp4")
    if not is_real(fps) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a number of frames a second > 0, got {fps!r}")
    if not is_int(crf) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an integer 0..51 (x264's constant quality: 0 lossless, 18 visually lossless, "
                         f"51 worst), got {crf!r}")
    clips = check_clips(clips)
    scale = mp4_scale(clips.shape[-2:]) if scale is None else positive_int("scale", scale)
    check_mp4_writer()
    frames = [_even(f[:, :, :3] if f.ndim == 3 else f, 255)
              for f in to_clip_frames(clips, nrow, padding, scale=scale)]
    make_parent(path, "path")

    def write(tmp: Path) -> None:
        # quality=None: no -crf of imageio's own; macro_block_size=2: the frames are even already, so
        # ffmpeg resizes nothing (its default of 16 would rescale them, blurring the pixels)
        with imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                                pixelformat="yuv420p", quality=None, macro_block_size=2, ffmpeg_log_level="error",
                                output_params=["-crf", str(int(crf))]) as writer:
            for frame in frames:
                writer.append_data(frame)

    return atomic_write(path, write)


class Mp4Layout(NamedTuple):
    """Where a clip's frames lie in a video frame: each pixel repeated ``scale`` s times a side,
    inside a white border of ``border`` p frame pixels a side; or (``resize``) the whole video
    frame is the clip's frame at another size."""

    scale: int
    border: int
    resize: bool = False


# A border is the writer's white padding when its mean grey level is at least this: the codec moves
# white by a level or two on average (docs/video.md: mean errors 0.05 .. 2.6 levels at crf 0 .. 23).
WHITE_LEVEL = 240.0


def mp4_layout(video_size: Sequence[int], frame_size: Sequence[int],
               frames: Optional[np.ndarray] = None) -> Optional[Mp4Layout]:
    """How :func:`save_clips_mp4` laid one clip of frames ``frame_size`` (H, W) into video frames
    of ``video_size`` (H', W'), or None if it cannot have. The writer draws the clip's frame with
    a border of p pixels of white (``padding``; 0 for one clip at its size), repeats every pixel s
    times, and adds one white row / column where a size is odd:

        H' = n + (n mod 2),  n = s (H + 2 p),   and the same for W with the same s and p.

    Several (s, p) can fit one size (64 = 4 x 16 = 2 x (16 + 2 x 8)): a border counts only if
    every frame's border band and padding row are white (mean level >= ``WHITE_LEVEL``; ``frames``
    [T, H', W'(, C)] uint8), and the widest white border wins, so a white-framed clip is never read
    as a clip whose outer pixels are white. Without ``frames`` only p = 0 is considered."""
    (vh, vw), (h, w) = (int(v) for v in video_size), (int(f) for f in frame_size)
    fits = []
    for p in range(0, min(vh, vw)):
        n_h, n_w = h + 2 * p, w + 2 * p
        if n_h > vh or n_w > vw:
            break
        for s in range(1, vh // n_h + 1):
            if s * n_h + (s * n_h) % 2 == vh and s * n_w + (s * n_w) % 2 == vw:
                fits.append(Mp4Layout(s, p))
    for layout in sorted(fits, key=lambda f: -f.border):
        if layout.border == 0:
            return layout
        if frames is not None:
            s, p = layout.scale, layout.border
            inner = np.zeros((vh, vw), bool)
            inner[s * p: s * (p + h), s * p: s * (p + w)] = True
            if float(frames[:, ~inner].mean()) >= WHITE_LEVEL:
                return layout
    return None


def read_clip_mp4(path: Union[str, Path], frame_size: Sequence[int], channels: int = 1) -> Tensor:
    """One clip [T, C, H, W] in [-1, 1] from an MP4 (imageio's ffmpeg plugin, ``pip install
    "difflab[video]"``), at the frame size (H, W) = ``frame_size``: the inverse of
    ``save_clips_mp4(clip[None], path, nrow=1)`` at any scale and padding, as far as the codec
    allows (:func:`mp4_layout` finds the layout; each s x s block of repeated pixels is averaged,
    which also averages the codec's noise). A video of another size but the same aspect ratio
    (H' W = W' H) is resized to (H, W) by area averaging (Pillow's box filter); any other is refused.
    ``channels``: 1 (grey: the ITU-R 601 luma, as Pillow's "L") or 3 (RGB)."""
    import imageio.v2 as imageio  # (imageio: only where a video is read)

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB) to read an MP4, got {channels!r}")
    h, w = (positive_int("frame_size", int(v)) for v in frame_size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MP4 clip {str(path)!r} does not exist")
    _require_imageio_ffmpeg("reading", "give")
    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            video = np.stack([np.asarray(f, dtype=np.uint8)[..., :3] for f in reader])
    except (OSError, RuntimeError, ValueError, IndexError) as err:
        raise ValueError(f"cannot read {str(path)!r} as an MP4 video: {err}") from None
    if video.ndim == 3:
        video = video[..., None].repeat(3, -1)
    video = video.astype(np.float64)
    if channels == 1:  # the luma, as Pillow's convert("L"): the grey that save_clips_mp4 wrote
        video = (video @ np.array([0.299, 0.587, 0.114]))[..., None]
    layout = mp4_layout(video.shape[1:3], (h, w), video)
    if layout is None and video.shape[1] * w == video.shape[2] * h:
        layout = Mp4Layout(0, 0, resize=True)
    if layout is None:
        raise ValueError(f"MP4 clip {str(path)!r} has frames of {video.shape[2]}x{video.shape[1]} pixels, which are "
                         f"not frames of {w}x{h} as save_clips_mp4 writes one clip (scaled s times, inside a white "
                         f"border) nor of their aspect ratio; give one clip at the model's frame size "
                         f"(save_clips_mp4(clip[None], path, nrow=1), or a GIF); several clips side by side are "
                         "not one clip")
    if layout.resize:
        from PIL import Image

        frames = [np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BOX), dtype=np.float64)
                  for f in np.rint(video[..., 0] if channels == 1 else video).clip(0, 255).astype(np.uint8)]
        clip = np.stack(frames).reshape(len(frames), h, w, channels)
    else:
        s, p = layout.scale, layout.border
        crop = video[:, s * p: s * (p + h), s * p: s * (p + w)]
        clip = crop.reshape(len(crop), h, s, w, s, channels).mean((2, 4))  # each repeated pixel's block
    return torch.from_numpy(clip).float().div(127.5).sub(1.0).permute(0, 3, 1, 2).contiguous()


def save_frame_grid(clips: Clips, path: Union[str, Path], scale: int = 1, padding: int = 2) -> Path:
    """Write :func:`to_frame_grid` (a clip a row, its frames left to right) as a still picture
    (PNG, JPEG, ... by the suffix)."""
    from PIL import Image

    path = check_image_path(path, "path")
    picture = to_frame_grid(clips, padding, scale=scale)
    make_parent(path, "path")
    return atomic_write(path, Image.fromarray(picture).save)


def check_video_or_image_path(path: Union[str, Path], what: str = "path", mkdir: bool = False) -> Path:
    """``path`` as a Path if it names an .mp4 (and imageio-ffmpeg is installed:
    :func:`check_mp4_writer`) or a picture (:func:`~difflab.data.grids.check_image_path`, whose
    ValueError names ``what``; a GIF is a picture there). ``mkdir``: create its folder too, so a bad
    path or a missing package fails before any work."""
    shown = str(path)
    if shown == "" or Path(path).is_dir() or Path(path).suffix.lower() != ".mp4":
        return check_image_path(path, what, mkdir)
    check_mp4_writer()
    path = Path(path)
    if mkdir:
        make_parent(path, what)
    return path


def save_clips(clips: Clips, path: Union[str, Path], nrow: int = 8, fps: float = 4.0) -> Path:
    """The clips written by ``path``'s suffix: .gif (:func:`save_clips_gif`), .mp4
    (:func:`save_clips_mp4`), else a still picture of a clip a row (:func:`save_frame_grid`)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        return save_clips_gif(clips, path, nrow=nrow, fps=fps)
    if suffix == ".mp4":
        return save_clips_mp4(clips, path, nrow=nrow, fps=fps)
    return save_frame_grid(clips, path)
