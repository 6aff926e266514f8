"""The speed flags of the sampling and editing commands: ``difflab.accel.accelerate``'s options.

    difflab sample --ckpt RUN --device cuda --precision bf16 --channels-last --compile --cuda-graph loop
    difflab inpaint --ckpt RUN --input x.png --mask half:bottom --device cuda --fast

``--fast`` is the fastest setting measured on a GPU (docs/benchmarks.md): the network stored in
bf16, channels_last, compiled, the whole run as one CUDA graph (a graph per network call for a
sampler that draws noise as it runs, whose noise must come from --seed) and difflab's Triton
GroupNorm where triton is installed. Explicit flags win.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Callable

import torch

from ..accel import GROUP_NORM_MODES, PRECISIONS, accelerate, set_module_forms

__all__ = ["add_speed_args", "accelerated"]


def add_speed_args(p: argparse.ArgumentParser) -> None:
    speed = p.add_argument_group("speed", "how the network runs (difflab.accel.accelerate's options of the same names)")
    speed.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast the network (default fp32)")
    speed.add_argument("--channels-last", action="store_true", help="NHWC activations (faster convolutions on GPUs)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the network (minutes once, then faster)")
    speed.add_argument("--cuda-graph", nargs="?", const=True, default=False, choices=["loop"],
                       help="replay each network call as a CUDA graph (CUDA only; no host overhead per step); "
                            "--cuda-graph loop: the whole run as one graph")
    speed.add_argument("--group-norm", choices=GROUP_NORM_MODES,
                       help="how the U-Net's GroupNorms run: torch's kernel (never), on the NHWC view (compile, "
                            "always), or difflab's Triton kernels (triton: CUDA, with --channels-last)")
    speed.add_argument("--weights", choices=["fp32", "bf16", "fp16"],
                       help="the dtype the network is stored in while sampling (default: as saved, fp32); bf16 / "
                            "fp16 halve its memory and need no weight casts, and compute under --precision of "
                            "that type, which they imply (the sampler's own updates stay fp32)")
    speed.add_argument("--fast", action="store_true",
                       help="the fastest GPU setting measured: --weights bf16 (so --precision bf16; with "
                            "--precision fp16 the weights are stored in fp16) --channels-last --compile "
                            "--cuda-graph loop (per call for a sampler that draws noise), and --group-norm triton "
                            "where triton is installed (CUDA only; explicit flags win)")


_DEFAULTS = {"precision": None, "channels_last": False, "compile": False, "cuda_graph": False, "group_norm": None,
             "weights": None, "fast": False}


def _resolve(args, device: torch.device, deterministic: bool) -> dict:
    """accelerate()'s options from the flags, refused before any work where they cannot run;
    sets ``args.weights`` (the dtype to store the network in) as --fast implies it."""
    for flag, default in _DEFAULTS.items():  # a namespace built without the speed flags: none set
        if not hasattr(args, flag):
            setattr(args, flag, default)
    if args.fast and device.type == "cuda":
        args.weights = args.weights or args.precision or "bf16"
        if deterministic:  # (a stochastic run's noise must come from --seed: a graph per call)
            args.cuda_graph = args.cuda_graph or "loop"
    if args.weights in ("bf16", "fp16"):
        if args.precision not in (None, args.weights):
            raise ValueError(f"--weights {args.weights} stores the network in {args.weights}, which computes under "
                             f"{args.weights} autocast: leave --precision out or set it to {args.weights} (got "
                             f"--precision {args.precision})")
        args.precision = args.weights
    if args.fast:
        args.precision = args.precision or "bf16"
        args.channels_last = args.compile = True
        args.cuda_graph = args.cuda_graph or True  # --fast --cuda-graph loop keeps the loop
        if args.group_norm is None and device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            args.group_norm = "triton"
    if args.cuda_graph and device.type != "cuda":
        flag = "--fast" if args.fast else "--cuda-graph"
        raise ValueError(f"{flag} replays CUDA graphs, which needs a CUDA device; got --device {device}. Use "
                         "--device cuda, or leave it out (on a CPU: --precision bf16 --channels-last --compile)")
    if args.cuda_graph == "loop" and not deterministic:
        raise ValueError("--cuda-graph loop captures the whole run, which this command cannot: either its sampler "
                         "draws noise as it runs (--sampler ddpm, --eta > 0, inpainting), which a captured run takes "
                         "from the GPU's own generator, not from --seed, or it binds its inputs to the network "
                         "(upscale); use --cuda-graph (per network call)")
    if args.group_norm == "triton" and not args.channels_last:
        raise ValueError("--group-norm triton runs on channels_last activations: add --channels-last (or --fast)")
    return {"precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
            "cuda_graph": args.cuda_graph, "group_norm": args.group_norm}


def accelerated(model: Callable, args, device: torch.device, deterministic: bool = True) -> Callable:
    """``model`` as the speed flags ask: stored in ``--weights``, then
    :func:`difflab.accel.accelerate`; without flags, its modules in their faster forms only."""
    options = _resolve(args, device, deterministic)
    if args.weights is not None:
        model.to(PRECISIONS[args.weights] or torch.float32)
    if all(v in (None, False) for v in options.values()):
        return set_module_forms(model)
    return accelerate(model, **options)
