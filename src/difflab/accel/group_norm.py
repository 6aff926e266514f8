"""GroupNorm on channels_last activations without layout copies, as module swaps.

``F.group_norm`` reshapes x to [B, G, -1], which is a view only in NCHW memory order. For an
NHWC (channels_last) tensor -- the layout tensor-core convolutions read -- that reshape is a copy,
and so is the way back. :func:`group_norm_nhwc` computes the same function on the NHWC view
[B, H*W, G, C/G] of the same memory: no copy, and the result is channels_last again. The
Triton kernels of :mod:`.group_norm_triton` go further and fuse the norm's neighbours (the
added embedding, the scale and shift, SiLU) into one pass over the memory (sampling only: they
have no backward).

:func:`set_group_norm` chooses, per model, how its :class:`~difflab.models.norm.GroupNorm`
modules compute, by swapping each for a subclass with the same parameters (so the state dict
keeps its keys, as diffusers' ``set_attn_processor`` swaps attention):

- ``"never"``: torch's kernel (the model's own :class:`GroupNorm`);
- ``"compile"``: the NHWC view while torch.compile traces (where its extra eager kernels fuse
  away), torch's kernel otherwise;
- ``"always"``: the NHWC view for every channels_last input;
- ``"triton"``: the Triton kernels where no gradient is needed and they apply, ``"compile"``
  otherwise (training keeps torch's autograd).

NCHW inputs always take torch's kernel. Figures: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import torch
from torch import Tensor, nn

from ..models.norm import GroupNorm, check_groups

__all__ = ["GROUP_NORM_MODES", "group_norm_nhwc", "set_group_norm", "check_group_norm_mode", "NHWCGroupNorm",
           "TritonGroupNorm"]

GROUP_NORM_MODES = ("never", "compile", "always", "triton")


def check_group_norm_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` can be set (a known mode; "triton" needs the package)."""
    if not isinstance(mode, str) or mode not in GROUP_NORM_MODES:
        raise ValueError(f"group_norm must be one of {', '.join(GROUP_NORM_MODES)}, got {mode!r}")
    if mode == "triton" and importlib.util.find_spec("triton") is None:
        raise ValueError("group_norm 'triton' needs the triton package (CUDA builds of torch install it; "
                         "else `pip install triton`); use 'compile' without it")


def is_nhwc(x: Tensor) -> bool:
    """Is ``x`` 4-D and laid out channels_last (and not also plainly contiguous, as 1x1 images are)?"""
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def group_norm_nhwc(x: Tensor, num_groups: int, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                    eps: float = 1e-5) -> Tensor:
    """GN(x) for a 4-D x, computed on its NHWC view; a channels_last input gives a channels_last
    output and no copies. Statistics in float32 (float64 for float64 input). The result has
    F.group_norm's dtype: float32 under CUDA autocast (whose policy runs group_norm in float32),
    x's otherwise (CPU autocast leaves group_norm alone)."""
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


class NHWCGroupNorm(GroupNorm):
    """:class:`GroupNorm` computing channels_last inputs on their NHWC view: always
    (``when="always"``) or while torch.compile traces (``when="compile"``)."""

    when: str = "always"

    def normalize(self, x: Tensor) -> Tensor:
        if is_nhwc(x) and (self.when == "always" or torch.compiler.is_compiling()):
            return group_norm_nhwc(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().normalize(x)


def _per_channel(t: Optional[Tensor], x: Tensor) -> bool:
    """None, or one value per image and channel ([B, C, 1, 1], [1, C, 1, 1] or [C, 1, 1])."""
    return t is None or (t.ndim in (3, 4) and tuple(t.shape[-3:]) == (x.shape[1], 1, 1)
                         and (t.ndim == 3 or t.shape[0] in (1, x.shape[0])))


class TritonGroupNorm(NHWCGroupNorm):
    """:class:`GroupNorm` with its neighbours fused by the Triton kernels where they apply:
    channels_last x where the kernels run (CUDA, or Triton's interpreter), not float64, add /
    scale / shift per image and channel, no gradient needed. Elsewhere the NHWC view under
    torch.compile. ``kernel`` and ``plan`` choose the kernels (:func:`.group_norm_triton.group_norm_act`)."""

    when = "compile"
    kernel: Optional[str] = None
    plan: Optional[dict] = None
    kernels = None  # the module of kernels, imported by set_group_norm (triton is an optional package)
    interpreted = False  # whether Triton's interpreter runs them (on CPU tensors)

    def forward(self, x: Tensor, *, add: Optional[Tensor] = None, scale: Optional[Tensor] = None,
                shift: Optional[Tensor] = None, silu: bool = False) -> Tensor:
        if self._fusable(x, add, scale, shift):
            return self.kernels.group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, add=add,
                                               scale=scale, shift=shift, silu=silu, kernel=self.kernel,
                                               plan=self.plan)
        return super().forward(x, add=add, scale=scale, shift=shift, silu=silu)

    # ``kernels`` is a Python module, which neither pickles nor deep-copies: a model with these
    # norms is copied (the trainer's EMA, copy.deepcopy, torch.save) without it, and imports it again.
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("kernels", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.kernels = importlib.import_module(f"{__package__}.group_norm_triton")
        self.interpreted = self.kernels.interpreted()

    def _fusable(self, x: Tensor, add, scale, shift) -> bool:
        if not is_nhwc(x) or (x.device.type != "cuda" and not self.interpreted):
            return False
        if x.dtype == torch.float64 or not all(_per_channel(t, x) for t in (add, scale, shift)):
            return False
        operands = (x, self.weight, self.bias, add, scale, shift)
        return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in operands))


_CLASSES = {"never": GroupNorm, "compile": NHWCGroupNorm, "always": NHWCGroupNorm, "triton": TritonGroupNorm}


def set_group_norm(model: nn.Module, mode: str, kernel: Optional[str] = None, plan: Optional[dict] = None) -> int:
    """Make every :class:`GroupNorm` of ``model`` compute by ``mode`` (see the module doc), in
    place; ``kernel`` / ``plan`` choose the Triton kernels (mode "triton"). Returns how many
    modules were swapped. Parameters, buffers and state-dict keys are unchanged."""
    check_group_norm_mode(mode)
    if mode != "triton" and (kernel is not None or plan is not None):
        raise ValueError(f"group norm kernel / plan choose Triton kernels: they need group_norm 'triton', "
                         f"got {mode!r}")
    if mode == "triton":
        kernels = importlib.import_module(f"{__package__}.group_norm_triton")  # triton: an optional package
        if kernel is not None and kernel not in kernels.KERNELS:
            raise ValueError(f"group norm kernel must be one of {', '.join(kernels.KERNELS)} or None, got {kernel!r}")
    cls, swapped = _CLASSES[mode], 0
    for module in model.modules():
        if isinstance(module, GroupNorm) and type(module) in (GroupNorm, NHWCGroupNorm, TritonGroupNorm):
            module.__class__ = cls
            if cls is not GroupNorm:
                module.when = "always" if mode == "always" else "compile"
            if cls is TritonGroupNorm:
                module.kernel, module.plan = kernel, plan
                module.kernels, module.interpreted = kernels, kernels.interpreted()
            swapped += 1
    return swapped
