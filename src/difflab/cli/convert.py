"""``difflab convert``: diffusers checkpoints in and out (training/diffusers_format.py, docs/diffusers.md).

    difflab convert --from-diffusers ddpm-cifar10/ --out runs/cifar10    # a DDPMPipeline or unet/ folder
    difflab sample --ckpt runs/cifar10 --n 16 --out grid.png              # any sampler, editing, eval
    difflab convert --to-diffusers runs/digits --out digits_ddpm/        # DDPMPipeline.from_pretrained(...)
"""

from __future__ import annotations

from ..training.diffusers_format import from_diffusers, to_diffusers

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a diffusers UNet2DModel folder to a run, or a run to a DDPMPipeline",
                       description=__doc__.split("\n\n")[0])
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-diffusers", metavar="DIR",
                     help="a diffusers pipeline folder (model_index.json, unet/, scheduler/) or UNet2DModel folder")
    way.add_argument("--to-diffusers", metavar="RUN", help="a run folder or checkpoint folder of difflab's U-Net")
    p.add_argument("--out", required=True, help="the run folder (--from-diffusers) or pipeline folder "
                   "(--to-diffusers) to write; must not exist")
    p.add_argument("--scheduler", metavar="FILE", help="--from-diffusers: the DDPMScheduler / DDIMScheduler "
                   "scheduler_config.json (default: the folder's own)")
    p.add_argument("--data", metavar="FOLDER", help="--from-diffusers: images of the model's kind, the run's "
                   "data (difflab eval's default reference)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="--from-diffusers: a config override of the run, e.g. sample.clip_x0=2 (repeatable)")
    p.add_argument("--raw", action="store_true", help="--to-diffusers: the raw weights instead of the EMA weights")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if args.to_diffusers is not None:
        unused = [flag for flag, value in (("--scheduler", args.scheduler), ("--data", args.data),
                                           ("--set", args.set)) if value]
        if unused:
            raise ValueError(f"{', '.join(unused)} apply to --from-diffusers; --to-diffusers writes the run's own "
                             "process and weights")
        done = to_diffusers(args.to_diffusers, args.out, ema=not args.raw)
        weights = "raw" if args.raw else "EMA"
        print(f"difflab convert: {weights} weights of {args.to_diffusers} ({done.parameters / 1e6:.2f}M parameters) "
              f"-> diffusers DDPMPipeline {done.out}  (diffusers.DDPMPipeline.from_pretrained({str(done.out)!r}))")
        return 0
    if args.raw:
        raise ValueError("--raw applies to --to-diffusers; a converted run's model and EMA weights are both the "
                         "diffusers weights")
    done = from_diffusers(args.from_diffusers, args.out, scheduler=args.scheduler, data=args.data,
                          overrides=args.set)
    print(f"difflab convert: diffusers UNet2DModel {args.from_diffusers} ({done.parameters / 1e6:.2f}M parameters, "
          f"{done.scheduler}) -> difflab run {done.out}  (sample: difflab sample --ckpt {done.out})")
    for note in done.notes:
        print(f"note: {note}")
    return 0
