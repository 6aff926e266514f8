"""``difflab interpolate``: a strip of images morphing between two images or two noises.

    difflab interpolate --ckpt runs/mnist --input three.png eight.png --frames 8 --out strip.png
    difflab interpolate --ckpt runs/mnist --seeds 1 2 --frames 10 --out strip.png

Images are DDIM-inverted to x_T (``--steps`` steps); noises come from two seeds. The frames
are DDIM-decoded from the spherical interpolation of the two x_T. ``--reconstruct`` writes
only the round trip of each input (inversion and back), to check the inversion.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..editing import interpolate, reconstruct, save_images
from ._edit_common import Shapes, check_out, labels, load_run, read_inputs
from .speed import add_speed_args

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("interpolate", help="spherical interpolation between two images (DDIM-inverted) or noises",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="run folder, checkpoint folder or exported .safetensors file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PNG", help="two image files (one or more with --reconstruct)")
    src.add_argument("--seeds", nargs=2, type=int, metavar=("A", "B"), help="two noise seeds")
    p.add_argument("--frames", type=int, default=8, help="images in the strip, both ends included")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps for inversion and decoding")
    p.add_argument("--label", type=int, default=None, help="class label for a class-conditional model")
    p.add_argument("--guidance", type=float, default=1.0, help="guidance scale for decoding (needs --label)")
    p.add_argument("--reconstruct", action="store_true", help="write each input's inversion round trip instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--out", default="interpolation.png", help="PNG strip to write")
    add_speed_args(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    out = check_out(args)
    run, model = load_run(args)
    shapes = Shapes(run)
    cond = labels(args, run, 1)
    label = int(cond[0]) if cond is not None else None
    if args.input is not None:
        x = shapes.check(read_inputs(args.input, run))
        if args.reconstruct:
            c = cond.expand(len(x)) if cond is not None else None
            y = reconstruct(model, run.proc, shapes.to_model(x), args.steps, cond=c, autoencoder=run.autoencoder)
            y = shapes.to_image(y)
            err = (y - x).abs().mean().item()
            out = save_images(torch.cat([x, y]), out, nrow=len(x))
            print(f"difflab interpolate --reconstruct: mean |x - x'| = {err:.4f} (pixels in [-1, 1]) -> "
                  f"{Path(out).resolve()} (inputs on top, round trips below)")
            return 0
        if len(x) != 2:
            raise ValueError(f"--input needs exactly two images to interpolate between, got {len(x)}")
        a, b = shapes.to_model(x)
        strip = interpolate(model, run.proc, a, b, args.frames, args.steps, cond=label, guidance=args.guidance,
                            autoencoder=run.autoencoder)
    else:
        shape = tuple(run.sample_shape)
        a = torch.randn(shape, generator=torch.Generator().manual_seed(args.seeds[0]))
        b = torch.randn(shape, generator=torch.Generator().manual_seed(args.seeds[1]))
        strip = interpolate(model, run.proc, a, b, args.frames, args.steps, latents=True, cond=label,
                            guidance=args.guidance, autoencoder=run.autoencoder)  # (a latent run's: decoded)
    out = save_images(shapes.to_image(strip), out, nrow=args.frames)
    print(f"difflab interpolate: {args.frames} frames ({args.steps} DDIM steps) -> {Path(out).resolve()}")
    return 0
