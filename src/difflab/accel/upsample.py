"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, folded into the convolution.

conv3x3(nearest_2x(x)) reads each input pixel through a 3x3 kernel on a grid where every pixel
is repeated 2 x 2 times: output pixel (2y + a, 2x + b) only ever sees the 2 x 2 input pixels
around (y, x) that its phase (a, b) selects, with the 3x3 weights summed accordingly. So the
same function takes 16 multiply-adds per output pixel and channel pair instead of 36, and no
upsampled copy of x. Two forms:

- ``"transposed"``: one stride-2 transposed convolution with the kernel folded to 4 x 4, which
  writes the interleaved output itself (:func:`upsample_conv3x3_transposed`);
- ``"subpixel"``: the four phases as one 2x2 convolution, then a gather of the phases
  (:func:`upsample_conv3x3`);
- ``"plain"``: as written (the model's own form).

:func:`set_upsample` swaps a U-Net's :class:`~difflab.models.unet.Upsample` modules and
upsampling :class:`~difflab.models.unet.ResBlock` modules for subclasses that compute the chosen
form (same parameters, same state-dict keys). Layers with less work than ``FOLDED_MIN_WORK``
keep the plain form, whose few large operations then cost less than the folded forms' small
extra ones (folding the weights, writing the phases). The forms' timings: docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.unet import ResBlock, Upsample

__all__ = ["UPSAMPLE_FORMS", "FOLDED_MIN_WORK", "upsample_conv3x3", "upsample_conv3x3_transposed",
           "upsample_conv", "set_upsample", "FoldedUpsample", "FoldedUpResBlock"]

UPSAMPLE_FORMS = ("transposed", "subpixel", "plain")

# B C_in C_out H W of the low-resolution input below which a layer keeps the plain form.
FOLDED_MIN_WORK = 2**20


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _nhwc(t: Tensor) -> bool:
    """Is ``t`` laid out channels_last (and not also plainly contiguous, as 1x1 images are)?"""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _at_least_float32(w: Tensor) -> Tensor:
    """w in float32 if it is a 16-bit float: folded weights are sums of up to four taps (nine in
    2-D), which bf16 would round at every step."""
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def _fold_taps(w: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """A 3-tap kernel along ``dim`` seen on a nearest-upsampled grid, as the two 2-tap kernels of
    the low-resolution grid: output phase 0 reads rows (y-1, y) with (w0, w1 + w2), phase 1 reads
    (y, y+1) with (w0 + w1, w2)."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def upsample_conv3x3(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """conv3x3(nearest_upsample_2x(x)) (padding 1) without the upsampled input: the "sub-pixel"
    form.

    Output pixel (2y + a, 2x + b) only ever reads the 2x2 input pixels around (y, x) that its
    phase (a, b) sees, with the 3x3 weights summed accordingly (``_fold_taps`` along each axis).
    So the four phases are one 2x2 convolution of x (padding 1, 4 x C_out channels, output
    (H+1) x (W+1)), phase (a, b) read at offset (a, b), interleaved. The same function (up to
    rounding: the summed weights are formed in float32, then rounded once to the weights' dtype),
    with 16 instead of 36 multiply-adds per output pixel and channel pair, and no 4x-larger
    upsampled copy of x to write and read.
    """
    B, C_in, H, W = x.shape
    C_out = weight.shape[0]
    rows = _fold_taps(_at_least_float32(weight), 2)  # phase a: [C_out, C_in, 2, 3]
    phases = [_fold_taps(rows[a], 3)[b] for a in (0, 1) for b in (0, 1)]  # (a, b): [C_out, C_in, 2, 2]
    w4 = torch.cat(phases, 0).to(weight.dtype)  # channel (2a + b) C_out + o
    full = F.conv2d(x, w4, bias.repeat(4) if bias is not None else None, padding=1)  # [B, 4 C_out, H+1, W+1]
    # the layout the convolution of the upsampled input would have had: channels_last if an
    # operand is (full, (H+1) x (W+1) >= 2 x 2, says so unambiguously; so does a 4-D weight)
    fmt = torch.channels_last if _nhwc(full) or _nhwc(weight) else torch.contiguous_format
    full = full.unflatten(1, (2, 2, C_out))  # [B, a, b, C_out, H+1, W+1]
    if torch.compiler.is_compiling():  # one gather, which Inductor fuses into a single kernel
        y = torch.stack([full[:, a, b, :, a:a + H, b:b + W] for a in (0, 1) for b in (0, 1)], -1)
        return y.unflatten(-1, (2, 2)).permute(0, 1, 2, 4, 3, 5).reshape(B, C_out, 2 * H, 2 * W).contiguous(
            memory_format=fmt)
    y = torch.empty(B, C_out, 2 * H, 2 * W, dtype=full.dtype, device=full.device, memory_format=fmt)
    for a in (0, 1):  # eager: one write of the output, a quarter per phase
        for b in (0, 1):  # phase (a, b) read at offset (a, b), written to every other row and column
            y[:, :, a::2, b::2] = full[:, a, b, :, a:a + H, b:b + W]
    return y


def _transposed_taps(w: Tensor, dim: int) -> Tensor:
    """A 3-tap kernel along ``dim`` seen on a nearest-upsampled grid, as the 4-tap kernel of a
    stride-2 transposed convolution with padding 1 (which puts input row i on output rows
    2i - 1 + k, k = 0..3): output row 2y reads input rows (y-1, y) with (w0, w1 + w2) and row
    2y + 1 reads (y, y+1) with (w0 + w1, w2), so the taps k = 0..3 are w2, w1 + w2, w0 + w1, w0."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def upsample_conv3x3_transposed(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """conv3x3(nearest_upsample_2x(x)) (padding 1) as one transposed convolution of x: stride 2,
    padding 1, the 3x3 kernel folded to 4x4 along each axis (:func:`_transposed_taps`).

    The same function and multiply-adds as the sub-pixel form (:func:`upsample_conv3x3`: 16 per
    output pixel and channel pair instead of 36), but the convolution writes the interleaved
    output itself: no gather of four phases afterwards. (The folded weights are sums formed in
    float32, outside autocast, then rounded once to the weights' dtype.)"""
    k = _transposed_taps(_transposed_taps(_at_least_float32(weight), 2), 3)
    k = k.transpose(0, 1).to(weight.dtype)  # [C_in, C_out, 4, 4]: conv_transpose2d's layout
    if _nhwc(x) or _nhwc(weight):  # the layout the plain form's output would have
        k = k.contiguous(memory_format=torch.channels_last)
    return F.conv_transpose2d(x, k, bias, stride=2, padding=1)


def upsample_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], form: str) -> Tensor:
    """conv3x3(nearest_2x(x)) (padding 1) in ``form``, or plain where the layer is tiny."""
    B, C_in, H, W = x.shape
    if form == "plain" or B * C_in * weight.shape[0] * H * W < FOLDED_MIN_WORK:
        return F.conv2d(_up(x), weight, bias, padding=1)
    if form == "transposed":
        return upsample_conv3x3_transposed(x, weight, bias)
    return upsample_conv3x3(x, weight, bias)


class FoldedUpsample(Upsample):
    """:class:`Upsample` computing its convolution in ``form`` (see the module doc)."""

    form: str = "transposed"

    def forward(self, x: Tensor, emb_act: Optional[Tensor] = None) -> Tensor:
        if self.conv is None:
            return _up(x)
        return upsample_conv(x, self.conv.weight, self.conv.bias, self.form)


class FoldedUpResBlock(ResBlock):
    """An upsampling :class:`ResBlock` computing conv1(nearest_2x(h)) in ``form``."""

    form: str = "transposed"

    def conv1_up(self, h: Tensor, bias: Optional[Tensor]) -> Tensor:
        return upsample_conv(h, self.conv1.weight, bias, self.form)


def set_upsample(model: nn.Module, form: str) -> int:
    """Compute every upsampling convolution of ``model`` in ``form`` ("transposed", "subpixel" or
    "plain"), in place, by swapping module classes; returns how many modules were swapped."""
    if not isinstance(form, str) or form not in UPSAMPLE_FORMS:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_FORMS)}, got {form!r}")
    swapped = 0
    for module in model.modules():
        if type(module) in (Upsample, FoldedUpsample):
            module.__class__ = Upsample if form == "plain" else FoldedUpsample
        elif type(module) in (ResBlock, FoldedUpResBlock) and module.resample == "up":
            module.__class__ = ResBlock if form == "plain" else FoldedUpResBlock
        else:
            continue
        module.form = form
        swapped += 1
    return swapped
