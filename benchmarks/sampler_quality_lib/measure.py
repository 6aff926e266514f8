"""The table's runs on the exact problems: difflab's samplers on their default spacings and on
optimised noise levels, diffusers' schedulers on named spacings and (at 10 NFE) on every spacing
each offers, the hybrid, and the headline entries again on fresh seeds. Returns the rows."""

from __future__ import annotations

import math
import platform
import sys
import time
import warnings
from typing import Callable, Optional

import torch

import difflab as dl

from .headline import best_at
from .problems import Problem, floor_row, problems
from .samplers import SCHEDULERS, diffusers_installed, diffusers_run, diffusers_spacings, difflab_run

# the plan of the table: which samplers run at which NFE
DIFFLAB_CURVES = [  # (label, sampler, spacing)
    ("ddpm", "ddpm", None),
    ("ddim", "ddim", None),
    ("euler", "euler", None),
    ("heun", "heun", None),
    ("dpmpp_2m", "dpmpp_2m", None),
    ("dpmpp_3m", "dpmpp_3m", None),
]
DIFFUSERS_CURVES = [
    ("DDIM", "leading"),
    ("DPM++ 2M", "linspace"),
    ("DPM++ 2M", "lu"),
    ("DPM++ 3M", "lu"),
    ("DEIS 3", "exponential"),
    ("UniPC 3", "exponential"),
]
AT_1000 = {
    "difflab ddpm",
    "difflab ddim",
    "difflab dpmpp_2m",
    "diffusers DDPM (leading)",
    "diffusers DDIM (leading)",
    "diffusers DPM++ 2M (linspace)",
}
OPTIMISED = ("dpmpp_3m", "dpmpp_2m")


EXACT = "exact ODE (dpmpp_3m, 500 steps)"  # the reference: the ODE solved finely


class Recorder:
    """Runs an entry, scores its samples and keeps the row (``rows``); a peer's configuration that
    does not run is kept with NaN metrics and its error instead of stopping the table."""

    def __init__(self, quiet: bool) -> None:
        self.rows: list[dict] = []
        self.quiet = quiet

    def __call__(self, p: Problem, library: str, method: str, spacing, nfe_target: int, fn: Callable) -> dict:
        t0 = time.time()
        try:
            x, nfe = fn()
            m = p.metrics(x)
        except Exception as err:  # a peer's configuration that does not run: say so, don't stop
            nfe = nfe_target
            m = {"fd": math.nan, "nll_gap": math.nan, "error": f"{type(err).__name__}: {err}"[:120]}
        row = dict(problem=p.name, library=library, method=method, spacing=spacing, nfe=nfe,
                   nfe_target=nfe_target, seconds=round(time.time() - t0, 3), seed=p.seed, **m)
        self.rows.append(row)
        if not self.quiet:
            print(
                f"{p.name:4s} {library:9s} {method:22s} {str(spacing):12s} NFE {nfe:5d}  "
                f"FD {row['fd']:9.4f}  NLL gap {row['nll_gap']:+9.3f}  ({row['seconds']:.1f} s)",
                flush=True,
            )
        return row


def _version(mod: str) -> Optional[str]:
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


def run_all(args) -> dict:
    """Every entry of the table on both problems (``args``: the command line's options)."""
    torch.set_num_threads(1)  # many small ops: one thread is fastest, and the machine is shared
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="diffusers")
    have_diffusers = diffusers_installed()
    if not have_diffusers:
        print("diffusers is not installed (pip install -e '.[test]'): difflab rows only", file=sys.stderr)
    record = Recorder(args.quiet)
    t_start = time.time()
    schedules: dict[str, list[float]] = {}
    for p in problems(args.n, 20_000 if args.quick else 200_000):
        record.rows.append(floor_row(p))
        if not args.quick:
            record(p, "difflab", EXACT, "logsnr", 500, lambda: difflab_run(p, "dpmpp_3m", 500, "logsnr"))
        _difflab_entries(p, args, record, schedules)
        if not have_diffusers:
            continue
        _diffusers_entries(p, args, record)
        if 10 in args.nfe and not args.quick:
            _diffusers_sweep(p, record)
            _hybrid(p, record, schedules)
        if p.name == "64d" and args.repeats and 10 in args.nfe:
            repeat_headline(p, record, schedules, args.repeats)
    return {
        "command": "python benchmarks/sampler_quality.py" + (" --quick" if args.quick else ""),
        "n": args.n,
        "nfes": list(args.nfe),
        "seconds": round(time.time() - t_start, 1),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
        "diffusers": _version("diffusers"),
        "rows": record.rows,
        "optimised_sigmas": schedules,
        "seed": 1,
        "quick": bool(args.quick),
    }


def _difflab_entries(p: Problem, args, record: Recorder, schedules: dict) -> None:
    """difflab: the samplers at their default spacings, and the optimised schedules (kept in
    ``schedules``), at every NFE."""
    for nfe in args.nfe:
        for label, sampler, spacing in DIFFLAB_CURVES:
            if nfe == 1000 and f"difflab {label}" not in AT_1000:
                continue
            spec = dl.samplers.SAMPLERS[sampler]
            record(p, "difflab", label, spacing or spec.default_spacing, nfe,
                   lambda: difflab_run(p, sampler, nfe, spacing))
        if nfe <= args.optimise_up_to:
            for sampler in OPTIMISED:
                _optimised(p, sampler, nfe, args.max_evals, record, schedules)


def _optimised(p: Problem, sampler: str, nfe: int, max_evals: int, record: Recorder, schedules: dict) -> None:
    """``sampler`` on noise levels fitted by ``dl.samplers.optimize_sigmas`` on the problem's
    optimisation noise (never the evaluation noise)."""
    t0 = time.time()
    sig = dl.samplers.optimize_sigmas(p.net, p.proc, p.opt_noise.shape, nfe, sampler, noise=p.opt_noise,
                                      max_evals=max_evals * nfe)
    secs = time.time() - t0
    schedules[f"{p.name} {sampler} {nfe}"] = [round(float(s), 5) for s in sig]
    row = record(p, "difflab", f"{sampler} optimised", "optimised", nfe,
                 lambda: difflab_run(p, sampler, nfe, sigmas=sig))
    row["fit_seconds"] = round(secs, 1)


def _diffusers_entries(p: Problem, args, record: Recorder) -> None:
    """diffusers: the named curves at every NFE (DDPM at 1000 too; --quick: DDIM and DPM++ 2M)."""
    for nfe in args.nfe:
        for name, spacing in DIFFUSERS_CURVES + ([("DDPM", "leading")] if nfe == 1000 else []):
            if nfe == 1000 and f"diffusers {name} ({spacing})" not in AT_1000:
                continue
            if args.quick and name not in ("DDIM", "DPM++ 2M"):
                continue
            record(p, "diffusers", name, spacing, nfe, lambda: diffusers_run(p, name, nfe, spacing))


def _diffusers_sweep(p: Problem, record: Recorder) -> None:
    """At 10 NFE every diffusers scheduler (but DDPM) with every spacing it accepts."""
    done = {(name, sp) for name, sp in DIFFUSERS_CURVES}
    for name in SCHEDULERS:
        if name == "DDPM":
            continue
        for spacing in diffusers_spacings(name):
            if (name, spacing) not in done:
                record(p, "diffusers", name, spacing, 10, lambda: diffusers_run(p, name, 10, spacing))


def _hybrid(p: Problem, record: Recorder, schedules: dict) -> None:
    """The same solver as difflab's best, diffusers' DPM++ 3M, fed difflab's optimised grid
    (rounded to integer t)."""
    key = f"{p.name} dpmpp_3m 10"
    if key in schedules:
        ts = p.proc.t_of(torch.tensor(schedules[key][:-1])).round().long().tolist()
        record(p, "hybrid", "diffusers DPM++ 3M on difflab's optimised t", "rounded", 10,
               lambda: diffusers_run(p, "DPM++ 3M", 10, "linspace", timesteps=ts))


def _headline_picks(p: Problem, rows: list[dict]) -> set[tuple[str, str, str]]:
    """(library, method, spacing) of each library's best 10-NFE rows by FD and NLL gap on the
    main seed, and the comparisons the report names."""
    main = [r for r in rows if r["problem"] == p.name and r["seed"] == p.seed]
    best = [
        best_at(main, p.name, lib, 10, key)
        for lib in ("difflab", "diffusers")
        for key in ("fd", "nll_gap")
    ]
    picks = {(r["library"], r["method"], r["spacing"]) for r in best if r}
    return picks | {
        ("difflab", "dpmpp_2m", "logsnr"),
        ("diffusers", "DPM++ 2M", "lu"),
        ("diffusers", "DPM++ 2M", "linspace"),
    }


def repeat_headline(p: Problem, record: Recorder, schedules: dict, repeats: int) -> None:
    """The 10-NFE headline entries again on fresh noise and true samples (seeds 2, 3, ...): is the
    ranking more than noise? The model, the NLL reference and the fitted schedules stay."""
    picks = _headline_picks(p, record.rows)
    first_seed = p.seed
    for seed in range(first_seed + 1, first_seed + 1 + repeats):
        p.reseed(seed)
        record.rows.append(floor_row(p))
        record(p, "difflab", "ddpm", "trailing", 1000, lambda: difflab_run(p, "ddpm", 1000, "trailing"))
        record(p, "difflab", EXACT, "logsnr", 500, lambda: difflab_run(p, "dpmpp_3m", 500, "logsnr"))
        for lib, method, spacing in sorted(picks, key=str):
            record(p, lib, method, spacing, 10, _rerun(p, lib, method, spacing, schedules))
    p.reseed(first_seed)


def _rerun(p: Problem, lib: str, method: str, spacing: str, schedules: dict) -> Callable:
    """The run of a picked 10-NFE entry on the problem's current seed."""
    if lib == "difflab" and spacing == "optimised":
        sampler = method.split()[0]
        sig = torch.tensor(schedules[f"{p.name} {sampler} 10"], dtype=torch.float64)
        return lambda: difflab_run(p, sampler, 10, sigmas=sig)
    if lib == "difflab":
        return lambda: difflab_run(p, method, 10, spacing)
    return lambda: diffusers_run(p, method, 10, spacing)
