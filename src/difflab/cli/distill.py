"""``difflab distill``: a 1- to 4-step student of a trained run.

    difflab distill --teacher runs/digits --method consistency --out runs/digits_cd        # 1 step
    difflab distill --teacher runs/digits --method progressive --out runs/digits_pd        # 64 -> 4 steps
    difflab distill --teacher runs/digits --method guided --out runs/digits_lcm            # any w, 1-4 steps
    difflab distill --teacher runs/digits --method consistency --out runs/digits_cd --resume
    difflab sample --ckpt runs/digits_cd --label all --n 10 --steps 1 --out cd.png

Methods: progressive distillation (Salimans & Ho 2022: rounds that halve --start-steps DDIM steps
down to --student-steps; the rounds before the last in OUT/rounds/), consistency distillation
(Song et al. 2023) and guided distillation (latent consistency models: the guidance scale as an
input). The student's config is the teacher's (or --config, which must describe the teacher's
process and data) with the method's changes; --set changes any field (e.g. --set consistency.s1=64).
"""

from __future__ import annotations

import json
import sys

from ..training.config import DISTILL_METHODS
from ..training.distill_run import distill

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("distill", help="distil a trained run into a 1- to 4-step student",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="the teacher's run folder, checkpoint folder or export")
    p.add_argument("--method", required=True, choices=DISTILL_METHODS)
    p.add_argument("--out", required=True, help="run folder of the student")
    p.add_argument("--config", help="the student's config (default: the teacher's)")
    p.add_argument("--steps", type=int, help="optimizer steps of the student (each round's, for progressive)")
    p.add_argument("--start-steps", type=int, default=64, help="progressive: the teacher's DDIM steps (default 64)")
    p.add_argument("--student-steps", type=int, default=4, help="progressive: the final student's steps (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:<i> (default: the config's)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch's CPU threads (default: one for a small model, else torch's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="set a field of the student's config, e.g. --set consistency.s1=64 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_main)


def _main(args) -> int:
    for flag in ("steps", "start_steps", "student_steps", "threads"):  # before any work
        value = getattr(args, flag)
        low = 0 if flag == "threads" else 1
        if value is not None and value < low:
            raise ValueError(f"--{flag.replace('_', '-')} must be {'>= 0' if low == 0 else 'a positive integer'}, "
                             f"got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.method != "progressive" and (args.start_steps != 64 or args.student_steps != 4):
        raise ValueError(f"--start-steps and --student-steps are progressive distillation's; --method {args.method} "
                         "trains one student that samples in any number of steps (difflab sample --steps K)")
    result = distill(args.teacher, args.out, args.method, config=args.config, train_steps=args.steps,
                     start_steps=args.start_steps, steps=args.student_steps, overrides=args.set, seed=args.seed,
                     device=args.device, cpu_threads=args.threads, resume=args.resume, progress=not args.quiet,
                     say=lambda line: print(line, file=sys.stderr, flush=True))
    last = result["rounds"][-1]
    print(f"difflab distill: {args.method} student in {args.out} ({len(result['rounds'])} round"
          f"{'s' if len(result['rounds']) > 1 else ''}; checkpoint {last['checkpoint']})")
    print(f"sample: difflab sample --ckpt {args.out}" + (f" --steps {args.student_steps}" if args.method == "progressive"
                                                          else " --steps 1"))
    print(json.dumps({"rounds": result["rounds"]}))
    return 0
