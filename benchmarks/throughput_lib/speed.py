"""The one place where this harness hands difflab its speed options, and reads their environment.

difflab's speed options -- precision, channels_last, compile, cuda_graph and the GroupNorm mode,
and the release of what the fast sampler caches -- are moving to their own package
(``difflab.accel``). Every use of them by benchmarks/throughput.py goes through a function here,
so that such a move changes this file only (and they are imported when called, so that the
rest of the harness -- the network table, --report -- imports whatever their state):

* ``sampling_call``: the one ``dl.sample`` call of the sampling rows;
* ``trainer_speed``: the speed fields of the training rows' ``TrainConfig``;
* ``set_group_norm_mode``: the process-wide GroupNorm mode a row runs under;
* ``release_model``: what the fast sampler cached for a network, given back;
* ``kernel_environment``: the environment variables that choose difflab's kernels. This
  harness sets none of DIFFLAB_GN_KERNEL, DIFFLAB_GN_PLAN and DIFFLAB_UPSAMPLE_CONV
  (benchmarks/gpu_session.sh sets them before a run); it reads the first two here, and only
  here, to record them in the results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor, nn

import difflab as dl


def sampling_speed(opts: dict) -> dict:
    """A sampling row's options as ``dl.sample``'s keyword arguments (fp32 is its default)."""
    kw = {k: opts[k] for k in ("channels_last", "compile", "cuda_graph") if k in opts}
    if opts.get("precision", "fp32") != "fp32":
        kw["precision"] = opts["precision"]
    return kw


def sampling_call(model: nn.Module, proc, noise: Tensor, steps: int, speed: dict, device) -> Tensor:
    """One DDIM batch from ``noise``, x0 clipped to [-1, 1], with the speed options ``speed``
    (``sampling_speed``'s keyword arguments)."""
    return dl.sample(model, proc, noise.shape, "ddim", steps, noise=noise, clip_x0=1.0, device=device, **speed)


def release_model(model: nn.Module) -> None:
    """Give back what the fast sampler keeps for ``model`` (compiled code, CUDA graphs)."""
    from difflab.samplers.fast import release

    release(model)


def trainer_speed(opts: dict) -> dict:
    """A training row's options as ``TrainConfig`` fields. The Trainer enters its config's
    GroupNorm mode around each step, over the process-wide one."""
    return dict(
        precision=opts.get("precision", "fp32"), channels_last=opts.get("channels_last", False),
        compile=opts.get("compile", "none"), compile_options=opts.get("compile_options", {}),
        activation_memory_budget=opts.get("activation_memory_budget"),
        cuda_graph=opts.get("cuda_graph", False),
        group_norm=opts.get("gn_nhwc", "never"),
    )


def set_group_norm_mode(mode: str) -> str:
    """Set difflab's process-wide GroupNorm mode (the NHWC view for channels_last activations,
    models/norm.py) and return the one it replaces."""
    from difflab.models.norm import set_nhwc_group_norm

    return set_nhwc_group_norm(mode)


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
