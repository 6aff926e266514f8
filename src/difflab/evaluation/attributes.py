"""Captioned digits' attributes measured back from pixels: position, stroke and size of digits
on a canvas (``difflab.data.captioned``), whoever drew them. It judges samples of a
text-conditioned model by measurements that involve no model. Ink is (x + 1) / 2 on its
support, the pixels above 1/4 that touch another (:func:`ink`: a sample's faint background and
lone specks are not ink). Thresholds come from the layout alone (:func:`thresholds`):

- **position**: the ink's centre of mass (pixel i covering [i, i + 1)), assigned to the nearest
  of the anchors C/4, C/2, 3C/4 in each axis: the row and column boundaries sit at 3C/8, 5C/8.
- **stroke**: the mean stroke width w = A / (P / 2), the ink's mass A over half the length P of
  its boundary (:func:`stroke_width`): a stroke of width w and length L has A = w L and
  P ~ 2 L. No class is needed (the issue's "ink mass against the class median" would): bold
  when w is above sqrt(w_thin w_bold), the geometric mean of the layout's two pens. (A pen
  narrower than a pixel draws a grey line, whose smaller mass lowers w further.)
- **size**: the skeleton's extent, e - w: the digit's extent e (the larger over the two axes of
  the spread between the 1% and 99% quantiles of the ink's marginal, robust to stray pixels)
  less the pen's width w, which a round pen adds to the skeleton's (w / 2 at each end); large
  when above sqrt(extent_small extent_large), the geometric mean of the layout's two sizes.

docs/text.md gives the accuracy of each measurement on the data itself.

    m = measure_attributes(samples, layout=ds.layout)  # {"position": codes, "stroke": ..., ...}
    attribute_accuracy(samples, {"position": wanted_codes, ...}, layout=ds.layout)
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

from ..data.captioned import ATTRIBUTES, LAYOUTS, Layout, neighbour_codes

__all__ = ["ink", "centre_of_mass", "stroke_width", "extent", "thresholds", "measure_attributes",
           "attribute_accuracy", "EXTENT_QUANTILE", "SUPPORT_LEVEL"]

# The extent runs between the EXTENT_QUANTILE and 1 - EXTENT_QUANTILE quantiles of the ink.
EXTENT_QUANTILE = 0.01
# Pixels with more ink than this (and touching another) are the ink's support: high above a
# sample's background noise, low enough to keep a thin pen's grey one-pixel line whole.
SUPPORT_LEVEL = 0.25


def ink(images: Tensor) -> Tensor:
    """The ink [N, H, W] in [0, 1] of images [N, 1, H, W] in [-1, 1] that the measurements read:
    (x + 1) / 2, clamped, on its support only, the pixels above ``SUPPORT_LEVEL`` that touch
    another such pixel (8-neighbours). The level drops a sample's faint background noise (which,
    spread over the canvas, would pull the centre of mass to the middle), and the touching
    drops isolated specks; a digit's own ink is all connected."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 1:
        got = f"shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, 1, H, W] in [-1, 1] (one channel), got {got}")
    m = ((images.detach().float().cpu().nan_to_num(-1.0) + 1) / 2).clamp(0, 1)[:, 0]
    above = m > SUPPORT_LEVEL
    return m * (above & (neighbour_codes(above) > 0))


def centre_of_mass(images: Tensor) -> Tensor:
    """The ink's centre of mass [N, 2] as (y, x) in pixels (pixel i covers [i, i + 1)); NaN for
    an image without ink."""
    m = ink(images)
    centres = torch.arange(m.shape[-1], dtype=torch.float32) + 0.5
    rows = torch.arange(m.shape[-2], dtype=torch.float32) + 0.5
    mass = m.sum((1, 2))
    y = (m.sum(2) * rows).sum(1) / mass
    x = (m.sum(1) * centres).sum(1) / mass
    return torch.stack([y, x], 1)


def stroke_width(images: Tensor) -> Tensor:
    """The mean stroke width [N] in pixels: ink mass / (half the length of the ink's boundary).
    The boundary's length is pi / 4 times its count of pixel edges: a curve's edge count is
    |dx| + |dy| summed along it, 4 / pi times its length on average over directions."""
    m = ink(images)
    support = torch.nn.functional.pad((m > 0).float(), (1, 1, 1, 1))  # the canvas's edge is background
    edges = (support[:, 1:] - support[:, :-1]).abs().sum((1, 2)) \
        + (support[:, :, 1:] - support[:, :, :-1]).abs().sum((1, 2))
    perimeter = math.pi / 4 * edges
    return m.sum((1, 2)) / (perimeter / 2)


def _spread(marginal: Tensor, q: float) -> Tensor:
    """The distance between the q and 1 - q quantiles of each row of ``marginal`` [N, K] (a mass
    over pixels 0..K-1, pixel i covering [i, i + 1), spread uniformly within it)."""
    cdf = marginal.cumsum(1) / marginal.sum(1, keepdim=True)

    def quantile(p: float) -> Tensor:
        i = (cdf < p).sum(1).clamp_max(cdf.shape[1] - 1)  # the pixel where the cdf reaches p
        previous = cdf.gather(1, (i - 1).clamp_min(0)[:, None])[:, 0]
        before = torch.where(i > 0, previous, torch.zeros(len(cdf)))
        at = cdf.gather(1, i[:, None])[:, 0]
        return i + (p - before) / (at - before).clamp_min(1e-12)

    return quantile(1 - q) - quantile(q)


def extent(images: Tensor, q: float = EXTENT_QUANTILE) -> Tensor:
    """The digit's extent [N] in pixels: the larger over rows and columns of the spread between
    the q and 1 - q quantiles of the ink's marginal."""
    m = ink(images)
    return torch.maximum(_spread(m.sum(2), q), _spread(m.sum(1), q))


def _layout(layout: Union[Layout, str, None], images: Tensor) -> Layout:
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            names = ", ".join(map(repr, LAYOUTS))
            raise ValueError(f"layout must be a Layout or one of {names}, got {layout!r}")
        return LAYOUTS[layout]
    if layout is not None:
        raise ValueError(
            f"layout must be a Layout (a data set's .layout), a source name or None, got {layout!r}"
        )
    size = images.shape[-1]
    matches = [lay for lay in LAYOUTS.values() if lay.canvas == size]
    if len(matches) != 1:
        defaults = ", ".join(f"{k}: {v.canvas}x{v.canvas}" for k, v in LAYOUTS.items())
        raise ValueError(
            f"no default layout for {size}x{size} images (the defaults are {defaults}): "
            "pass layout=<the data set's .layout>"
        )
    return matches[0]


def thresholds(layout: Layout) -> dict[str, object]:
    """The boundaries the measurements are compared with, from the layout alone: "position" (the
    row and column boundaries 3C/8, 5C/8), "stroke" (the width sqrt(w_thin w_bold)) and "size"
    (the skeleton's extent sqrt(extent_small extent_large))."""
    C = layout.canvas
    return {
        "position": (3 * C / 8, 5 * C / 8),
        "stroke": math.sqrt(layout.widths[0] * layout.widths[1]),
        "size": math.sqrt(layout.extents[0] * layout.extents[1]),
    }


def measure_attributes(images: Tensor, layout: Union[Layout, str, None] = None) -> dict[str, Tensor]:
    """Position, stroke and size codes [N] (indices into ``difflab.data.captioned.ATTRIBUTES``) of
    digits on a canvas, read from the pixels, with the measurements behind them in pixels:
    "centre" [N, 2] (y, x), "width" [N] (the stroke's) and "extent" [N] (the ink's; size reads
    extent - width). An image without ink gets code -1 throughout.

    ``layout``: the data set's ``.layout``, a source name ("digits", "mnist"), or None to take
    the default layout whose canvas has the images' size.
    """
    lay = _layout(layout, images)
    if images.shape[-2:] != (lay.canvas, lay.canvas):
        raise ValueError(
            f"images are {tuple(images.shape[-2:])} but the layout's canvas is {lay.canvas}x{lay.canvas}: "
            "pass the layout of the data set the images imitate"
        )
    t = thresholds(lay)
    centre = centre_of_mass(images)
    low, high = t["position"]
    row = (centre[:, 0] >= low).long() + (centre[:, 0] >= high).long()
    col = (centre[:, 1] >= low).long() + (centre[:, 1] >= high).long()
    width, spread = stroke_width(images), extent(images)
    empty = ink(images).sum((1, 2)) == 0
    codes = {
        "position": 3 * row + col,
        "stroke": (width >= t["stroke"]).long(),
        "size": (spread - width >= t["size"]).long(),
    }
    for name in codes:
        codes[name][empty] = -1
    return {**codes, "centre": centre, "width": width, "extent": spread}


def attribute_accuracy(images: Tensor, wanted: dict[str, Tensor],
                       layout: Union[Layout, str, None] = None) -> dict[str, float]:
    """The fraction of images whose measured attribute equals the wanted code, for each attribute
    in ``wanted`` ({name: long codes [N]}, e.g. a data set's ``.attributes``, or the codes its
    prompts asked for)."""
    unknown = sorted(set(wanted) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"wanted names attributes {unknown}; the measurable ones are {tuple(ATTRIBUTES)}")
    measured = measure_attributes(images, layout)
    out = {}
    for name, codes in wanted.items():
        codes = torch.as_tensor(codes)
        if codes.shape != (len(images),):
            raise ValueError(
                f"wanted[{name!r}] must hold one code per image, shape ({len(images)},), "
                f"got {tuple(codes.shape)}"
            )
        out[name] = (measured[name] == codes.long().cpu()).float().mean().item()
    return out
