"""Captioned digits: handwritten digits drawn on a larger canvas with attributes that can be
measured back from the pixels, and captions from a small grammar with synonyms.

    ds = dl.data.captioned.captioned_digits(source="digits", seed=0)   # 16x16, CPU-sized
    ds.images [N, 1, 16, 16] in [-1, 1], ds.digits [N], ds.attributes["stroke"] [N], ds.captions[i]
    "a small bold 7 on the left", "seven, thin strokes, top right", ...

Each example is one source digit (scikit-learn's 8x8 digits, or MNIST from a folder) redrawn
with three attributes drawn uniformly at random. Writers' pens differ by a factor of about 3 in
width (MNIST: 1.5 to 5 pixels) and their digits in size, so a dilation or erosion of the
writer's own stroke would leave bold and thin overlapping: the digit is first reduced to its
skeleton (thresholded at a working resolution, thinned by Zhang and Suen's algorithm,
:func:`skeletonize`), and the skeleton redrawn (:func:`render`) with

- **position**, one of nine regions: the skeleton's centre of mass goes on the anchor
  (C/4, C/2, 3C/4) of a C x C canvas in each axis (top / middle / bottom by left / centre /
  right). Anchors are C/4 apart, so a centre of mass read back from pixels names the region
  with a margin of C/8 on each side (2 pixels on the 16x16 canvas, 6 on the 48x48).
- **stroke**, thin or bold: the skeleton dilated by a round pen of a fixed width in canvas
  pixels (``Layout.widths``); mean stroke width = ink area / half its boundary reads it back.
- **size**, small or large: the skeleton scaled so that its larger side spans
  ``Layout.extents`` canvas pixels; the ink then spans that plus the pen's width.

Captions (:func:`caption`) name every attribute that varies, in one of five word orders, with
numerals or number words and synonyms for each value; :func:`parse_caption` reads any of them
back. Held-out (digit, attribute, value) combinations (``DEFAULT_HELD_OUT``: "bold 7", "4 on
the right", ...) never occur in ``split="train"``; ``split="held_out"`` is made of exactly
those, for compositional tests (every digit and every value is seen in training, only not
together).

Everything is deterministic given ``seed``: the same call returns the same tensors and strings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..validation import is_int, is_real, positive_int
from . import digits as digits_source
from . import mnist as mnist_source

__all__ = [
    "POSITIONS", "STROKES", "SIZES", "ATTRIBUTES", "DIGIT_WORDS", "DEFAULT_HELD_OUT", "SOURCES", "SPLITS",
    "Layout", "LAYOUTS", "layout_for", "CaptionedDigits", "captioned_digits", "render", "skeletonize",
    "caption", "parse_caption", "held_out_mask", "ink_skeletons", "neighbour_codes", "FIXED",
]

# ----------------------------------------------------------------------------- the attributes
# Position names in reading order: row (top, middle, bottom) by column (left, centre, right);
# code = 3 * row + column.
POSITIONS = ("top left", "top", "top right", "left", "centre", "right",
             "bottom left", "bottom", "bottom right")
STROKES = ("thin", "bold")
SIZES = ("small", "large")
ATTRIBUTES = {"position": POSITIONS, "stroke": STROKES, "size": SIZES}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SOURCES = ("digits", "mnist")
SPLITS = ("train", "held_out")

# (digit, attribute, value) combinations kept out of split="train": each digit and each value
# is still seen in training (7 thin, 4 on the left, bold 3, ...), only not together.
DEFAULT_HELD_OUT = (
    (7, "stroke", "bold"),
    (2, "stroke", "thin"),
    (4, "position", "right"),
    (9, "position", "top left"),
    (5, "size", "small"),
)


@dataclass(frozen=True)
class Layout:
    """Where and how digits are drawn on a ``canvas`` x ``canvas`` image, all lengths in canvas
    pixels: each digit's skeleton spans ``extents[size]`` (its larger side) and is drawn with a
    round pen ``widths[stroke]`` wide, at ``supersample`` x the canvas's resolution then averaged
    down (exact area antialiasing). Source digits are thinned at ``working`` x ``working``."""

    canvas: int
    extents: tuple[float, float]  # (small, large): the skeleton's larger side
    widths: tuple[float, float]  # (thin, bold): the pen's diameter
    working: int
    supersample: int

    @property
    def anchors(self) -> tuple[float, float, float]:
        """The centres of mass of the three rows (and columns): C/4, C/2, 3C/4, in pixel units
        where pixel i covers [i, i + 1)."""
        C = self.canvas
        return (C / 4, C / 2, 3 * C / 4)

    @property
    def regular_width(self) -> float:
        """The pen of digits whose stroke does not vary: the geometric mean of thin and bold."""
        return math.sqrt(self.widths[0] * self.widths[1])


# The two sources' layouts. scikit-learn's 8x8 digits on a 16x16 canvas, anchors 4 pixels apart:
# skeletons of 6.5 (large; 8.75 with a bold pen, the 8x8 source's own size) or 4.5 pixels, pens
# of 0.75 (a grey one-pixel line) and 2.25 pixels, which keep an 8-pixel digit's holes open.
# MNIST on a 48x48 canvas (divisible by 16 for a U-Net, by 8 for an f=8 autoencoder), anchors 12
# pixels apart: skeletons of 18 (large, about MNIST's own 20-pixel digits once drawn) or 11
# pixels, pens of 1.5 and 4 pixels, either side of MNIST's own 2 to 3. docs/text.md measures how
# well each attribute reads back from the pixels.
LAYOUTS = {
    "digits": Layout(canvas=16, extents=(4.5, 6.5), widths=(0.75, 2.25), working=32, supersample=4),
    "mnist": Layout(canvas=48, extents=(11.0, 18.0), widths=(1.5, 4.0), working=56, supersample=2),
}


def layout_for(source: str, canvas: Optional[int] = None) -> Layout:
    """The source's layout, scaled to ``canvas`` pixels when given (extents and pens in proportion)."""
    if source not in LAYOUTS:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    base = LAYOUTS[source]
    if canvas is None or (is_int(canvas) and canvas == base.canvas):
        return base
    if not is_int(canvas) or canvas < base.canvas:
        raise ValueError(
            f"canvas must be an integer of at least {base.canvas} for source={source!r} (the smallest "
            f"canvas on which its digits stay legible and its attributes measurable), got {canvas!r}"
        )
    scale = canvas / base.canvas
    return Layout(
        canvas=int(canvas),
        extents=(base.extents[0] * scale, base.extents[1] * scale),
        widths=(base.widths[0] * scale, base.widths[1] * scale),
        working=base.working,
        supersample=base.supersample,
    )


# ----------------------------------------------------------------------------- the skeleton
def neighbour_codes(mask: Tensor) -> Tensor:
    """For a bool mask [N, H, W], each pixel's 8 neighbours as the bits of a uint8: bit k - 2 is
    Zhang and Suen's P_k, clockwise from north (P2 = N, P3 = NE, ..., P9 = NW); outside the
    image counts as background."""
    p = F.pad(mask.to(torch.uint8), (1, 1, 1, 1))
    H, W = mask.shape[-2:]
    # (dy, dx) of P2..P9
    offsets = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))
    code = torch.zeros(mask.shape, dtype=torch.uint8)
    for bit, (dy, dx) in enumerate(offsets):
        code |= p[:, 1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] << bit
    return code


def _zhang_suen_tables() -> tuple[Tensor, Tensor]:
    """Which neighbourhoods (codes 0..255) let a pixel be deleted in Zhang and Suen's first and
    second sub-iteration: 2 <= B <= 6 neighbours, A = 1 background-to-ink transition around
    P2, P3, ..., P9, P2, and (first) P2 P4 P6 = P4 P6 P8 = 0, (second) P2 P4 P8 = P2 P6 P8 = 0."""
    first, second = torch.zeros(256, dtype=torch.bool), torch.zeros(256, dtype=torch.bool)
    for code in range(256):
        P = {k: (code >> (k - 2)) & 1 for k in range(2, 10)}
        ring = [P[k] for k in range(2, 10)] + [P[2]]
        B = sum(ring[:-1])
        A = sum(1 for a, b in zip(ring, ring[1:]) if a == 0 and b == 1)
        if 2 <= B <= 6 and A == 1:
            first[code] = P[2] * P[4] * P[6] == 0 and P[4] * P[6] * P[8] == 0
            second[code] = P[2] * P[4] * P[8] == 0 and P[2] * P[6] * P[8] == 0
    return first, second


_DELETABLE = _zhang_suen_tables()


def skeletonize(mask: Tensor) -> Tensor:
    """The skeleton of a bool mask [..., H, W]: Zhang and Suen's parallel thinning (Comm. ACM 27,
    1984), which peels deletable boundary pixels (those whose removal keeps the shape connected
    and does not shorten a stroke's end) in two alternating sub-iterations until none is left,
    leaving curves about one pixel wide along the strokes' middles. Each image stops as soon as
    a full iteration deletes nothing (a stroke w pixels wide takes about w / 2)."""
    if not isinstance(mask, Tensor) or mask.ndim < 2:
        got = f"a tensor of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor [..., H, W], got {got}")
    shape = mask.shape
    m = (mask != 0).reshape(-1, *shape[-2:]).clone()
    active = torch.arange(len(m))
    while len(active):
        part = m[active]
        changed = torch.zeros(len(active), dtype=torch.bool)
        for table in _DELETABLE:
            delete = part & table[neighbour_codes(part).long()]
            changed |= delete.flatten(1).any(1)
            part &= ~delete
        m[active] = part
        active = active[changed]
    return m.reshape(shape)


def _disk(diameter: float) -> Tensor:
    """The pixels within diameter / 2 of a pixel's centre, as a float kernel [1, 1, k, k] of 0s
    and 1s (k odd): the pen that dilates a one-pixel skeleton into a stroke about
    ``diameter`` pixels wide."""
    r = max(diameter / 2, 0.5)
    k = int(math.floor(r))
    y, x = torch.meshgrid(torch.arange(-k, k + 1), torch.arange(-k, k + 1), indexing="ij")
    return ((x * x + y * y) <= r * r).float()[None, None]


# ----------------------------------------------------------------------------- drawing
def ink_skeletons(images: Tensor, working: int) -> Tensor:
    """The skeletons [N, working, working] (bool) of source digits [N, 1, h, w] in [-1, 1]: the
    ink (x + 1) / 2 resampled bilinearly to the working resolution (which also smooths the 8x8
    digits' block edges), thresholded at half, and thinned (:func:`skeletonize`); lone pixels
    (specks) are dropped."""
    ink = F.interpolate((images + 1) / 2, size=(working, working), mode="bilinear", align_corners=False)
    skeletons = skeletonize(ink[:, 0] > 0.5)
    # a speck of the scan thins to a lone pixel: drop those, unless nothing else is left
    lone = skeletons & (neighbour_codes(skeletons) == 0)
    keep = (skeletons & ~lone).flatten(1).any(1)
    skeletons[keep] &= ~lone[keep]
    return skeletons


def _skeleton_points(skeletons: Tensor) -> tuple[Tensor, Tensor]:
    """The skeletons [N, S, S] as points: every skeleton pixel's centre and the midpoints to its
    skeleton neighbours (E, SE, S, SW), so consecutive points along a curve are at most half a
    pixel apart (diagonal: 0.71). Returns (example index [P], (y, x) [P, 2]) in working pixels."""
    points = [skeletons.nonzero().float()]
    S = skeletons.shape[-1]
    padded = F.pad(skeletons, (1, 1, 1, 1))
    for dy, dx in ((0, 1), (1, 1), (1, 0), (1, -1)):
        neighbour = padded[:, 1 + dy : 1 + dy + S, 1 + dx : 1 + dx + S]  # the pixel at (y + dy, x + dx)
        midpoints = (skeletons & neighbour).nonzero().float()
        midpoints[:, 1:] += torch.tensor([dy / 2, dx / 2])
        points.append(midpoints)
    p = torch.cat(points)
    return p[:, 0].long(), p[:, 1:] + 0.5


def render(skeletons: Tensor, widths: Tensor, extents: Tensor, positions: Tensor,
           layout: Layout) -> Tensor:
    """Draw skeletons [N, S, S] (bool, at least one pixel each) on the layout's canvas: images
    [N, 1, C, C] in [-1, 1] (background -1).

    Example i's skeleton is scaled so that its larger side spans ``extents[i]`` canvas pixels and
    moved so that its centre of mass (of points along its curves) falls on the anchor of position
    code ``positions[i]`` (row = code // 3, column = code % 3), as near as the canvas allows (the
    ink stays whole on it); then it is drawn with a round pen ``widths[i]`` pixels wide at
    ``layout.supersample`` x resolution and averaged down. A disk pen widens the skeleton by
    half its width on every side, so the ink spans extent + width.
    """
    N, C, K = len(skeletons), layout.canvas, layout.supersample
    which, yx = _skeleton_points(skeletons)
    count = torch.bincount(which, minlength=N).float()
    if (count == 0).any():
        first = int((count == 0).nonzero()[0])
        raise ValueError(f"skeleton {first} is empty: every source digit needs ink")
    lo = torch.full((N, 2), float("inf")).scatter_reduce(0, which[:, None].expand(-1, 2), yx, "amin")
    hi = torch.full((N, 2), -float("inf")).scatter_reduce(0, which[:, None].expand(-1, 2), yx, "amax")
    centre = torch.zeros(N, 2).index_add_(0, which, yx) / count[:, None]
    scale = extents.float() / (hi - lo).amax(1).clamp_min(1.0)  # canvas pixels per working pixel
    anchors = torch.tensor(layout.anchors)
    target = torch.stack([anchors[positions // 3], anchors[positions % 3]], 1)
    # the ink's box, centred on the centre of mass, must lie in [0, C]: clamp the target
    half = widths.float()[:, None] / 2
    low = (centre - lo) * scale[:, None] + half
    high = (hi - centre) * scale[:, None] + half
    target = torch.minimum(torch.maximum(target, low), C - high)
    canvas_yx = (yx - centre[which]) * scale[which, None] + target[which]
    H = C * K
    fine = torch.zeros(N, 1, H, H)
    pix = (canvas_yx * K).floor().long().clamp(0, H - 1)
    fine[which, 0, pix[:, 0], pix[:, 1]] = 1.0
    ink = torch.zeros(N, 1, H, H)
    for width in widths.unique().tolist():
        idx = (widths == width).nonzero().flatten()
        ink[idx] = (F.conv2d(fine[idx], _disk(width * K), padding="same") > 0).float()
    return F.avg_pool2d(ink, K) * 2 - 1


# ----------------------------------------------------------------------------- captions
_STROKE_WORDS = {"thin": ("thin", "light", "fine"), "bold": ("bold", "thick", "heavy")}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}


def _corner(vertical: str, v_synonym: str, horizontal: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        (f"at the {vertical} {horizontal}", f"in the {vertical} {horizontal} corner",
         f"in the {v_synonym} {horizontal} corner"),
        (f"{vertical} {horizontal}", f"{v_synonym} {horizontal}"),
    )


# Each position's phrases: (prepositional, bare), e.g. ("on the left", ...), ("left", ...).
_PLACES = {
    "top left": _corner("top", "upper", "left"),
    "top": (("at the top", "near the top"), ("top", "top centre", "top middle")),
    "top right": _corner("top", "upper", "right"),
    "left": (("on the left", "on the left side", "at the left"), ("left", "left side", "middle left")),
    "centre": (("in the centre", "in the center", "in the middle"),
               ("centre", "center", "middle", "centred")),
    "right": (("on the right", "on the right side", "at the right"),
              ("right", "right side", "middle right")),
    "bottom left": _corner("bottom", "lower", "left"),
    "bottom": (("at the bottom", "near the bottom"), ("bottom", "bottom centre", "bottom middle")),
    "bottom right": _corner("bottom", "lower", "right"),
}


def _article(word: str) -> str:
    return "an" if word in ("8", "eight") else "a"


def _join(*parts: Optional[str], sep: str = " ") -> str:
    return sep.join(p for p in parts if p)


def _describe_np(digit: str, size: Optional[str], stroke: Optional[str]) -> str:
    """The noun phrase: article, adjectives, digit ("a small bold 7", "an eight")."""
    words = [w for w in (size, stroke, digit) if w]
    return f"{_article(words[0])} {' '.join(words)}"


# The word orders, e.g. (d = the digit's word or numeral; s, k: size and stroke adjectives;
# pp, bare: the position's phrases; a missing attribute's words are left out):
#   "a small bold 7 on the left"             a s k d pp
#   "seven, thin strokes, small, top right"  d, k strokes, s, bare
#   "on the left, a small 7 in bold strokes" pp, a s d in k strokes
#   "the digit 7 on the left, small and bold" the digit d pp, s and k
#   "top right: a thin, small seven"         bare: a k, s d
def _order_0(d, s, k, pp, bare):
    return _join(_describe_np(d, s, k), pp)


def _order_1(d, s, k, pp, bare):
    return _join(d, k and f"{k} strokes", s, bare, sep=", ")


def _order_2(d, s, k, pp, bare):
    return _join(pp and f"{pp},", _describe_np(d, s, None), k and f"in {k} strokes")


def _order_3(d, s, k, pp, bare):
    adjectives = _join(s, k, sep=" and ")
    return _join(_join("the digit", d, pp), adjectives, sep=", ")


def _order_4(d, s, k, pp, bare):
    adjectives = _join(k, s, sep=", ")
    return _join(bare and f"{bare}:", _article(adjectives or d), _join(adjectives, d))


_ORDERS = (_order_0, _order_1, _order_2, _order_3, _order_4)
_CHOICES = 6  # random integers that choose one caption's order and words


def _caption_from(digit: Optional[int], position: Optional[str], stroke: Optional[str], size: Optional[str],
                  choice: list[int]) -> str:
    """The caption that the random integers ``choice`` (``_CHOICES`` of them) pick; a caption that
    leaves the digit out calls it "digit" ("a bold digit on the left", "the digit on the left")."""
    order, form, k, s, pp, bare = choice
    if digit is None:
        if position is None and stroke is None and size is None:
            return "a digit"
        d = None if order % len(_ORDERS) in (1, 3) else "digit"
    else:
        d = (str(digit), DIGIT_WORDS[digit])[form % 2]
    k = _STROKE_WORDS[stroke][k % len(_STROKE_WORDS[stroke])] if stroke else None
    s = _SIZE_WORDS[size][s % len(_SIZE_WORDS[size])] if size else None
    places = _PLACES[position] if position else None
    pp = places[0][pp % len(places[0])] if places else None
    bare = places[1][bare % len(places[1])] if places else None
    return _ORDERS[order % len(_ORDERS)](d, s, k, pp, bare)


def caption(digit: Optional[int], position: Optional[str] = None, stroke: Optional[str] = None,
            size: Optional[str] = None, seed: int = 0) -> str:
    """A caption for a digit and the attributes given (by name; None leaves one out, the digit
    too), its word order and synonyms drawn with ``seed``: ``caption(7, "left", "bold")`` -> e.g.
    "a bold 7 on the left" or "seven, heavy strokes, left side"; ``caption(None, stroke="bold")``
    -> e.g. "a bold digit"."""
    if digit is not None:
        digit = _check_digit(digit)
    elif position is None and stroke is None and size is None:
        raise ValueError("caption: name the digit or at least one attribute (the empty caption is \"\")")
    for name, value in (("position", position), ("stroke", stroke), ("size", size)):
        if value is not None and value not in ATTRIBUTES[name]:
            choices = ", ".join(map(repr, ATTRIBUTES[name]))
            raise ValueError(f"{name} must be one of {choices} or None, got {value!r}")
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    g = torch.Generator().manual_seed(int(seed))
    choice = torch.randint(0, 2**30, (_CHOICES,), generator=g).tolist()
    return _caption_from(digit, position, stroke, size, choice)


# What each word of a caption says; words of no meaning are skipped, any other is refused.
_WORDS: dict[str, tuple[str, object]] = {}
_WORDS.update({w: ("digit", d) for d, w in enumerate(DIGIT_WORDS)})
_WORDS.update({str(d): ("digit", d) for d in range(10)})
_WORDS.update({w: ("stroke", v) for v, ws in _STROKE_WORDS.items() for w in ws})
_WORDS.update({w: ("size", v) for v, ws in _SIZE_WORDS.items() for w in ws})
_WORDS.update({w: ("row", 0) for w in ("top", "upper")})
_WORDS.update({w: ("row", 2) for w in ("bottom", "lower")})
_WORDS.update({"left": ("column", 0), "right": ("column", 2)})
_WORDS.update({w: ("centre", True) for w in ("centre", "center", "middle", "centred", "centered", "central")})
_FILLERS = frozenset(("a", "an", "the", "on", "at", "in", "near", "of", "with", "and", "digit", "number",
                      "strokes", "stroke", "side", "corner", "drawn"))


def parse_caption(text: str) -> dict[str, Optional[object]]:
    """Read a caption back to ``{"digit": 0..9, "position": name, "stroke": name, "size": name}``
    (None where it says nothing): the inverse of :func:`caption` on every word order and synonym.

    A position is a row word (top, upper / bottom, lower) and a column word (left / right),
    either alone (then the other is the middle), or a centre word (centre, middle, ...) alone.
    Contradictions (two digits, "bold" and "thin", "left" and "right") and unknown words are
    refused with a ValueError that names them.
    """
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a string, got {type(text).__name__}")
    found: dict[str, list] = {}
    for word in re.findall(r"[a-z]+|\d+", text.lower()):
        if word in _FILLERS:
            continue
        if word not in _WORDS:
            strokes = ", ".join(w for ws in _STROKE_WORDS.values() for w in ws)
            sizes = ", ".join(w for ws in _SIZE_WORDS.values() for w in ws)
            hint = "one digit 0-9" if word.isdigit() else (
                f"digits (7, seven), strokes ({strokes}), sizes ({sizes}), positions "
                "(top, upper, bottom, lower, left, right, centre, middle)")
            raise ValueError(f"caption {text!r}: unknown word {word!r}; captions name {hint}")
        kind, value = _WORDS[word]
        found.setdefault(kind, [])
        if value not in found[kind]:
            found[kind].append(value)
    for kind, values in found.items():
        if len(values) > 1:
            raise ValueError(f"caption {text!r} names more than one {kind}: {values}")
    one = {kind: values[0] for kind, values in found.items()}
    position = None
    if "row" in one or "column" in one:
        position = POSITIONS[3 * one.get("row", 1) + one.get("column", 1)]
    elif "centre" in one:
        position = "centre"
    return {"digit": one.get("digit"), "position": position, "stroke": one.get("stroke"),
            "size": one.get("size")}


# ----------------------------------------------------------------------------- the data set
def _check_digit(digit) -> int:
    if not is_int(digit) or not 0 <= digit <= 9:
        raise ValueError(f"a digit must be an integer 0..9, got {digit!r}")
    return int(digit)


def _check_attributes(attributes) -> tuple[str, ...]:
    if isinstance(attributes, str) or not isinstance(attributes, (tuple, list)):
        raise ValueError(
            f"attributes must be a tuple of names from {tuple(ATTRIBUTES)} (e.g. ('position', 'stroke')), "
            f"got {attributes!r}"
        )
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown or len(set(attributes)) != len(attributes):
        raise ValueError(
            f"attributes must be distinct names from {tuple(ATTRIBUTES)}, got {tuple(attributes)!r}"
            + (f" ({', '.join(map(repr, unknown))} unknown)" if unknown else " (a name repeats)")
        )
    return tuple(a for a in ATTRIBUTES if a in attributes)  # in the canonical order


def _check_held_out(held_out, attributes: tuple[str, ...]) -> tuple[tuple[int, str, str], ...]:
    """The held-out combinations as (digit, attribute, value) triples, checked; the default keeps
    those of the attributes that vary."""
    if held_out is None:
        return tuple(h for h in DEFAULT_HELD_OUT if h[1] in attributes)
    if isinstance(held_out, (str, bytes)) or not isinstance(held_out, (tuple, list)):
        raise ValueError(f"held_out must be a tuple of (digit, attribute, value) triples, got {held_out!r}")
    out = []
    for h in held_out:
        if not isinstance(h, (tuple, list)) or len(h) != 3:
            raise ValueError(
                f"each held_out entry must be a (digit, attribute, value) triple such as (7, 'stroke', 'bold'), "
                f"got {h!r}"
            )
        digit, name, value = h
        _check_digit(digit)
        if name not in attributes:
            raise ValueError(
                f"held_out entry {tuple(h)!r}: {name!r} is not among the attributes that vary {attributes}; "
                "add it to attributes= or drop the entry"
            )
        if value not in ATTRIBUTES[name]:
            raise ValueError(
                f"held_out entry {tuple(h)!r}: {name} is one of {ATTRIBUTES[name]}, not {value!r}"
            )
        out.append((int(digit), name, value))
    for digit in range(10):
        for name in attributes:
            if {v for d, a, v in out if d == digit and a == name} == set(ATTRIBUTES[name]):
                raise ValueError(
                    f"held_out holds out every {name} of the digit {digit}, which then could not appear in "
                    "training: leave at least one of its values out of held_out"
                )
    return tuple(dict.fromkeys(out))


def held_out_mask(digits: Tensor, attributes: dict[str, Tensor], held_out) -> Tensor:
    """bool [N]: which examples (digit codes [N], attribute codes by name) show at least one
    held-out (digit, attribute, value) combination."""
    hit = torch.zeros(len(digits), dtype=torch.bool)
    for digit, name, value in held_out:
        if name in attributes:
            hit |= (digits == digit) & (attributes[name] == ATTRIBUTES[name].index(value))
    return hit


@dataclass
class CaptionedDigits:
    """Captioned digits: ``images`` float32 [N, 1, C, C] in [-1, 1], ``digits`` long [N],
    ``attributes`` {name: long codes [N]} for the attributes that vary (codes index
    ``ATTRIBUTES[name]``), ``captions`` (N strings); ``fixed`` gives the value of each attribute
    that does not vary ("centre", "regular" pen, "large"); ``held_out`` the combinations kept out
    of training; ``layout`` the geometry (what difflab.evaluation.attributes measures against)."""

    images: Tensor
    digits: Tensor
    attributes: dict[str, Tensor]
    captions: list[str]
    layout: Layout
    fixed: dict[str, str]
    held_out: tuple[tuple[int, str, str], ...]
    split: str
    source: str

    def __len__(self) -> int:
        return len(self.digits)

    def describe(self, i: int) -> dict[str, object]:
        """Example i's digit and attributes by name (what its caption says)."""
        out: dict[str, object] = {"digit": int(self.digits[i])}
        for name in ATTRIBUTES:
            codes = self.attributes.get(name)
            out[name] = None if codes is None else ATTRIBUTES[name][int(codes[i])]
        return out


_OMIT_STREAM = 0x0A17  # the tag of the omissions' stream


def _mentioned(n: int, names: tuple[str, ...], omit_prob: float, seed: int) -> dict[str, list[bool]]:
    """Whether each of n captions names each of ``names``: all True at omit_prob = 0; else each
    False with probability omit_prob, drawn from a stream of its own, so that the images and word
    choices are those of omit_prob = 0. The stream's seed is hashed from (seed, a stream tag): a
    plain seed + 1 would replay the main stream of the data set of seed + 1 (its digits' order)."""
    if omit_prob == 0.0:
        return {name: [True] * n for name in names}
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), _OMIT_STREAM]).generate_state(1)[0]))
    keep = torch.rand(n, len(names), generator=g) >= omit_prob
    return {name: keep[:, j].tolist() for j, name in enumerate(names)}


# What an attribute that does not vary is fixed at.
FIXED = {"position": "centre", "stroke": "regular", "size": "large"}
_CHUNK = 4096  # examples skeletonised and drawn at a time (memory: a chunk of working-size masks)


def _source_images(source: str, root, mnist_split: str) -> tuple[Tensor, Tensor]:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    if source == "digits":
        if root is not None:
            raise ValueError(
                "root is MNIST's folder: pass it with source='mnist' (source='digits' needs no files)"
            )
        return digits_source.load()
    if root is None:
        raise ValueError(
            "source='mnist' reads MNIST's IDX files from a folder: pass root=<folder> (e.g. "
            "'../shared/data/mnist'), or use source='digits' (scikit-learn's digits, no files)"
        )
    return mnist_source.load(root, split=mnist_split)


def captioned_digits(
    n: Optional[int] = None,
    source: str = "digits",
    root: Optional[Union[str, Path]] = None,
    mnist_split: str = "train",
    canvas: Optional[int] = None,
    attributes: tuple[str, ...] = tuple(ATTRIBUTES),
    seed: int = 0,
    split: str = "train",
    held_out: Optional[tuple] = None,
    omit_prob: float = 0.0,
) -> CaptionedDigits:
    """Captioned digits made from ``source`` ("digits": scikit-learn's 1,797 8x8 digits, on a
    16x16 canvas; "mnist": MNIST's ``mnist_split`` from the folder ``root``, on 48x48).

    ``n`` examples (default: one per source digit that the split can use; more reuse the source
    digits with new attributes and captions); ``attributes``: those that vary and are captioned
    (the others are fixed, see ``FIXED``); ``canvas``: a larger canvas than the source's default,
    everything scaled. ``split="train"`` never shows a ``held_out`` (digit, attribute, value)
    combination (None: ``DEFAULT_HELD_OUT``, restricted to the attributes that vary; (): none);
    ``split="held_out"`` shows one in every example (digits without any are left out).
    ``omit_prob``: partial captions, as real captions name only some of what an image shows: the
    digit and each varied attribute are left out of a caption independently with this probability
    (the image still shows them; ``attributes`` and ``digits`` keep the truth). A model trained on
    them also learns what each word means alone, p(x | "bold"), which composed prompts
    ("seven AND bold", Liu et al. 2022) combine. 0 (the default) names everything, and leaves
    the images and captions of every seed as they were.
    Deterministic: the same arguments give the same images and captions.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    if n is not None:
        n = positive_int("n (the number of examples)", n)
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not is_real(omit_prob) or not 0.0 <= float(omit_prob) < 1.0:
        raise ValueError(f"omit_prob is the probability that a caption leaves out each attribute, in [0, 1), "
                         f"got {omit_prob!r}")
    layout = layout_for(source, canvas)
    varied = _check_attributes(attributes)
    held = _check_held_out(held_out, varied)
    if split == "held_out" and not held:
        raise ValueError(
            "split='held_out' needs held-out combinations, but none applies to the attributes that vary "
            f"{varied}: pass held_out=((digit, attribute, value), ...) or vary more attributes"
        )
    images, labels = _source_images(source, root, mnist_split)
    g = torch.Generator().manual_seed(int(seed))

    # which source digits, in a seeded order
    usable = torch.arange(len(labels))
    if split == "held_out":
        usable = usable[torch.isin(labels, torch.tensor(sorted({d for d, _, _ in held})))]
    if not len(usable):
        raise ValueError(f"the {source} source has no digit that split={split!r} can use")
    order = usable[torch.randperm(len(usable), generator=g)]
    n = len(order) if n is None else n
    index = order[torch.arange(n) % len(order)]
    digits = labels[index]

    # attributes: uniform; train redraws any example that shows a held-out combination, held_out
    # sets one of its digit's held-out combinations (drawn uniformly) over the uniform draw
    codes = {name: torch.randint(0, len(ATTRIBUTES[name]), (n,), generator=g) for name in varied}
    if split == "train":
        redo = held_out_mask(digits, codes, held)
        while redo.any():
            rows = redo.nonzero().flatten()
            for name in varied:
                codes[name][rows] = torch.randint(0, len(ATTRIBUTES[name]), (len(rows),), generator=g)
            redo = held_out_mask(digits, codes, held)
    else:
        per_digit = {d: [h for h in held if h[0] == d] for d in range(10)}
        pick = torch.rand(n, generator=g)
        for i, d in enumerate(digits.tolist()):
            _, name, value = per_digit[d][int(pick[i] * len(per_digit[d]))]
            codes[name][i] = ATTRIBUTES[name].index(value)

    # captions: one order and one choice of words each
    choices = torch.randint(0, 2**30, (n, _CHOICES), generator=g).tolist()
    names = {name: [ATTRIBUTES[name][c] for c in codes[name].tolist()] for name in varied}
    said = _mentioned(n, ("digit", *varied), float(omit_prob), seed)
    captions = [
        _caption_from(d if said["digit"][i] else None,
                      *(names[a][i] if a in names and said[a][i] else None for a in ATTRIBUTES), choices[i])
        for i, d in enumerate(digits.tolist())
    ]

    # drawing: each used source digit's skeleton once, then every example with its pen, size, place
    widths = (torch.tensor(layout.widths)[codes["stroke"]] if "stroke" in codes
              else torch.full((n,), layout.regular_width))
    extents = (torch.tensor(layout.extents)[codes["size"]] if "size" in codes
               else torch.full((n,), layout.extents[1]))
    positions = codes["position"] if "position" in codes else torch.full((n,), POSITIONS.index("centre"))
    used, slot = index.unique(return_inverse=True)
    skeletons = torch.cat([ink_skeletons(images[used[i : i + _CHUNK]], layout.working)
                           for i in range(0, len(used), _CHUNK)])
    out = torch.cat([
        render(skeletons[slot[i : i + _CHUNK]], widths[i : i + _CHUNK], extents[i : i + _CHUNK],
               positions[i : i + _CHUNK], layout)
        for i in range(0, n, _CHUNK)
    ])
    return CaptionedDigits(
        images=out, digits=digits, attributes=codes, captions=captions, layout=layout,
        fixed={a: FIXED[a] for a in ATTRIBUTES if a not in varied}, held_out=held, split=split,
        source=source,
    )
