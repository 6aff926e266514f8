"""``difflab sample``: draw samples from a trained checkpoint into an image grid.

    difflab sample --ckpt runs/digits --n 64 --sampler ddim --steps 50 --guidance 3 --label 7 --seed 0 --out grid.png
    difflab sample --ckpt runs/digits --label all --n 10 --guidance 3 --out rows.png   # a row per class
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..samplers import SAMPLERS
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
    p.set_defaults(func=_main)


def _main(args) -> int:
    run = load(args.ckpt, device=args.device)
    labels, n, nrow = None, args.n, args.nrow
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
                   clip_x0=clip, ema=not args.raw, device=args.device)
    if args.save_tensor:
        torch.save(x.cpu(), args.save_tensor)
    if x.ndim != 4:
        raise ValueError(f"samples of shape {tuple(x.shape[1:])} are not images; use --save-tensor FILE.pt")
    out = save_grid(x, args.out, nrow or max(1, round(math.sqrt(n))))
    print(f"difflab sample: {n} samples from {run.path} (step {run.step}) -> {Path(out).resolve()}")
    return 0
