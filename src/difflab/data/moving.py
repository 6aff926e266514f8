"""Moving digits: clips of one or two digits that move at constant velocity and bounce off the
canvas edges, made procedurally and deterministically per seed (after Moving MNIST, Srivastava
et al. 2015, "Unsupervised Learning of Video Representations using LSTMs").

    md = dl.data.moving_digits(1000, frames=8, canvas=16, digits=1, seed=0)   # sklearn's 8x8 digits
    md.clips        # float32 [N, T, 1, canvas, canvas] in [-1, 1]
    md.positions    # float64 [N, K, T, 2]: each digit's true top-left corner, (row, col), in pixels

The physics, per digit and per axis (rows and columns alike). A sprite of ``size`` pixels lies
inside the canvas when its top-left coordinate p is in [0, L], L = canvas - size. It starts at
p_0 uniform in [0, L] with velocity v (speed uniform in the speed range, direction uniform on
the circle) and moves by v each frame; when a step would take it past a wall it is mirrored
back and that velocity component flips (an elastic bounce):

    p <- p + v;   if p < 0: p <- -p, v <- -v;   if p > L: p <- 2L - p, v <- -v.

Unrolled, this is the fold of the straight path x_t = p_0 + v t into [0, L] (:func:`bounce`):

    p_t = L - | (x_t mod 2L) - L |,

a triangle wave of period 2L. The recorded ``positions`` are these exact, continuous p_t; the
sprite is drawn at the nearest whole pixel, floor(p_t + 1/2) (``pixel_positions``), so the
pixels show the true path to within half a pixel per axis and every drawn frame is exactly a
sprite pasted on the background: no resampling blurs the digit. Two digits overlap by the
pixelwise maximum, as in Moving MNIST. The speed is capped at L pixels a frame, so a digit
meets each wall at most once a step.

By name, ``dl.data.load("moving_digits", ...)`` gives the clips [N, T, C, H, W] with the digit's
class as the label of a one-digit clip (none for two digits), so a config can train on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from ..validation import is_int, is_real, positive_int
from . import digits as digits_data
from . import mnist as mnist_data

__all__ = ["MovingDigits", "moving_digits", "bounce", "SOURCES", "DEFAULT_CANVAS"]

# Where the sprites come from: sklearn's 8x8 digits (bundled, the CPU-sized set) or MNIST's
# 28x28 digits, read from the IDX files in a folder the caller names.
SOURCES = ("digits", "mnist")
# The canvas when none is given: twice the 8x8 sprite; Moving MNIST's 64 for 28x28 digits.
DEFAULT_CANVAS = {"digits": 16, "mnist": 64}
BACKGROUND = -1.0  # the value of an empty pixel, as in every data set here


@dataclass(frozen=True)
class MovingDigits:
    """The clips and what made them (N clips, K digits a clip, T frames, S-pixel sprites).

    - ``clips``: float32 [N, T, 1, H, W] in [-1, 1], H = W = ``canvas``, background -1;
    - ``labels``: long [N, K], each digit's class;
    - ``positions``: float64 [N, K, T, 2], each digit's true top-left corner in pixels, (row,
      col) with row 0 at the top and col 0 at the left, in [0, canvas - S];
    - ``velocities``: float64 [N, K, 2], each digit's velocity (row, col) in pixels a frame
      from frame 0 to 1 (a bounce flips a component after that);
    - ``indices``: long [N, K], each sprite's index in the source set;
    - ``sprite_size`` S and ``canvas``.
    """

    clips: Tensor
    labels: Tensor
    positions: Tensor
    velocities: Tensor
    indices: Tensor
    sprite_size: int
    canvas: int

    @property
    def pixel_positions(self) -> Tensor:
        """long [N, K, T, 2]: where each sprite's top-left pixel is drawn, floor(p + 1/2)."""
        return torch.floor(self.positions + 0.5).long()


def bounce(x: Tensor, span: float) -> Tensor:
    """The straight path ``x`` folded into [0, span] by reflections at 0 and ``span``:
    span - |(x mod 2 span) - span|, the position of a point bouncing elastically between two
    walls, whatever the number of bounces. ``span`` > 0."""
    return span - (torch.remainder(x, 2 * span) - span).abs()


def moving_digits(
    n: int,
    frames: int = 8,
    canvas: Optional[int] = None,
    digits: int = 1,
    speed: Union[float, tuple[float, float]] = (0.5, 1.5),
    source: str = "digits",
    root: Optional[Union[str, Path]] = None,
    split: str = "t10k",
    seed: int = 0,
) -> MovingDigits:
    """``n`` clips of ``frames`` frames on a ``canvas`` x ``canvas`` canvas, each with ``digits``
    (1 or 2) digits moving at a speed uniform in ``speed = (low, high)`` pixels a frame (a single
    number: that speed) in a direction uniform on the circle, bouncing off the edges (the
    module's docstring gives the law).

    ``source``: "digits" (sklearn's 8x8 digits, no download) or "mnist" (28x28, MNIST's
    ``split`` from the IDX folder ``root``); ``canvas`` defaults to 16 and 64 for them.
    Deterministic per ``seed``: each clip's random draws are the next 5 uniforms per digit of one
    stream, so the first clips are the same whatever ``n``.
    """
    n = positive_int("n (the number of clips)", n)
    frames = _check_frames(frames)
    sprites, labels = _sprites(source, root, split)
    size = sprites.shape[-1]
    canvas = _check_canvas(DEFAULT_CANVAS[source] if canvas is None else canvas, size, source)
    if not is_int(digits) or digits not in (1, 2):
        raise ValueError(f"digits (the digits in each clip) must be 1 or 2, got {digits!r}")
    span = canvas - size  # L: the top-left corner lies in [0, L] on each axis
    low, high = _check_speed(speed, span, canvas, size)
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")

    K = int(digits)
    # One stream of uniforms, drawn in C order [n, K, 5] (serially on the CPU), so clip i's draws
    # do not depend on n: sprite, start row, start col, speed, direction.
    u = torch.rand(n, K, 5, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    indices = (u[..., 0] * len(sprites)).long().clamp_(max=len(sprites) - 1)
    start = u[..., 1:3] * span
    magnitude = low + u[..., 3] * (high - low)
    angle = 2 * math.pi * u[..., 4]
    velocities = torch.stack([magnitude * torch.sin(angle), magnitude * torch.cos(angle)], -1)  # (row, col)
    t = torch.arange(frames, dtype=torch.float64)
    positions = bounce(start[:, :, None, :] + velocities[:, :, None, :] * t[:, None], float(span))
    clips = _render(sprites[indices], torch.floor(positions + 0.5).long(), canvas)  # = pixel_positions
    return MovingDigits(clips, labels[indices], positions, velocities, indices, size, canvas)


def _render(sprites: Tensor, corners: Tensor, canvas: int) -> Tensor:
    """Clips [N, T, 1, H, W]: each sprite [N, K, S, S] pasted with its top-left at ``corners``
    [N, K, T, 2] on a background canvas; overlapping digits combine by the pixelwise maximum."""
    N, K, T, _ = corners.shape
    S = sprites.shape[-1]
    out = torch.full((N, T, canvas, canvas), BACKGROUND)
    offsets = torch.arange(S)
    n_idx = torch.arange(N)[:, None, None, None]
    t_idx = torch.arange(T)[None, :, None, None]
    for k in range(K):  # within one digit, the pasted windows of different (clip, frame) never meet
        rows = corners[:, k, :, 0, None, None] + offsets[:, None]  # [N, T, S, 1]
        cols = corners[:, k, :, 1, None, None] + offsets[None, :]  # [N, T, 1, S]
        window = out[n_idx, t_idx, rows, cols]
        out[n_idx, t_idx, rows, cols] = torch.maximum(window, sprites[:, k, None])
    return out.unsqueeze(2)


def _sprites(source, root, split) -> tuple[Tensor, Tensor]:
    """The source set's digits [M, S, S] in [-1, 1] and labels [M]."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r} "
                         "('digits': sklearn's 8x8 digits, no download; 'mnist': 28x28, with root=)")
    if source == "digits":
        if root is not None:
            raise ValueError(f"root={str(root)!r} names an MNIST folder, but source='digits' reads sklearn's "
                             "bundled digits; drop root, or pass source='mnist'")
        images, labels = digits_data.load()
    else:
        if root is None:
            raise ValueError("source='mnist' needs root=, the folder holding MNIST's IDX files "
                             "(e.g. root='../shared/data/mnist'), or use source='digits'")
        images, labels = mnist_data.load(root, split=split)
    return images[:, 0], labels


def _check_frames(frames) -> int:
    if not is_int(frames) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2 (a clip of one frame shows no motion), got {frames!r}")
    return int(frames)


def _check_canvas(canvas, size: int, source: str) -> int:
    if not is_int(canvas) or canvas <= size:
        raise ValueError(
            f"canvas must be an integer larger than the {size}x{size} sprites of source={source!r}, so that "
            f"a digit has room to move, got {canvas!r}; e.g. canvas={DEFAULT_CANVAS[source]}"
        )
    return int(canvas)


def _check_speed(speed, span: int, canvas: int, size: int) -> tuple[float, float]:
    pair = (speed, speed) if is_real(speed) else speed
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(is_real(s) for s in pair)
            or not all(math.isfinite(s) for s in pair)):
        raise ValueError(f"speed must be a number or a pair (low, high) of pixels a frame, e.g. speed=(0.5, 1.5); "
                         f"got {speed!r}")
    low, high = float(pair[0]), float(pair[1])
    if low < 0:
        raise ValueError(f"speed = {speed!r}: a speed is a magnitude, >= 0 (the direction is drawn apart); "
                         f"e.g. speed=(0.5, 1.5)")
    if low > high:
        raise ValueError(f"speed = {speed!r} is reversed: give (low, high) with low <= high, i.e. speed={(high, low)}")
    if high > span:
        raise ValueError(
            f"speed = {speed!r}: at most canvas - sprite size = {canvas} - {size} = {span} pixels a frame, so "
            f"that a digit meets a wall at most once a step; lower the speed or enlarge the canvas"
        )
    return low, high
