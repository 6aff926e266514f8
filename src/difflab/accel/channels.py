"""Convolutions with their channel counts zero-padded to a multiple of 8, on CUDA.

cuDNN's tensor-core kernels want channel counts that are multiples of 8; an image's 1 or 3
channels otherwise take a generic kernel (the U-Net's first and last convolutions).
:class:`PaddedConv2d` computes ``conv(x)`` with the input and output channels padded: the same
function, since padded input channels meet zero weights and padded output channels are dropped.
:func:`pad_channels` swaps it in for a model's plain ``nn.Conv2d`` modules whose channel counts
are not multiples (same parameters, same state-dict keys). Measurements: docs/benchmarks.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.unet import unhooked

__all__ = ["PaddedConv2d", "pad_channels", "conv_padded_channels"]


def _nhwc(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def conv_padded_channels(x: Tensor, conv: nn.Conv2d, multiple: int = 8, force: bool = False) -> Tensor:
    """``conv(x)`` with its input and output channels zero-padded to multiples of ``multiple`` (on
    CUDA, or with ``force``); as ``conv(x)`` for a subclass, a hooked module or another padding mode."""
    w, b = conv.weight, conv.bias
    c_out, c_in = w.shape[0], w.shape[1]
    pad_in, pad_out = -c_in % multiple, -c_out % multiple
    plain = unhooked(conv, PaddedConv2d) or unhooked(conv, nn.Conv2d)
    plain = plain and conv.padding_mode == "zeros" and conv.groups == 1
    if not (x.is_cuda or force) or (pad_in == 0 and pad_out == 0) or not plain:
        return nn.Conv2d.forward(conv, x)
    w = F.pad(w, (0, 0, 0, 0, 0, pad_in, 0, pad_out))  # [C_out + pad, C_in + pad, kh, kw]
    if pad_in:
        x = F.pad(x, (0, 0, 0, 0, 0, pad_in))
    y = F.conv2d(x, w, F.pad(b, (0, pad_out)) if b is not None else None, conv.stride, conv.padding,
                 conv.dilation)
    if not pad_out:
        return y
    return y[:, :c_out].contiguous(memory_format=torch.channels_last if _nhwc(y) else torch.contiguous_format)


class PaddedConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed with channel counts padded to ``multiple`` on CUDA inputs."""

    multiple: int = 8

    def forward(self, x: Tensor) -> Tensor:
        return conv_padded_channels(x, self, self.multiple)


def pad_channels(model: nn.Module, multiple: int = 8) -> int:
    """Swap every plain ``nn.Conv2d`` of ``model`` whose channel counts are not multiples of
    ``multiple`` for :class:`PaddedConv2d`, in place; returns how many were swapped."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"pad_channels: multiple must be a positive integer, got {multiple!r}")
    swapped = 0
    for module in model.modules():
        if type(module) in (nn.Conv2d, PaddedConv2d) and module.groups == 1 and module.padding_mode == "zeros" \
                and (module.in_channels % multiple or module.out_channels % multiple):
            module.__class__ = PaddedConv2d
            module.multiple = multiple
            swapped += 1
    return swapped
