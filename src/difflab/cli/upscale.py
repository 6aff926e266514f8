"""``difflab upscale``: super-resolution with a model conditioned on low-resolution images.

    difflab train --config configs/mnist_superres.yaml --out runs/mnist_superres   # train (loss: superres)
    difflab upscale --ckpt runs/mnist_superres --input low14.png --out high28.png
    difflab upscale --ckpt runs/mnist_superres --input digit28.png --from-highres --n 4 --out sr.png

Training is ``difflab train`` with ``loss: superres`` in the config: the low-res input is the data
image averaged over scale x scale blocks. ``--from-highres`` takes full-size images and downsamples them first (to compare the
result with the original). The output holds --n results per input, one row per input image.
"""

from __future__ import annotations

from pathlib import Path

from ..editing import downsample, save_images, upscale
from ..models.superres import lowres_model
from ..samplers import SAMPLERS
from ._edit_common import check_out, clip_x0, generator, labels, load_run, read_inputs
from .speed import add_speed_args

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("upscale", help="super-resolve PNG images with a super-resolution model",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="super-resolution run folder or checkpoint folder")
    p.add_argument("--input", nargs="+", metavar="PNG", help="low-resolution image file(s)")
    p.add_argument("--from-highres", action="store_true", help="the inputs are full-size: downsample them first")
    p.add_argument("--sampler", default="ddim", choices=sorted(SAMPLERS))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--label", type=int, default=None, help="class label for a class-conditional model")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--n", type=int, default=1, help="results per input image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--no-clip", action="store_true",
                   help="don't clamp the x0 estimates to the run's data range ([-1, 1] for images)")
    p.add_argument("--out", default=None, help="PNG to write (default upscaled.png)")
    add_speed_args(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    if not args.ckpt or not args.input:
        raise ValueError("give --ckpt RUN and --input PNG... to upscale (train a model with "
                         "`difflab train --config configs/mnist_superres.yaml --out RUN`)")
    out = check_out(args, "upscaled.png")
    run, model = load_run(args, whole_run=False)  # (a captured run would keep the first low-res images)
    sr = lowres_model(model)
    if sr is None:
        raise ValueError(f"{args.ckpt} holds a {run.config.model.name!r} model without low-resolution "
                         "conditioning; upscale needs a 'superres' model (difflab train "
                         "--config configs/mnist_superres.yaml --out RUN)")
    x = read_inputs(args.input, run, args.n)
    H, W = run.image_shape[-2:]
    if args.from_highres:
        if tuple(x.shape[-2:]) != (H, W):
            raise ValueError(f"--from-highres inputs must be {W}x{H}, got {x.shape[-1]}x{x.shape[-2]}")
        x = downsample(x, sr.scale)
    elif tuple(x.shape[-2:]) != (H // sr.scale, W // sr.scale):
        raise ValueError(f"low-resolution inputs must be {W // sr.scale}x{H // sr.scale} for this x{sr.scale} "
                         f"model (got {x.shape[-1]}x{x.shape[-2]}); pass full-size images with --from-highres")
    y = upscale(model, run.proc, x, args.sampler, args.steps, eta=args.eta, cond=labels(args, run, len(x)),
                guidance=args.guidance, generator=generator(args), clip_x0=clip_x0(args))
    out = save_images(y, out, nrow=args.n)
    print(f"difflab upscale: {len(args.input)} image(s) x {args.n}, {x.shape[-1]}x{x.shape[-2]} -> "
          f"{y.shape[-1]}x{y.shape[-2]} ({args.sampler}, {args.steps} steps) -> {Path(out).resolve()}")
    return 0
