"""Sample quality per network evaluation (NFE): difflab's samplers against diffusers', same run.

The model is exact: a Gaussian mixture's closed-form optimal denoiser
(``dl.models.GaussianMixtureDenoiser``), so a sampler's only error is its own discretisation
and the exact probability-flow ODE reproduces the data distribution. Two problems:

* ``64d``: 10 components in 64 dimensions, means ~ N(0, 0.5^2 I) (seed 0), std 0.3;
* ``2d``:  8 components on the unit circle, std 0.1.

Both under the DDPM linear schedule, T = 1000, eps-prediction. Metrics against the true
distribution, each sampler starting from the same noise:

* FD: Frechet distance between Gaussian fits of the samples and of as many true samples
  (``dl.evaluation.frechet_distance``); the "floor" row is true vs true samples;
* NLL gap: mean -log p(x) of the samples under the true density minus E[-log p] of true
  samples (estimated from 200,000 draws). Negative: too concentrated; positive: too spread
  or off the modes. The Frechet distance misses both.

Samplers: difflab's through ``dl.sample``, and diffusers' schedulers (DDIM, DDPM,
DPM-Solver++ 2M/3M, DEIS, UniPC, Euler, Heun) in their usual loop, fed the same model through
a wrapper that passes diffusers' integer timesteps. At 10 NFE every diffusers scheduler is
tried with every spacing it offers (linspace, leading, trailing, Karras sigmas, log-SNR "lu"
lambdas, exponential sigmas). "optimised" rows use ``dl.samplers.optimize_sigmas`` fitted on
256 separate noise draws (never the evaluation noise).

    python benchmarks/sampler_quality.py            # full table -> docs/sampler_quality.{md,json,png}
    python benchmarks/sampler_quality.py --quick    # smoke test, a few seconds, writes to --out

Timings here are for the CPU; the numbers of merit are distances, not seconds.

The code: benchmarks/sampler_quality_lib/ (its __init__ lists the modules): measuring (problems,
samplers, measure, mnist) apart from reporting and the headline's bookkeeping (headline, tables,
report, mnist_report). This file is the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # sampler_quality_lib, when run or loaded as a file
    sys.path.insert(0, HERE)

from sampler_quality_lib.headline import headline, label  # noqa: E402
from sampler_quality_lib.measure import run_all  # noqa: E402
from sampler_quality_lib.mnist import mnist_benchmark  # noqa: E402
from sampler_quality_lib.mnist_report import write_mnist  # noqa: E402
from sampler_quality_lib.problems import NFES  # noqa: E402
from sampler_quality_lib.report import plot, write_markdown  # noqa: E402

from difflab.files import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: few samples, NFE 5 and 10, no optimised rows",
    )
    ap.add_argument(
        "--n", type=int, default=None, help="samples per entry (default 4000; --quick 300)"
    )
    ap.add_argument(
        "--nfe",
        type=int,
        nargs="+",
        default=None,
        help=f"NFE grid (default {' '.join(map(str, NFES))})",
    )
    ap.add_argument(
        "--optimise-up-to",
        type=int,
        default=None,
        help="fit optimised schedules up to this NFE (default 20)",
    )
    ap.add_argument(
        "--max-evals", type=int, default=50, help="optimize_sigmas evaluations per step"
    )
    ap.add_argument(
        "--out", type=Path, default=REPO / "docs", help="where sampler_quality.{md,json,png} go"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="extra seeds for the 10-NFE headline (default 3; --quick 0)",
    )
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument(
        "--mnist",
        type=Path,
        help="a trained MNIST run folder (dl.load): FID-like distance vs NFE instead",
    )
    ap.add_argument(
        "--classifier",
        type=Path,
        help="with --mnist: the feature network (difflab train-classifier)",
    )
    ap.add_argument("--mnist-root", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=1000, help="with --mnist: sampling batch size")
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 300 if args.quick else 4000
    if args.nfe is None:
        args.nfe = (5, 10) if args.quick else NFES
    if args.optimise_up_to is None:
        args.optimise_up_to = 0 if args.quick else 20
    if args.repeats is None:
        args.repeats = 0 if args.quick else 3
    for n in args.nfe:
        if n < 1:
            raise SystemExit(f"--nfe values must be >= 1, got {n}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mnist is not None:
        if args.classifier is None:
            raise SystemExit(
                "--mnist needs --classifier DIR (make one with `difflab train-classifier --data mnist`)"
            )
        if args.n == 4000 and not args.quick:
            args.n = 10_000
        res = mnist_benchmark(args)
        write_mnist(res, args.out)
        return res
    res = run_all(args)
    stem = args.out / "sampler_quality"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(res, indent=1, default=float) + "\n")
    png = stem.with_suffix(".png")
    plot(res, png)
    write_markdown(res, stem.with_suffix(".md"), png)
    if not args.quiet:
        _print_headline(res)
    return res


def _print_headline(res: dict) -> None:
    h = headline(res)
    if not h.get("difflab_best_fd"):
        return
    d = h["difflab_best_fd"]
    print(f"\n64d at 10 NFE: difflab best {label(d)} FD {d['fd']:.4f} NLL gap {d['nll_gap']:+.3f}")
    for k in ("diffusers_best_fd", "diffusers_best_nll"):
        if h.get(k):
            print(f"  {k}: {label(h[k])} FD {h[k]['fd']:.4f} NLL gap {h[k]['nll_gap']:+.3f}")
    print(
        f"  beats on FD: {h.get('beats_fd')}, on NLL gap: {h.get('beats_nll')}; "
        f"within 10% of DDPM-1000: {h.get('within_10pct_of_ddpm1000')}; total {res['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
