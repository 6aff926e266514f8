"""``difflab img2img``: SDEdit -- noise images to a strength, then denoise with a trained model.

    difflab img2img --ckpt runs/mnist --input sketch.png --strength 0.5 --out edited.png
    difflab img2img --ckpt runs/mnist_cond --input three.png --strength 0.7 --label 8 --guidance 3 --n 4

``--strength`` s in [0, 1] is the fraction of the diffusion redone, in the run's own time (it
starts at t_min + s (t_max - t_min); EDM's time is the noise level, so mild edits need small s
there): small s keeps the input's layout, s = 1 ignores the input (plain sampling). The output
holds --n results per input.
"""

from __future__ import annotations

from pathlib import Path

from ..editing import img2img, save_images
from ..samplers import SAMPLERS
from ._edit_common import Shapes, add_run_args, check_out, clip_x0, generator, labels, load_run, read_inputs

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("img2img", help="SDEdit: re-generate PNG images from a chosen noise strength",
                       description=__doc__.split("\n\n")[0])
    add_run_args(p, sorted(SAMPLERS), "ddim", 50)
    p.add_argument("--input", nargs="+", required=True, metavar="PNG", help="image file(s), all the model's size")
    p.add_argument("--strength", type=float, default=0.5,
                   help="noise strength in [0, 1] (0: the input as it is; default 0.5)")
    p.add_argument("--n", type=int, default=1, help="results per input image")
    p.add_argument("--out", default="img2img.png", help="PNG to write (a grid when there are several results)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    out = check_out(args)
    run, model = load_run(args)
    shapes = Shapes(run)
    x = shapes.check(read_inputs(args.input, run, args.n))
    y = img2img(model, run.proc, shapes.to_model(x), args.strength, args.sampler, args.steps, eta=args.eta,
                cond=labels(args, run, len(x)), guidance=args.guidance, generator=generator(args),
                clip_x0=clip_x0(args), autoencoder=run.autoencoder)
    out = save_images(shapes.to_image(y), out, nrow=args.n)
    print(f"difflab img2img: {len(args.input)} image(s) x {args.n} at strength {args.strength} "
          f"({args.sampler}, {args.steps} steps) -> {Path(out).resolve()}")
    return 0
