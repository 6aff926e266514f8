"""Group normalization that keeps channels_last activations in their layout.

    GN(x)_{b,c,h,w} = (x_{b,c,h,w} - mu_{b,g}) / sqrt(var_{b,g} + eps) * gamma_c + beta_c,

with mu, var the mean and (biased) variance of x over the channels of group g = c // (C / G)
and all positions (Wu & He 2018).

``F.group_norm`` reshapes x to [B, G, -1], which is a view only in NCHW memory order. For an
NHWC (channels_last) tensor -- the layout tensor-core convolutions read -- that reshape is a
copy, and so is the way back: in eager mode two transposes per normalization (measured on an
H200: 18 ms of layout copies per bf16 training step of the CIFAR-10 U-Net). Under torch.compile,
Inductor's fused GroupNorm kernels (named ..._to_copy_clone_convolution_native_group_norm...)
took about half of a compiled U-Net call's GPU time, moving data at about a tenth of the
memory bandwidth -- in both difflab and diffusers; a read in one memory order and a write in
the other is the suspected cause, not yet confirmed. :func:`group_norm_nhwc` computes the same
function on the NHWC view [B, H*W, G, C/G] of the same memory: no copy, and the result is
channels_last again (benchmarks/throughput.py's rows "+gn_nhwc" measure it).

Which one :class:`GroupNorm` uses for channels_last inputs is a process-wide setting
(:func:`set_nhwc_group_norm`): "never" (the default, torch's kernel), "compile" (only while
torch.compile traces, where the extra eager kernels fuse away), "always", or "triton": the
hand-written kernels of :mod:`difflab.models.group_norm_triton` (the neighbouring add,
scale-shift and SiLU fused in) wherever no gradient is needed -- sampling -- and "compile"
otherwise. NCHW inputs always take ``F.group_norm``.

:class:`GroupNorm` also takes the U-Net's neighbours of the norm as keywords,
``norm(x, add=e, scale=s, shift=b, silu=True)`` = SiLU((GN(x + e)) * (1 + s) + b), so that the
"triton" mode can fuse them; in the other modes they are the same torch operations as written
out by hand.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupNorm", "group_norm_nhwc", "set_nhwc_group_norm", "nhwc_group_norm", "check_nhwc_group_norm_mode",
           "check_groups"]

MODES = ("never", "compile", "always", "triton")
_mode = "never"
_kernels = None  # difflab.models.group_norm_triton, imported by the first "triton" setting


def check_nhwc_group_norm_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` can be set (a known mode; "triton" needs the package)."""
    global _kernels
    if mode not in MODES:
        raise ValueError(f"nhwc group norm mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "triton" and importlib.util.find_spec("triton") is None:
        raise ValueError("nhwc group norm mode 'triton' needs the triton package (CUDA builds of "
                         "torch install it; else `pip install triton`); use 'compile' without it")
    if mode == "triton" and _kernels is None:
        from . import group_norm_triton

        _kernels = group_norm_triton


def set_nhwc_group_norm(mode: str) -> str:
    """Set when :class:`GroupNorm` uses :func:`group_norm_nhwc` for channels_last inputs
    ("never", "compile", "always" or "triton"); returns the previous mode."""
    global _mode
    check_nhwc_group_norm_mode(mode)
    previous, _mode = _mode, mode
    return previous


@contextlib.contextmanager
def nhwc_group_norm(mode: Optional[str] = "always") -> Iterator[None]:
    """``with nhwc_group_norm("compile"): ...`` -- the setting for a block of code (None: the
    process-wide setting, untouched)."""
    if mode is None:
        yield
        return
    previous = set_nhwc_group_norm(mode)
    try:
        yield
    finally:
        set_nhwc_group_norm(previous)


def check_groups(channels: int, num_groups: int) -> None:
    """Raise ValueError unless ``num_groups`` (>= 1) divides ``channels``."""
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"group norm: {channels} channels do not split into {num_groups} groups; "
                         f"choose a number of groups that divides {channels}")


def _is_nhwc(x: Tensor) -> bool:
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def group_norm_nhwc(x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
                    eps: float = 1e-5) -> Tensor:
    """GN(x) for a 4-D x, computed on its NHWC view; a channels_last input gives a channels_last
    output and no copies. Statistics in float32 (float64 for float64 input). The result has F.group_norm's dtype: float32
    under CUDA autocast (whose policy runs group_norm in float32), x's otherwise (CPU autocast
    leaves group_norm alone)."""
    B, C, H, W = x.shape
    check_groups(C, num_groups)
    autocast_fp32 = x.device.type == "cuda" and torch.is_autocast_enabled("cuda") and \
        x.dtype in (torch.float16, torch.bfloat16)  # autocast raises half types to float32, no others
    out_dtype = torch.float32 if autocast_fp32 else x.dtype
    compute = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 input
    xg = x.permute(0, 2, 3, 1).reshape(B, H * W, num_groups, C // num_groups).to(compute)  # a view for NHWC
    var, mean = torch.var_mean(xg, dim=(1, 3), keepdim=True, correction=0)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(B, H, W, C)
    if weight is not None:
        y = y * weight.to(compute)
    if bias is not None:
        y = y + bias.to(compute)
    return y.to(out_dtype).permute(0, 3, 1, 2)


def _per_channel(t: Optional[Tensor], x: Tensor) -> bool:
    """None, or one value per image and channel ([B, C, 1, 1], [1, C, 1, 1] or [C, 1, 1])."""
    return t is None or (t.ndim in (3, 4) and tuple(t.shape[-3:]) == (x.shape[1], 1, 1)
                         and (t.ndim == 3 or t.shape[0] in (1, x.shape[0])))


def _triton_ready(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], add: Optional[Tensor],
                  scale: Optional[Tensor], shift: Optional[Tensor]) -> bool:
    """The Triton kernels apply: channels_last x where they run, of a dtype whose precision their
    float32 arithmetic keeps (not float64), add / scale / shift per image and channel (others
    broadcast in the composite), and no gradient needed."""
    if not _is_nhwc(x) or (x.device.type != "cuda" and not _kernels.INTERPRETED):
        return False
    if x.dtype == torch.float64 or not all(_per_channel(t, x) for t in (add, scale, shift)):
        return False
    operands = (x, weight, bias, add, scale, shift)
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same state-dict keys) that may compute channels_last
    inputs with :func:`group_norm_nhwc` or the Triton kernels (see :func:`set_nhwc_group_norm`).

    ``forward(x, *, add=None, scale=None, shift=None, silu=False)`` =
    act(GN(x + add) * (1 + scale) + shift), with add, scale, shift per image and channel
    ([B, C, 1, 1]) and act SiLU if ``silu``: the U-Net's uses of the norm, fusable as one."""

    def forward(self, x: Tensor, *, add: Optional[Tensor] = None, scale: Optional[Tensor] = None,
                shift: Optional[Tensor] = None, silu: bool = False) -> Tensor:
        if _mode == "triton" and _triton_ready(x, self.weight, self.bias, add, scale, shift):
            return _kernels.group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps,
                                           add=add, scale=scale, shift=shift, silu=silu)
        if add is not None:
            x = x + add
        if _mode != "never" and _is_nhwc(x) and (_mode == "always" or torch.compiler.is_compiling()):
            y = group_norm_nhwc(x, self.num_groups, self.weight, self.bias, self.eps)
        else:
            y = super().forward(x)
        if scale is not None:
            y = y * (1 + scale)
        if shift is not None:
            y = y + shift
        return F.silu(y) if silu else y
