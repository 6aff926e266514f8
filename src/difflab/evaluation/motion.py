"""Motion in clips, measured back from the pixels: the centre of mass of each frame's ink, and how
well that track fits a digit moving at constant velocity and bouncing off the canvas edges (the
physics of :mod:`difflab.data.moving`). It judges generated clips against real ones:

    track = centre_of_mass(clips)                                   # [N, T, 2], (row, col)
    fit = fit_bouncing_path(track, canvas=16, size=8, max_speed=1.5)
    fit.residual.median()                                           # pixels; real clips about 0.35

The model, per clip and per axis (rows and columns alike): a sprite of ``size`` pixels whose ink
has its centre of mass ``o`` pixels from its top-left corner, on a canvas of ``canvas`` pixels,
moves with its corner on the bouncing path of :func:`difflab.data.moving.bounce`, L = canvas - size:

    y_t = o + bounce(a + v t, L),   o in [0, size - 1],  a in [0, L],  |v| <= max_speed <= L.

Three parameters an axis; a in [0, L] and |v| <= L lose nothing (bounce is even and 2L-periodic, so
(a, v) and (2L - a, -v) give the same path, and at whole frames a speed v + 2L gives the same
positions as v). They are fitted by least squares. For a fixed (a, v) the best offset is the mean
of y_t - bounce(a + v t, L), clamped to [0, size - 1]. For a fixed bounce pattern (which segment of
the fold each frame lies on) the model is linear in (o, a, v), so each pattern's least-squares
solution is a candidate, exact for a clean track (tested to 1e-9 pixel); a coarse 33 x 33 grid
over (a, v) adds candidates for noisy ones, and the best is polished on nine finer 9 x 9 grids,
each a quarter of the step of the one before. The residual of a clip is the root mean square over
its frames of the distance (in pixels) between its track and the fitted path.

Real clips draw a digit at the nearest whole pixel to its true path, so their tracks lie within half
a pixel of it per axis and their residual is at most sqrt(1/2) pixel (median about 0.35); a track
of frames in a random order does not fit. One digit a clip: with two, a frame's centre of mass is
their ink-weighted mean, which does not bounce off the walls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from ..data.moving import bounce
from ..validation import is_int, is_real

__all__ = ["centre_of_mass", "BouncingFit", "fit_bouncing_path", "motion_residual", "INK_LEVEL"]

# Ink is what lies above this level: a tenth of the way from the background (-1) to full ink (1),
# so that a generated clip's faint background noise does not pull its centre toward the middle.
INK_LEVEL = -0.8
_COARSE = 33  # the coarse grid over (a, v), each axis
_FINE = 9  # each finer grid, each axis
_LEVELS = 9  # finer grids; the step shrinks 4x each


def centre_of_mass(clips: Tensor, level: float = INK_LEVEL) -> Tensor:
    """float64 [N, T, 2]: each frame's centre of mass (row, col) in pixels (pixel (i, j) at (i, j),
    row 0 at the top), weighting each pixel by its ink max(0, x - level), x its mean over channels.

    ``clips``: [N, T, C, H, W] in [-1, 1]. A frame without ink gets NaN.
    """
    if not isinstance(clips, Tensor) or clips.ndim != 5 or not clips.is_floating_point():
        got = f"{clips.dtype} {tuple(clips.shape)}" if isinstance(clips, Tensor) else type(clips).__name__
        raise ValueError(f"clips must be a float tensor [N, T, C, H, W] in [-1, 1], got {got}")
    if not is_real(level) or not -1 <= level < 1:
        raise ValueError(f"level (the ink threshold) must lie in [-1, 1), got {level!r}")
    ink = (clips.detach().double().mean(2) - level).clamp(min=0)  # [N, T, H, W]
    H, W = ink.shape[-2:]
    mass = ink.sum((-2, -1))
    rows = (ink.sum(-1) * torch.arange(H, dtype=torch.float64, device=ink.device)).sum(-1)
    cols = (ink.sum(-2) * torch.arange(W, dtype=torch.float64, device=ink.device)).sum(-1)
    track = torch.stack([rows, cols], -1) / mass[..., None]
    return torch.where(mass[..., None] > 0, track, torch.full_like(track, math.nan)).cpu()


@dataclass(frozen=True)
class BouncingFit:
    """The least-squares bouncing path of each track (N clips, T frames; pairs are (row, col)):

    - ``path``: float64 [N, T, 2], the fitted o + bounce(a + v t, L);
    - ``start``: [N, 2], a (the corner at frame 0); ``velocity``: [N, 2], v, pixels a frame;
    - ``offset``: [N, 2], o (the ink's centre from the corner);
    - ``residual``: [N], RMS over frames of the track's distance to ``path``, in pixels; inf for a
      track with a missing (NaN) frame, so that it counts as a failure in a median.
    """

    path: Tensor
    start: Tensor
    velocity: Tensor
    offset: Tensor
    residual: Tensor


def fit_bouncing_path(track: Tensor, canvas: int, size: int, max_speed: Optional[float] = None) -> BouncingFit:
    """Fit a constant-velocity path with bounces (the module's model) to each ``track`` [N, T, 2]
    (row, col, e.g. :func:`centre_of_mass`) of a ``size``-pixel digit on a ``canvas``-pixel square
    canvas; each velocity component at most ``max_speed`` pixels a frame (default and cap
    L = canvas - size). T >= 4: with three parameters an axis, three frames fit any motion.
    """
    track = _check_track(track)
    if not is_int(canvas) or not is_int(size) or size < 1 or canvas <= size:
        raise ValueError(f"canvas and size must be integers with canvas > size >= 1 (the canvas and the digit's "
                         f"sprite, in pixels, e.g. canvas=16, size=8), got canvas={canvas!r}, size={size!r}")
    span = float(canvas - size)
    if max_speed is None:
        max_speed = span
    if not is_real(max_speed) or not 0 <= max_speed or not math.isfinite(max_speed):
        raise ValueError(f"max_speed must be a number >= 0 of pixels a frame (e.g. the data's top speed), "
                         f"got {max_speed!r}")
    vmax = min(float(max_speed), span)
    N, T, _ = track.shape
    finite = torch.isfinite(track).all(-1).all(-1)
    y = torch.nan_to_num(track, nan=0.0, posinf=0.0, neginf=0.0).transpose(1, 2).reshape(2 * N, T)
    a, v, o, r2 = [], [], [], []
    for chunk in y.split(128):
        fit = _fit_axes(chunk, span, float(size - 1), vmax)
        for out, part in zip((a, v, o, r2), fit):
            out.append(part)
    a, v, o, r2 = (torch.cat(p).reshape(N, 2) for p in (a, v, o, r2))
    t = torch.arange(T, dtype=torch.float64)
    path = o[:, None, :] + bounce(a[:, None, :] + v[:, None, :] * t[:, None], span)
    residual = torch.where(finite, r2.sum(-1).sqrt(), torch.full((N,), math.inf, dtype=torch.float64))
    nan = torch.full_like(a, math.nan)
    keep = finite[:, None]
    return BouncingFit(
        path=torch.where(keep[..., None], path, math.nan), start=torch.where(keep, a, nan),
        velocity=torch.where(keep, v, nan), offset=torch.where(keep, o, nan), residual=residual,
    )


def motion_residual(clips: Tensor, size: int, max_speed: Optional[float] = None,
                    level: float = INK_LEVEL) -> Tensor:
    """float64 [N]: each clip's residual (pixels) against a bouncing path of a ``size``-pixel digit:
    :func:`fit_bouncing_path` of :func:`centre_of_mass`, the canvas read from the clips."""
    track = centre_of_mass(clips, level)
    H, W = clips.shape[-2:]
    if H != W:
        raise ValueError(f"the bouncing-path fit takes square canvases, got frames of {H} x {W} pixels")
    return fit_bouncing_path(track, H, size, max_speed).residual


def _check_track(track) -> Tensor:
    if not isinstance(track, Tensor) or track.ndim != 3 or track.shape[-1] != 2 or track.is_complex():
        got = f"{track.dtype} {tuple(track.shape)}" if isinstance(track, Tensor) else type(track).__name__
        raise ValueError(f"track must be a tensor [N, T, 2] of (row, col) positions, got {got}")
    if track.shape[1] < 4:
        raise ValueError(f"track has {track.shape[1]} frames; a constant-velocity path with bounces has three "
                         "parameters an axis, so three frames fit any motion: give clips of 4 or more frames")
    return track.detach().double().cpu()


@lru_cache(maxsize=16)
def _segment_patterns(span: float, vmax: float, T: int) -> tuple[Tensor, Tensor]:
    """The least-squares solver of each bounce pattern: (pinv [P, 3, T], c [P, T]).

    On the straight path x_t = a + v t, frame t lies on segment j_t = floor(x_t / L) of the fold,
    where bounce(x) = s_t x + c_t with s_t = (-1)^j_t and c_t = -L j_t (j even) or L (j_t + 1)
    (j odd); so for a fixed pattern j, y_t = o + s_t a + s_t t v + c_t is linear in (o, a, v).
    The patterns reachable with a in [0, L], |v| <= vmax are read off a 513 x 513 grid."""
    a = torch.linspace(0, span, 513, dtype=torch.float64)
    v = torch.linspace(-vmax, vmax, 513, dtype=torch.float64)
    t = torch.arange(T, dtype=torch.float64)
    j = torch.unique(torch.floor((a[:, None, None] + v[None, :, None] * t) / span).reshape(-1, T), dim=0)
    s = 1 - 2 * torch.remainder(j, 2)
    c = torch.where(s > 0, -span * j, span * (j + 1))
    design = torch.stack([torch.ones_like(s), s, s * t], -1)  # [P, T, 3]: the columns of o, a, v
    return torch.linalg.pinv(design), c


def _fit_axes(y: Tensor, span: float, max_offset: float, vmax: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Least-squares (a, v, o) and the mean squared residual of each 1-D track y [B, T] under
    y_t = o + bounce(a + v t, span), o in [0, max_offset], a in [0, span], |v| <= vmax.

    Candidates: each bounce pattern's linear least-squares solution (exact when it lies inside
    the bounds and its own pattern, as it does for a clean track) and a coarse grid over (a, v);
    the best is then polished on finer grids. Every candidate is scored with the model itself,
    its o the mean of y_t - bounce(a + v t) clamped to the bounds (the least-squares o there)."""
    B, T = y.shape
    t = torch.arange(T, dtype=torch.float64)

    def best(a: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # candidates [B, G] each
        d = y[:, None, :] - bounce(a[..., None] + v[..., None] * t, span)  # [B, G, T]
        o = d.mean(-1).clamp(0.0, max_offset)
        r2 = (d - o[..., None]).square().mean(-1)
        i = r2.argmin(1, keepdim=True)
        return a.gather(1, i)[:, 0], v.gather(1, i)[:, 0], o.gather(1, i)[:, 0], r2.gather(1, i)[:, 0]

    def grid(a: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:  # all pairs of a [B, Ga] and v [B, Gv]
        Ga, Gv = a.shape[1], v.shape[1]
        return a[:, :, None].expand(B, Ga, Gv).reshape(B, -1), v[:, None, :].expand(B, Ga, Gv).reshape(B, -1)

    pinv, c = _segment_patterns(span, vmax, T)
    theta = torch.einsum("pkt,bpt->bpk", pinv, y[:, None, :] - c)  # [B, P, (o, a, v)]
    v_ls = theta[..., 2].clamp(-vmax, vmax)
    a_ls = torch.remainder(theta[..., 1], 2 * span)  # bounce is 2L-periodic and even: (a, v) ~ (2L - a, -v)
    mirror = a_ls > span
    a_ls, v_ls = torch.where(mirror, 2 * span - a_ls, a_ls), torch.where(mirror, -v_ls, v_ls)
    a_grid, v_grid = grid(torch.linspace(0, span, _COARSE, dtype=torch.float64).expand(B, -1),
                          torch.linspace(-vmax, vmax, _COARSE, dtype=torch.float64).expand(B, -1))
    a, v, o, r2 = best(torch.cat([a_ls, a_grid], 1), torch.cat([v_ls, v_grid], 1))
    step_a, step_v = span / (_COARSE - 1), 2 * vmax / (_COARSE - 1)
    unit = torch.linspace(-1, 1, _FINE, dtype=torch.float64)
    for _ in range(_LEVELS):  # each grid spans +-1 step of the last, so its step is a quarter of it
        a, v, o, r2 = best(*grid((a[:, None] + step_a * unit).clamp(0, span),
                                 (v[:, None] + step_v * unit).clamp(-vmax, vmax)))
        step_a, step_v = step_a / 4, step_v / 4
    return a, v, o, r2
