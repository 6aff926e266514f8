"""Speed as its own layer: transforms that make a model compute the same function faster.

    import difflab as dl
    fast = dl.accel.accelerate(model, precision="bf16", channels_last=True, compile=True,
                               cuda_graph="loop", group_norm="triton")
    x0 = dl.sample(fast, proc, (256, 3, 32, 32), "ddim", 50)     # any sampler, editing, invert

:func:`accelerate` swaps modules of the network for faster forms of the same function (the
U-Net's GroupNorms, its upsampling convolutions, channel-padded convolutions; parameters and
state-dict keys unchanged) and wraps it in :class:`~.model.Accelerated` (autocast,
channels_last, torch.compile, CUDA graphs). The result follows the model convention, so
``dl.sample``, ``dl.invert``, every editing function and the trainer's sample grids take it.
No numerical module imports this package: speed is applied to a model from outside.

One concept per module: :mod:`.model` (the wrapper), :mod:`.graphs` (CUDA graph capture),
:mod:`.group_norm` (GroupNorm on NHWC memory; :mod:`.group_norm_triton`, its Triton kernels),
:mod:`.upsample` (folded upsampling convolutions), :mod:`.channels` (channel padding).
Measurements of each: docs/benchmarks.md.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

from torch import nn

from .channels import PaddedConv2d, pad_channels
from .graphs import CapturedCall, weights_fingerprint
from .group_norm import GROUP_NORM_MODES, check_group_norm_mode, group_norm_nhwc, set_group_norm
from .model import PRECISIONS, Accelerated, CompileSpec
from .upsample import UPSAMPLE_FORMS, set_upsample, upsample_conv3x3, upsample_conv3x3_transposed

__all__ = [
    "accelerate", "set_module_forms", "Accelerated", "PRECISIONS", "GROUP_NORM_MODES", "UPSAMPLE_FORMS",
    "set_group_norm", "set_upsample", "pad_channels", "group_norm_nhwc", "upsample_conv3x3",
    "upsample_conv3x3_transposed", "PaddedConv2d", "CapturedCall", "weights_fingerprint", "check_group_norm_mode",
]

# Environment variables that choose forms when the arguments leave them open, read when a
# transform is called (never at import): benchmarks/gpu_session.sh sets them per machine.
ENV_UPSAMPLE = "DIFFLAB_UPSAMPLE_CONV"
ENV_GN_KERNEL = "DIFFLAB_GN_KERNEL"
ENV_GN_PLAN = "DIFFLAB_GN_PLAN"


def set_module_forms(model: nn.Module, *, group_norm: Optional[str] = None, upsample: Optional[str] = None,
                     pad: bool = True, gn_kernel: Optional[str] = None, gn_plan: Optional[str] = None) -> nn.Module:
    """Swap ``model``'s modules, in place, for faster forms of the same function: the GroupNorms
    computed by ``group_norm`` (None: left as they are; see :mod:`.group_norm`), the upsampling
    convolutions in ``upsample`` form (None: $DIFFLAB_UPSAMPLE_CONV, else "transposed"), and
    convolutions with channel counts padded to multiples of 8 on CUDA (``pad``). ``gn_kernel``
    / ``gn_plan`` (a JSON file of benchmarks/group_norm.py) choose the Triton kernels (None:
    $DIFFLAB_GN_KERNEL / $DIFFLAB_GN_PLAN, else the measured rule). Returns ``model``."""
    # every choice resolved and checked first: a refused one leaves the model as it was
    upsample = upsample or os.environ.get(ENV_UPSAMPLE) or "transposed"
    if upsample not in UPSAMPLE_FORMS:
        raise ValueError(f"upsample (or ${ENV_UPSAMPLE}) must be one of {', '.join(UPSAMPLE_FORMS)}, "
                         f"got {upsample!r}")
    kernel, plan = None, None
    if group_norm is not None:
        check_group_norm_mode(group_norm)
        if group_norm == "triton":
            from .group_norm_triton import KERNELS, load_plan  # triton: an optional package

            kernel = gn_kernel or os.environ.get(ENV_GN_KERNEL) or None
            if kernel is not None and kernel not in KERNELS:
                raise ValueError(f"gn_kernel (or ${ENV_GN_KERNEL}) must be one of {', '.join(KERNELS)} (or unset: "
                                 f"the measured rule), got {kernel!r}")
            plan_path = gn_plan or os.environ.get(ENV_GN_PLAN) or None
            if plan_path:
                try:
                    plan = load_plan(plan_path)
                except ValueError as err:
                    raise ValueError(f"gn_plan (or ${ENV_GN_PLAN}): {err}") from None
    set_upsample(model, upsample)
    if pad:
        pad_channels(model)
    if group_norm is not None:
        set_group_norm(model, group_norm, kernel, plan)
    return model


def accelerate(model: Callable, *, precision: Optional[str] = None, channels_last: bool = False,
               compile: CompileSpec = False, cuda_graph: Union[bool, str] = False,
               group_norm: Optional[str] = None, upsample: Optional[str] = None) -> Accelerated:
    """``model`` made fast from outside: its modules swapped for faster forms of the same function
    (:func:`set_module_forms`; in place), then wrapped in :class:`Accelerated` with
    ``precision`` ("bf16", "fp16": autocast), ``channels_last``, ``compile`` (True, a mode, or
    torch.compile's keywords) and ``cuda_graph`` (True: each network call captured; "loop": a
    whole sampling run). ``group_norm="triton"`` needs ``channels_last`` (the kernels read NHWC
    memory). Keep the result and reuse it: it holds the compiled network and the graphs."""
    if group_norm is not None:
        check_group_norm_mode(group_norm)
        if group_norm == "triton" and not channels_last:
            raise ValueError("group_norm='triton' computes GroupNorm on channels_last activations; pass "
                             "channels_last=True with it (or choose group_norm=None)")
    # the module forms checked before the wrapper converts the weights: a refusal leaves the model as it was
    set_module_forms(nn.Module(), group_norm=group_norm, upsample=upsample)
    fast = Accelerated(model, precision, channels_last, compile, cuda_graph)  # checks the options first
    if isinstance(model, nn.Module):
        set_module_forms(model, group_norm=group_norm, upsample=upsample)
    return fast
