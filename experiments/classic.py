"""The classic experiments of the field, end to end, into one report (not part of the difflab package).

    python experiments/classic.py --size cpu --out docs/experiments     # reduced size, 2 CPU cores
    python experiments/classic.py --size gpu --out docs/experiments_gpu --device cuda   # full size
    python experiments/classic.py --size gpu --out docs/experiments_gpu --mnist-run runs/mnist_cond
        # full size on the run that benchmarks/mnist_cond_gpu.py trained (evaluation only)

Run from a clone of the repository (the MNIST folder defaults to ../shared/data/mnist beside it).
Finished evaluation rows are kept in OUT/runs/mnist_rows.json (for one network and sample count),
so a run stopped by a time limit continues where it stopped when started again.

(1) 2D (experiments/toy2d.py): a Swiss roll's forward and reverse process, DDPM (and DDIM) samples
with sliced Wasserstein / MMD / coverage, classifier-free guidance on the labelled 8-Gaussians at
several scales (accuracy of the requested mode, precision, coverage). (2) MNIST
(experiments/mnist.py, experiments/sampling.py): the forward process on example digits,
unconditional (null label) against conditional generation from one network, the guidance sweep
(FID, precision, recall, accuracy), few-step sampling against 1000-step DDPM (respaced DDPM,
DDIM with eta = 1 and 0, DPM-Solver++ 2M/3M, Euler, Heun, dpmpp_3m on fitted noise levels; FID,
network passes, wall-clock speed-up), the FID's own sampling noise (one setting from independent
noise) as the yardstick for "nearly the same quality", bits/dim on held-out digits and the FID
floor (held-out train5k against t10k). Every claim in ``report.md`` (experiments/report_text.py)
is written from a number in ``metrics.json``; a claim the numbers do not back is written as such.

Sizes (experiments/settings.py): ``tiny`` (seconds; the test suite), ``cpu`` (reduced: a small
class-conditional U-Net on 14x14 MNIST, 2000 samples per setting; the report says so), ``gpu``
(configs/mnist_cond.yaml's U-Net at 28x28, 10k samples).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
if __package__ in (None, "") and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: import the parts as experiments.*, from the repository root

import torch  # noqa: E402

from difflab.devices import resolve_device  # noqa: E402
from difflab.evaluation import report  # noqa: E402
from experiments.mnist import mnist_part  # noqa: E402
from experiments.report_text import write_report  # noqa: E402
from experiments.settings import DEFAULT_MNIST_ROOT, SIZES  # noqa: E402
from experiments.toy2d import guidance_2d_part, swiss_roll_part  # noqa: E402

COMMAND = "python experiments/classic.py"


def run_experiments(out="docs/experiments", size: str = "cpu", mnist_root: Optional[str] = None,
                    classifier: Optional[str] = None, device: Optional[str] = None, progress: bool = True,
                    command: str = COMMAND, mnist_run: Optional[str] = None) -> dict:
    """Every experiment at ``size``; writes OUT/metrics.json and OUT/report.md, returns the results."""
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    S = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = mnist_root or DEFAULT_MNIST_ROOT
    start = time.perf_counter()
    torch.manual_seed(0)
    on_gpu = torch.device(device).type == "cuda"
    res = {"size": size, "settings": S, "device": torch.cuda.get_device_name(torch.device(device)) if on_gpu
           else f"the CPU ({torch.get_num_threads()} threads)"}
    res["swiss_roll"] = swiss_roll_part(S, out, device, progress)
    res["guidance_2d"] = guidance_2d_part(S, out, device, progress)
    res["mnist"] = mnist_part(S, out, root, device, classifier, progress, mnist_run)
    res["seconds"] = time.perf_counter() - start
    res["command"] = command
    report.write_json(out / "metrics.json", res)
    write_report(res, out, command)
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=COMMAND, description="Reproduce the classic 2D and MNIST experiments into "
                                "OUT/report.md and OUT/metrics.json.")
    p.add_argument("--out", default="docs/experiments")
    p.add_argument("--size", default="cpu", choices=tuple(SIZES), help="tiny (tests), cpu (reduced), gpu (full)")
    p.add_argument("--mnist-root", default=None, help=f"MNIST folder (default {DEFAULT_MNIST_ROOT})")
    p.add_argument("--classifier", default=None, help="an existing classifier folder (default: train one in OUT)")
    p.add_argument("--device", default=None)
    p.add_argument("--mnist-run", default=None,
                   help="evaluate this trained class-conditional MNIST run instead of training one "
                        "(size gpu: the run of benchmarks/mnist_cond_gpu.py, runs/mnist_cond)")
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from OUT/metrics.json")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    cmd = " ".join([COMMAND, *map(shlex.quote, argv)])
    try:
        if args.report_only:
            metrics = Path(args.out) / "metrics.json"
            if not metrics.is_file():
                raise FileNotFoundError(f"--report-only needs {metrics} from an earlier run")
            res = json.loads(metrics.read_text())
            print(f"{COMMAND}: rewrote {write_report(res, Path(args.out), res.get('command', cmd))}")
            return 0
        if args.device is not None:  # a device that isn't here fails now, not after an hour of 2D experiments
            args.device = str(resolve_device(args.device, "--device"))
        res = run_experiments(args.out, args.size, args.mnist_root, args.classifier, args.device, not args.quiet,
                              cmd, args.mnist_run)
    except (ValueError, FileNotFoundError) as err:
        print(f"{COMMAND}: error: {err}", file=sys.stderr)
        return 2
    print(f"{COMMAND}: wrote {Path(args.out) / 'report.md'} in {res['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
