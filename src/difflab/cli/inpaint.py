"""``difflab inpaint``: fill a masked region of images with a trained model.

    difflab inpaint --ckpt runs/mnist --input digit.png --mask half:bottom --out filled.png
    difflab inpaint --ckpt runs/mnist --input a.png b.png --mask box:4,14,24,28 --n 4 --resample 5 --jump 5
    difflab inpaint --ckpt runs/mnist --input digit.png --mask mask.png --sampler ddim --steps 50
    difflab inpaint --ckpt runs/moving_digits --input clip.gif --mask future:2 --label 3 --out predicted.gif

The mask is 1 (white in a PNG) where the model fills in and 0 where the input is kept:
``box:x0,y0,x1,y1`` (columns x0..x1-1, rows y0..y1-1), ``half:left|right|top|bottom`` or a PNG
of the image's size. ``--resample R --jump J`` turns on RePaint's resampling (R = 1: the
replacement method). ``--reconstruction-guidance W`` adds Ho et al.'s (2022) reconstruction
guidance with weight w_r = W (0 = off; :mod:`difflab.editing.reconstruction`): the kept part
steers the filled part through the network's gradient at every step (a backward pass per
network call, 2 to 3 times the time). The output holds --n results per input, one row per input image.

Clips: for a run that makes clips (a video network), each --input is an animated GIF or an MP4
of one clip (an MP4 read back to the model's frame size by :func:`difflab.data.clips.read_clip_mp4`)
and the mask is a space-time mask (:func:`difflab.editing.masks.parse_clip_mask`): ``future:K``
(keep the first K frames, predict the rest), ``between:I,J,...`` (keep those frames, fill the
others: frame interpolation) or an image mask across every frame (video inpainting). The output
is a GIF or an MP4 (lossy; ``pip install "difflab[video]"``) of the results side by side, or a PNG
of a clip a row.
"""

from __future__ import annotations

from pathlib import Path

from ..data.clips import check_video_or_image_path, save_clips
from ..editing import inpaint, parse_mask, save_images
from ..editing.inpaint import STEPWISE_SAMPLERS
from ..editing.masks import parse_clip_mask
from ..editing.reconstruction import check_reconstruction_weight
from ._edit_common import Shapes, add_run_args, clip_x0, generator, labels, load_run, read_clips, read_inputs

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("inpaint", help="fill a masked region of PNG images (replacement or RePaint)",
                       description=__doc__.split("\n\n")[0])
    add_run_args(p, STEPWISE_SAMPLERS, "ddpm", 100)
    p.add_argument("--input", nargs="+", required=True, metavar="PNG",
                   help="image file(s), all the model's size (a video model: GIFs or MP4s, one clip each)")
    p.add_argument("--mask", required=True,
                   help="box:x0,y0,x1,y1 | half:left|right|top|bottom | mask PNG (white = fill); clips also "
                        "future:K | between:I,J,...")
    p.add_argument("--n", type=int, default=1, help="results per input image")
    p.add_argument("--resample", type=int, default=1, help="RePaint resamplings r (1 = replacement method)")
    p.add_argument("--jump", type=int, default=10, help="RePaint jump length j (used when --resample > 1)")
    p.add_argument("--reconstruction-guidance", type=float, default=0.0, metavar="W",
                   help="reconstruction guidance weight w_r >= 0 (Ho et al. 2022; 0 = replacement alone)")
    p.add_argument("--out", default="inpainted.png",
                   help="PNG to write (a grid when there are several results; clips: also .gif or .mp4)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    # before the run is loaded: a bad flag costs no work
    w = check_reconstruction_weight(args.reconstruction_guidance, "--reconstruction-guidance")
    if w > 0 and (getattr(args, "cuda_graph", False) or getattr(args, "fast", False)):
        raise ValueError("--reconstruction-guidance takes the gradient through the network, which a replayed CUDA "
                         "graph cannot give: leave out --cuda-graph / --fast (--precision bf16 --channels-last "
                         "--compile still apply)")
    out = check_video_or_image_path(args.out, "--out", mkdir=True)  # .mp4: imageio-ffmpeg checked here
    run, model = load_run(args, stochastic=True)
    clips = len(run.image_shape) == 4
    if not clips and out.suffix.lower() == ".mp4":
        raise ValueError(f"--out {str(out)!r}: an MP4 is for a video model's clips; {args.ckpt} makes images: write a "
                         "picture such as inpainted.png")
    if clips:  # a video network: GIFs of one clip each, space-time masks [T, 1, H, W]
        x = read_clips(args.input, run, args.n)
        mask = parse_clip_mask(args.mask, x.shape[1], x.shape[-2:]).expand_as(x)
        x_model, mask_model = x, mask
    else:
        shapes = Shapes(run)
        x = shapes.check(read_inputs(args.input, run, args.n))
        mask = parse_mask(args.mask, x.shape[-2:]).expand_as(x)
        x_model, mask_model = shapes.to_model(x), shapes.to_model(mask)
    options = {"eta": args.eta} if args.sampler == "ddim" else {}
    if args.eta and args.sampler != "ddim":
        raise ValueError("--eta is an option of --sampler ddim")
    y = inpaint(model, run.proc, x_model, mask_model, args.sampler, args.steps,
                jump_length=args.jump if args.resample > 1 else 1, resample=args.resample,
                cond=labels(args, run, len(x)), guidance=args.guidance,
                reconstruction_guidance=args.reconstruction_guidance, generator=generator(args),
                clip_x0=clip_x0(args), autoencoder=run.autoencoder, **options)
    if clips:
        out = save_clips(y, out, nrow=args.n)  # .gif, .mp4 or a frame grid, by the suffix
    else:
        out = save_images(shapes.to_image(y), out, nrow=args.n)
    kept = float((1 - mask).mean())
    guided = f", reconstruction guidance {args.reconstruction_guidance:g}" if args.reconstruction_guidance else ""
    print(f"difflab inpaint: {len(args.input)} {'clip' if clips else 'image'}(s) x {args.n}, "
          f"{100 * (1 - kept):.0f}% of the pixels filled ({args.sampler}, {args.steps} steps, resample "
          f"{args.resample}{guided}) -> {Path(out).resolve()}")
    return 0
