"""``difflab train``: train a diffusion model from a config file (YAML or JSON).

    difflab train --config configs/digits.yaml --out runs/digits
    difflab train --out runs/digits --resume --steps 6000      # continue, train longer
    torchrun --nproc_per_node 4 -m difflab.cli train --config configs/mnist_cond.yaml

Overrides: the common fields have flags (--steps, --batch-size, --lr, ...); any field can be
set with --set field.path=value (value read as YAML), e.g. --set optim.warmup_steps=100.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..training import checkpoint, config as cfgmod
from ..training.reflow_run import PAIRS_FILE
from ..training.trainer import Trainer

__all__ = ["add_parser", "resolve_config"]

# flag -> config field
_FLAGS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "optim.lr",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "log_every": "log_every",
    "ckpt_every": "ckpt_every",
    "sample_every": "sample.every",
    "grad_accum": "grad_accum",
    "compile": "compile",
    "cuda_graph": "cuda_graph",
    "max_time": "max_time",
    "threads": "cpu_threads",
}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a config file; checkpoints, logs and sample grids in --out",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML or JSON config (configs/*.yaml); optional with --resume")
    p.add_argument("--out", help="run folder (default: runs/<config file name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--max-time", type=float, metavar="SECONDS",
                   help="wall-clock budget of the run, resumes included: stop early with a checkpoint")
    p.add_argument("--batch-size", type=int, help="global batch (images per step, all processes)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:<i>")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch's CPU threads (config cpu_threads; default: one for a small model, else torch's)")
    p.add_argument("--precision", choices=cfgmod.PRECISIONS)
    p.add_argument("--compile", choices=cfgmod.COMPILE_MODES)
    p.add_argument("--cuda-graph", action="store_true", default=None,
                   help="capture the whole step as one CUDA graph and replay it (CUDA, bf16/fp32, one process)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--ckpt-every", type=int)
    p.add_argument("--sample-every", type=int, help="sample grid every N steps (0: at the end only, -1: never)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set any config field, e.g. --set optim.warmup_steps=100 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _config(args):
    return resolve_config(args, _FLAGS)


def resolve_config(args, flags: dict):
    """(config, run folder) of a training command: --config FILE (or the checkpoint's config with
    --resume --out DIR), then its flags (``flags``: argparse dest -> config field) and --set."""
    out = Path(args.out) if args.out else None
    if args.config:
        cfg = cfgmod.load_config(args.config)
        if out is None:
            out = Path("runs") / Path(args.config).stem
    elif args.resume:
        if out is None:
            raise ValueError("--resume without --config needs --out (the run folder to continue)")
        ck = checkpoint.latest_checkpoint(out)
        if ck is None:
            raise FileNotFoundError(f"nothing to resume in {str(out)!r}: no checkpoints/latest")
        cfg = cfgmod.load_config(ck / "config.yaml")
    else:
        raise ValueError("give --config FILE (or --resume --out DIR to continue a run)")
    sets = [f"{field}={json.dumps(getattr(args, flag))}" for flag, field in flags.items()
            if getattr(args, flag) is not None]
    return cfgmod.apply_overrides(cfg, sets + list(args.set)), out


def _main(args) -> int:
    cfg, out = _config(args)
    if args.resume and (out / PAIRS_FILE).is_file():  # the trainer would draw fresh noise: plain flow matching
        raise ValueError(f"{str(out)!r} is a reflow run (it holds {PAIRS_FILE}: it trains on its own noise-sample "
                         f"pairs, which difflab train does not know); continue it with difflab reflow --resume "
                         f"--out {out} and the arguments it was started with")
    if cfg.distill.method is not None:  # its loss needs the teacher, which train does not load
        if args.resume:
            raise ValueError(f"{str(out)!r} is a distilled student ({cfg.distill.method} distillation of "
                             f"{cfg.distill.teacher!r}); continue it with difflab distill --resume --out {out} and "
                             "the arguments it was started with")
        raise ValueError(f"the config is a distilled student's ({cfg.distill.method} distillation of "
                         f"{cfg.distill.teacher!r}): train a student with difflab distill --teacher RUN --method "
                         f"{cfg.distill.method} --out DIR (or remove the distill section to train this network anew)")
    with Trainer(cfg, out, resume=args.resume, progress=not args.quiet) as trainer:
        if trainer.is_main and trainer.cpu_threads_note:
            print(trainer.cpu_threads_note, flush=True)
        result = trainer.train()
    if trainer.is_main:
        early = " (stopped by max_time)" if result["stopped_by_max_time"] else ""
        print(f"difflab train: {result['step']} steps{early}, final loss {result['loss']:.4f}, "
              f"{result['mean_images_per_sec']:.0f} images/s, {result['seconds']:.1f} s")
        print(f"checkpoint: {result['checkpoint']}  (sample: difflab sample --ckpt {out})")
    return 0
