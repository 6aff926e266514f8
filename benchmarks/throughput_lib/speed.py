"""The one place where this harness hands difflab its speed options, and reads their environment.

difflab's speed is a transform of the model (``difflab.accel.accelerate``); every use of it by
benchmarks/throughput.py goes through a function here (imported when called, so that the rest
of the harness -- the network table, --report -- imports whatever their state):

* ``sampling_speed``: a sampling row's options as ``accelerate``'s keyword arguments;
* ``accelerated``: the row's network made fast with them (or as it is, without any);
* ``sampling_call``: the one ``dl.sample`` call of the sampling rows;
* ``trainer_speed``: the speed fields of the training rows' ``TrainConfig``;
* ``release_model``: the compiled code and CUDA graphs an accelerated network holds, given back;
* ``kernel_environment``: the environment variables that choose difflab's kernels. This
  harness sets none of DIFFLAB_GN_KERNEL, DIFFLAB_GN_PLAN and DIFFLAB_UPSAMPLE_CONV
  (benchmarks/gpu_session.sh sets them before a run; ``accelerate`` reads them when called); it
  reads the first two here, and only here, to record them in the results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor, nn

import difflab as dl


def sampling_speed(opts: dict) -> dict:
    """A sampling row's options as ``dl.accel.accelerate``'s keyword arguments (fp32, no
    GroupNorm swap: its defaults)."""
    kw = {k: opts[k] for k in ("channels_last", "compile", "cuda_graph") if k in opts}
    if opts.get("precision", "fp32") != "fp32":
        kw["precision"] = opts["precision"]
    if opts.get("gn_nhwc", "never") != "never":
        kw["group_norm"] = opts["gn_nhwc"]
    return kw


def accelerated(model: nn.Module, speed: dict) -> nn.Module:
    """``model`` made fast with ``speed`` (``sampling_speed``'s keyword arguments): the module
    forms and the wrapper of ``dl.accel.accelerate``; always, so a plain row computes the
    upsampling in the same form as the others."""
    return dl.accel.accelerate(model, **speed)


def sampling_call(model: nn.Module, proc, noise: Tensor, steps: int, device) -> Tensor:
    """One DDIM batch from ``noise``, x0 clipped to [-1, 1]."""
    return dl.sample(model, proc, noise.shape, "ddim", steps, noise=noise, clip_x0=1.0, device=device)


def release_model(model: nn.Module) -> None:
    """Give back the compiled code and CUDA graphs an accelerated ``model`` holds."""
    if isinstance(model, dl.accel.Accelerated):
        model.release()


def trainer_speed(opts: dict) -> dict:
    """A training row's options as ``TrainConfig`` fields (the Trainer swaps its network's
    GroupNorms to the config's mode)."""
    return dict(
        precision=opts.get("precision", "fp32"), channels_last=opts.get("channels_last", False),
        compile=opts.get("compile", "none"), compile_options=opts.get("compile_options", {}),
        activation_memory_budget=opts.get("activation_memory_budget"),
        cuda_graph=opts.get("cuda_graph", False),
        group_norm=opts.get("gn_nhwc", "never"),
    )


def kernel_environment() -> dict:
    """The kernel choices the environment made, for the results' meta: DIFFLAB_GN_KERNEL (None
    when unset), and DIFFLAB_GN_PLAN's table when set (their way per shape, as measured before
    the rows)."""
    v = {"DIFFLAB_GN_KERNEL": os.environ.get("DIFFLAB_GN_KERNEL")}
    if os.environ.get("DIFFLAB_GN_PLAN"):
        try:
            v["DIFFLAB_GN_PLAN"] = json.loads(Path(os.environ["DIFFLAB_GN_PLAN"]).read_text())
        except (OSError, ValueError) as err:
            v["DIFFLAB_GN_PLAN"] = f"unreadable: {err}"
    return v
