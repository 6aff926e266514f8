"""``difflab sample``: draw samples from a trained checkpoint into an image grid.

    difflab sample --ckpt runs/digits --n 64 --sampler ddim --steps 50 --guidance 3 --label 7 --seed 0 --out grid.png
    difflab sample --ckpt runs/digits --label all --n 10 --guidance 3 --out rows.png   # a row per class
    difflab sample --ckpt runs/mnist_cond --device cuda --fast --n 1024 --out grid.png  # bf16, compiled, graphs, Triton norms
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..devices import resolve_device
from ..editing.superres import refuse_superres
from ..evaluation.grids import check_image_path, make_parent
from ..models.norm import MODES as GROUP_NORM_MODES
from ..models.norm import check_nhwc_group_norm_mode
from ..samplers import SAMPLERS
from ..samplers.fast import PRECISIONS
from ..training.checkpoint import load
from ..training.generate import class_rows, save_grid

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a trained checkpoint into a PNG grid",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="run folder, checkpoint folder or exported .safetensors file")
    p.add_argument("--n", type=int, default=64, help="number of samples (with --label all: per class)")
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--label", default=None,
                   help="class of every sample, or 'all' for a row per class (conditional models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-x0", type=float, default=None,
                   help="clamp each step's x0 estimate to [-c, c] (default: the run's sample.clip_x0)")
    p.add_argument("--no-clip", action="store_true", help="no x0 clipping, whatever the run's config says")
    p.add_argument("--nrow", type=int, help="images per grid row (default: about sqrt(n))")
    p.add_argument("--device", default="cpu")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--save-tensor", metavar="FILE", help="also save the samples as a torch tensor (.pt)")
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    speed = p.add_argument_group("speed", "the sampler's speed options (dl.sample's keywords of the same names)")
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
                       help="the fastest GPU setting measured so far: --weights bf16 (so --precision bf16; "
                            "with --precision fp16 the weights are stored in fp16) --channels-last --compile "
                            "--cuda-graph loop (per call for --sampler ddpm or --eta > 0), and --group-norm triton "
                            "where triton is installed (CUDA only; explicit flags win)")
    p.set_defaults(func=_main)


def speed_options(args, device: torch.device) -> dict:
    """dl.sample's speed keywords from the flags, refused before any work where they cannot run
    (``args.weights`` is set by ``--fast``: the caller stores the network in that dtype)."""
    deterministic = getattr(args, "sampler", "ddim") != "ddpm" and getattr(args, "eta", 0.0) == 0
    if args.fast and device.type == "cuda":
        # the fastest measured (H100, 2026-11-26): the network stored in bf16 and the whole run as
        # one CUDA graph, 519 images/s against 494 with float32 weights and a graph per call
        args.weights = getattr(args, "weights", None) or args.precision or "bf16"
        if deterministic:  # (a stochastic run's noise must come from --seed: a graph per call)
            args.cuda_graph = args.cuda_graph or "loop"
    weights = getattr(args, "weights", None)
    if weights in ("bf16", "fp16"):
        if args.precision not in (None, weights):
            raise ValueError(f"--weights {weights} stores the network in {weights}, which computes under {weights} "
                             f"autocast: leave --precision out or set it to {weights} (got --precision {args.precision})")
        args.precision = weights
    if args.fast:
        args.precision = args.precision or "bf16"
        args.channels_last = args.compile = True
        args.cuda_graph = args.cuda_graph or True  # --fast --cuda-graph loop keeps the loop
        if args.group_norm is None and device.type == "cuda":
            try:  # difflab's Triton GroupNorm where the triton package is there (1.74x vs 1.42x, H200)
                check_nhwc_group_norm_mode("triton")
                args.group_norm = "triton"
            except ValueError:
                pass
    if args.cuda_graph and device.type != "cuda":
        flag = "--fast" if args.fast else "--cuda-graph"
        raise ValueError(f"{flag} replays CUDA graphs, which needs a CUDA device; got --device {device}. Use "
                         "--device cuda, or leave it out (on a CPU: --precision bf16 --channels-last --compile)")
    if args.cuda_graph == "loop" and not deterministic:
        raise ValueError("--cuda-graph loop captures the whole run, whose noise then comes from the GPU's own "
                         "generator, not from --seed: for --sampler ddpm or --eta > 0 use --cuda-graph (per "
                         "network call)")
    if args.group_norm == "triton" and not args.channels_last:
        raise ValueError("--group-norm triton runs on channels_last activations: add --channels-last (or --fast)")
    options = {"precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
               "cuda_graph": args.cuda_graph, "group_norm": args.group_norm}
    return {k: v for k, v in options.items() if v not in (None, False)}


def _main(args) -> int:
    # everything that can be checked is checked before sampling, so a typo costs no samples
    if args.nrow is not None and args.nrow < 1:
        raise ValueError(f"--nrow (images per grid row) must be >= 1, got {args.nrow}")
    out = check_image_path(args.out, "--out", mkdir=True)
    tensor_out = _tensor_path(args.save_tensor) if args.save_tensor is not None else None
    device = resolve_device(args.device, "--device")
    options = speed_options(args, device)
    run = load(args.ckpt, device=device)
    net = run.model if args.raw else run.ema_model  # the network sampled from
    if args.weights is not None:  # stored in that dtype (the other network is not used)
        net.to(PRECISIONS[args.weights] or torch.float32)
    refuse_superres(net, "`difflab sample`")
    if len(run.image_shape) != 3 and tensor_out is None:
        raise ValueError(f"{args.ckpt} makes samples of shape {tuple(run.image_shape)}, not images, so there is "
                         "no PNG grid to write; pass --save-tensor FILE.pt")
    labels, n, nrow = None, args.n, args.nrow
    if args.label is None and args.guidance != 1.0:
        if run.num_classes is None:
            raise ValueError(f"--guidance {args.guidance:g} needs a class-conditional model; {args.ckpt} is "
                             "unconditional: leave --guidance at 1")
        raise ValueError(f"--guidance {args.guidance:g} needs --label: the class to guide towards "
                         f"(0..{run.num_classes - 1}), or 'all' for a row per class")
    if args.label is not None:
        if run.num_classes is None:
            raise ValueError(f"--label needs a class-conditional model; {args.ckpt} is unconditional")
        if args.label == "all":
            labels = class_rows(run.num_classes, args.n)
            n, nrow = len(labels), nrow or args.n
        else:
            try:
                labels = int(args.label)
            except ValueError:
                raise ValueError(f"--label must be a class index 0..{run.num_classes - 1} or 'all', "
                                 f"got {args.label!r}") from None
    clip = None if args.no_clip else (args.clip_x0 if args.clip_x0 is not None else ...)
    x = run.sample(n, args.sampler, args.steps, args.guidance, labels, args.seed, eta=args.eta,
                   clip_x0=clip, ema=not args.raw, device=device, **options)
    written = []
    if x.ndim == 4:
        written.append(save_grid(x, out, nrow or max(1, round(math.sqrt(n)))))
    if tensor_out is not None:
        torch.save(x.cpu(), tensor_out)
        written.append(tensor_out)
    print(f"difflab sample: {n} samples from {run.path} (step {run.step}) -> "
          f"{', '.join(str(Path(w).resolve()) for w in written)}")
    return 0


def _tensor_path(path: str) -> Path:
    """``--save-tensor``'s file, its folder created (as for --out), before any sampling."""
    p = Path(path)
    if path == "" or p.is_dir():
        raise ValueError(f"--save-tensor {path!r} is {'empty' if path == '' else 'a folder'}; name a file such as "
                         "samples.pt")
    make_parent(p, "--save-tensor")
    return p
