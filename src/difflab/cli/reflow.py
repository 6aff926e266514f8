"""``difflab reflow``: the next rectified flow of a trained flow (Liu et al. 2022).

    difflab reflow --ckpt runs/digits_flow --pairs 10000 --out runs/digits_reflow
    difflab reflow --ckpt runs/digits_flow --pairs 10000 --out runs/digits_reflow --resume   # after an interruption

Draws --pairs (noise, sample) pairs from the run's EMA model (--steps Euler steps of its ODE),
trains a flow on them from the run's weights with the run's config (--train-steps, default the
run's own), into --out as ``difflab train`` writes a run (``difflab sample --ckpt OUT``), and
reports both flows' straightness (also in OUT/reflow.json; the pairs in OUT/pairs.safetensors).
"""

from __future__ import annotations

import math
import sys

from ..devices import resolve_device
from ..training.checkpoint import load
from ..training.reflow_run import reflow
from ._errors import check_memory

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("reflow", help="train the straighter next rectified flow of a flow run on its own pairs",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="the flow's run folder, checkpoint folder or exported .safetensors")
    p.add_argument("--pairs", type=int, required=True, help="how many (noise, sample) pairs to draw and train on")
    p.add_argument("--out", required=True, help="run folder of the new flow")
    p.add_argument("--steps", type=int, default=100,
                   help="Euler steps of the ODE, for the pairs and the straightness (default 100)")
    p.add_argument("--train-steps", type=int, help="optimizer steps of the new flow (default: the run's)")
    p.add_argument("--eval-n", type=int, default=1000, help="noise draws the straightness is measured on")
    p.add_argument("--seed", type=int, default=0, help="seeds the pairs' noise and the training")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:<i> (default: the run's config)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch's CPU threads (default: one for a small model, else torch's)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted reflow in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args) -> int:
    # the flags before any work: a typo costs no pairs
    for flag in ("pairs", "steps", "eval_n", "train_steps", "threads"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "threads" else 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be {'>= 0' if flag == 'threads' else 'a positive integer'}"
                             f", got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    run = load(args.ckpt)
    device = resolve_device(args.device or run.config.device, "--device")
    # the pairs (noise and sample) and two per-step tensors of a batch at least
    check_memory(2 * args.pairs * math.prod(run.sample_shape) * 4, device, f"--pairs {args.pairs}",
                 "lower --pairs")
    report = reflow(run, args.out, args.pairs, steps=args.steps, train_steps=args.train_steps, seed=args.seed,
                    eval_n=args.eval_n, device=args.device, cpu_threads=args.threads, resume=args.resume,
                    progress=not args.quiet, say=lambda line: print(line, file=sys.stderr, flush=True))
    s = report["straightness"]
    print(f"difflab reflow: straightness {s['before']:.4g} -> {s['after']:.4g} ({args.pairs} pairs, "
          f"{args.steps} Euler steps, {report['eval_n']} noise draws)")
    print(f"checkpoint: {report['checkpoint']}  (sample: difflab sample --ckpt {args.out})")
    return 0
