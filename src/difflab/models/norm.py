"""Group normalization with the U-Net's neighbours of the norm as keywords.

    GN(x)_{b,c,h,w} = (x_{b,c,h,w} - mu_{b,g}) / sqrt(var_{b,g} + eps) * gamma_c + beta_c,

with mu, var the mean and (biased) variance of x over the channels of group g = c // (C / G)
and all positions (Wu & He 2018).

:class:`GroupNorm` takes the operations around every use of the norm in the U-Net,

    norm(x, add=e, scale=s, shift=b, silu=True) = SiLU(GN(x + e) * (1 + s) + b),

and computes them as written, with torch's kernel. Faster forms of the same function (on the
NHWC view of channels_last activations, or as one fused Triton kernel) are module swaps of the
speed layer, :func:`difflab.accel.set_group_norm`, which keep the parameters and state-dict keys.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupNorm", "check_groups"]


def check_groups(channels: int, num_groups: int) -> None:
    """Raise ValueError unless ``num_groups`` (>= 1) divides ``channels``."""
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"group norm: {channels} channels do not split into {num_groups} groups; "
                         f"choose a number of groups that divides {channels}")


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same state-dict keys) with the norm's neighbours:

    ``forward(x, *, add=None, scale=None, shift=None, silu=False)`` =
    act(GN(x + add) * (1 + scale) + shift), with add, scale, shift per image and channel
    ([B, C, 1, 1]) and act SiLU if ``silu``."""

    def forward(self, x: Tensor, *, add: Optional[Tensor] = None, scale: Optional[Tensor] = None,
                shift: Optional[Tensor] = None, silu: bool = False) -> Tensor:
        if add is not None:
            x = x + add
        return self.affine_act(self.normalize(x), scale, shift, silu)

    def normalize(self, x: Tensor) -> Tensor:
        """GN(x), with its affine parameters."""
        return super().forward(x)

    @staticmethod
    def affine_act(y: Tensor, scale: Optional[Tensor], shift: Optional[Tensor], silu: bool) -> Tensor:
        """act(y * (1 + scale) + shift)."""
        if scale is not None:
            y = y * (1 + scale)
        if shift is not None:
            y = y + shift
        return F.silu(y) if silu else y
