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
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

import difflab as dl
from difflab._files import atomic_write_text
from difflab.evaluation import frechet_distance

REPO = Path(__file__).resolve().parents[1]
T = 1000
NFES = (5, 10, 20, 50, 100, 1000)


# ----------------------------------------------------------------------------- the exact model
class Counted(nn.Module):
    """The closed-form model, counting its calls (the network evaluations of a sampler)."""

    def __init__(self, model: dl.models.GaussianMixtureDenoiser) -> None:
        super().__init__()
        self.model, self.num_classes, self.calls = model, model.num_classes, 0

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.calls += 1
        return self.model(x_t, t, cond)


class Problem:
    """A mixture, its true samples, the NLL reference, the evaluation noise and the optimisation noise."""

    def __init__(
        self, name: str, means: Tensor, std: float, n: int, n_ref: int = 200_000, seed: int = 1
    ) -> None:
        self.name, self.n = name, n
        self.proc = dl.GaussianDiffusion(dl.schedules.linear(T), "eps")
        self.model = dl.models.GaussianMixtureDenoiser(self.proc, means, std)
        self.net = Counted(self.model)
        self.dim = self.model.dim
        g = torch.Generator().manual_seed(seed)
        big = self.model.sample(n_ref, g)
        self.nll_true = float(
            torch.cat([-self.model.log_prob(c) for c in big.split(10_000)]).mean()
        )
        self.opt_noise = torch.randn(
            256, self.dim, generator=torch.Generator().manual_seed(seed + 2)
        )
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Fresh true samples, floor samples and evaluation noise (the model and NLL reference stay)."""
        self.seed = seed
        g = torch.Generator().manual_seed(1000 + seed)
        self.true = self.model.sample(self.n, g)
        self.floor_draws = [self.model.sample(self.n, g) for _ in range(5)]
        self.noise = torch.randn(
            self.n, self.dim, generator=torch.Generator().manual_seed(2000 + seed)
        )

    def floor(self) -> dict:
        """The metrics of true samples against the true samples: mean (and sd) over 5 fresh draws."""
        ms = [self.metrics(x) for x in self.floor_draws]
        out = {k: float(torch.tensor([m[k] for m in ms]).mean()) for k in ("fd", "nll_gap")}
        out.update(
            {f"{k}_sd": float(torch.tensor([m[k] for m in ms]).std()) for k in ("fd", "nll_gap")}
        )
        return out

    def metrics(self, x: Tensor) -> dict:
        if not torch.isfinite(x).all():
            return {"fd": math.inf, "nll_gap": math.inf}
        fd = frechet_distance(self.true, x)
        nll_gap = float(-self.model.log_prob(x).mean()) - self.nll_true
        return {"fd": fd, "nll_gap": nll_gap}


def problems(n: int, n_ref: int = 200_000) -> list[Problem]:
    means64 = 0.5 * torch.randn(
        10, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    ring = torch.stack([ang.cos(), ang.sin()], 1)
    return [Problem("64d", means64, 0.3, n, n_ref), Problem("2d", ring, 0.1, n, n_ref)]


# ----------------------------------------------------------------------------- the samplers
def difflab_run(
    p: Problem, sampler: str, nfe: int, spacing: Optional[str] = None, sigmas=None
) -> tuple[Tensor, int]:
    steps = (nfe + 1) // 2 if sampler == "heun" else nfe
    p.net.calls = 0
    kw = dict(sigmas=sigmas) if sigmas is not None else dict(steps=steps, spacing=spacing)
    g = torch.Generator().manual_seed(3000 + p.seed)  # DDPM's fresh noise, reproducible
    x = dl.sample(p.net, p.proc, (p.n, p.dim), sampler, noise=p.noise, generator=g, **kw)
    return x, p.net.calls


SCHEDULERS = {
    "DDIM": ("DDIMScheduler", dict(clip_sample=False)),  # diffusers clips x0 to [-1, 1] by default
    "DDPM": ("DDPMScheduler", dict(clip_sample=False)),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", dict(solver_order=2)),
    "DPM++ 3M": ("DPMSolverMultistepScheduler", dict(solver_order=3)),
    "DEIS 3": ("DEISMultistepScheduler", dict(solver_order=3)),
    "UniPC 2": ("UniPCMultistepScheduler", dict(solver_order=2)),
    "UniPC 3": ("UniPCMultistepScheduler", dict(solver_order=3)),
    "Euler": ("EulerDiscreteScheduler", dict()),
    "Heun": ("HeunDiscreteScheduler", dict()),
}
SPACING_FLAGS = {
    "linspace": dict(timestep_spacing="linspace"),
    "leading": dict(timestep_spacing="leading"),
    "trailing": dict(timestep_spacing="trailing"),
    "karras": dict(use_karras_sigmas=True),
    "lu": dict(use_lu_lambdas=True),
    "exponential": dict(use_exponential_sigmas=True),
}


def diffusers_spacings(name: str) -> list[str]:
    """The spacings a scheduler accepts (DDIM/DDPM: timestep_spacing only; lu: DPM-Solver only)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name][0])
    params = inspect.signature(cls.__init__).parameters
    return [s for s, flags in SPACING_FLAGS.items() if all(k in params for k in flags)]


def diffusers_loop(
    model: Callable,
    proc: dl.GaussianDiffusion,
    noise: Tensor,
    name: str,
    nfe: int,
    spacing: str,
    timesteps=None,
    seed: int = 0,
) -> tuple[Tensor, int]:
    """diffusers' sampling loop: x_T = noise * init_noise_sigma, then scale_model_input / model / step.
    ``model(x_t, t)`` gets diffusers' timesteps (integers, or floats where the scheduler makes them)."""
    import diffusers

    cls_name, cfg = SCHEDULERS[name]
    sched = getattr(diffusers, cls_name)(
        trained_betas=proc.betas.numpy(),
        num_train_timesteps=proc.T,
        prediction_type={"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[proc.prediction],
        **cfg,
        **SPACING_FLAGS[spacing],
    )
    if timesteps is not None:
        sched.set_timesteps(timesteps=[int(t) for t in timesteps])
    else:
        sched.set_timesteps((nfe + 1) // 2 if name == "Heun" else nfe)
    x = noise * sched.init_noise_sigma
    calls = 0
    step_kw = (
        {"generator": torch.Generator(device=x.device).manual_seed(seed)} if name == "DDPM" else {}
    )
    for t in sched.timesteps:
        tt = t.expand(len(x)).to(x.device)
        if tt.is_floating_point() and bool((tt == tt.round()).all()):
            tt = tt.long()
        out = model(sched.scale_model_input(x, t), tt)
        calls += 1
        x = sched.step(out, t, x, **step_kw).prev_sample
    return x, calls


def diffusers_run(
    p: Problem, name: str, nfe: int, spacing: str, timesteps=None
) -> tuple[Tensor, int]:
    return diffusers_loop(
        p.net, p.proc, p.noise, name, nfe, spacing, timesteps, seed=3000 + p.seed
    )


# ----------------------------------------------------------------------------- the runs
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


def floor_row(p) -> dict:
    """The noise-floor row of problem ``p`` at its current seed: true samples against true samples."""
    return dict(problem=p.name, library="truth", method="floor (true vs true)", spacing=None, nfe=0,
                nfe_target=0, seconds=0.0, seed=p.seed, **p.floor())


def run_all(args) -> dict:
    torch.set_num_threads(1)  # many small ops: one thread is fastest, and the machine is shared
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="diffusers")
    try:
        import diffusers  # noqa: F401

        have_diffusers = True
    except ImportError:
        have_diffusers = False
        print(
            "diffusers is not installed (pip install -e '.[test]'): difflab rows only",
            file=sys.stderr,
        )

    nfes = args.nfe
    rows: list[dict] = []
    t_start = time.time()

    def record(p, library, method, spacing, nfe_target, fn):
        t0 = time.time()
        try:
            x, nfe = fn()
            m = p.metrics(x)
        except Exception as err:  # a peer's configuration that does not run: say so, don't stop
            x, nfe, m = (
                None,
                nfe_target,
                {
                    "fd": math.nan,
                    "nll_gap": math.nan,
                    "error": f"{type(err).__name__}: {err}"[:120],
                },
            )
        row = dict(
            problem=p.name,
            library=library,
            method=method,
            spacing=spacing,
            nfe=nfe,
            nfe_target=nfe_target,
            seconds=round(time.time() - t0, 3),
            seed=p.seed,
            **m,
        )
        rows.append(row)
        if not args.quiet:
            print(
                f"{p.name:4s} {library:9s} {method:22s} {str(spacing):12s} NFE {nfe:5d}  "
                f"FD {row['fd']:9.4f}  NLL gap {row['nll_gap']:+9.3f}  ({row['seconds']:.1f} s)",
                flush=True,
            )
        return row

    schedules = {}
    for p in problems(args.n, 20_000 if args.quick else 200_000):
        rows.append(floor_row(p))
        if not args.quick:
            record(
                p,
                "difflab",
                "exact ODE (dpmpp_3m, 500 steps)",
                "logsnr",
                500,
                lambda: difflab_run(p, "dpmpp_3m", 500, "logsnr"),
            )
        # difflab: the samplers at their default spacings, and the optimised schedules
        for nfe in nfes:
            for label, sampler, spacing in DIFFLAB_CURVES:
                if nfe == 1000 and f"difflab {label}" not in AT_1000:
                    continue
                spec = dl.samplers.SAMPLERS[sampler]
                record(
                    p,
                    "difflab",
                    label,
                    spacing or spec.default_spacing,
                    nfe,
                    lambda: difflab_run(p, sampler, nfe, spacing),
                )
            if nfe <= args.optimise_up_to:
                for sampler in OPTIMISED:
                    t0 = time.time()
                    sig = dl.samplers.optimize_sigmas(
                        p.net,
                        p.proc,
                        p.opt_noise.shape,
                        nfe,
                        sampler,
                        noise=p.opt_noise,
                        max_evals=args.max_evals * nfe,
                    )
                    secs = time.time() - t0
                    schedules[f"{p.name} {sampler} {nfe}"] = [round(float(s), 5) for s in sig]
                    row = record(
                        p,
                        "difflab",
                        f"{sampler} optimised",
                        "optimised",
                        nfe,
                        lambda: difflab_run(p, sampler, nfe, sigmas=sig),
                    )
                    row["fit_seconds"] = round(secs, 1)
        if not have_diffusers:
            continue
        # diffusers: the named curves, and at 10 NFE every scheduler with every spacing
        for nfe in nfes:
            for name, spacing in DIFFUSERS_CURVES + ([("DDPM", "leading")] if nfe == 1000 else []):
                label = f"diffusers {name} ({spacing})"
                if nfe == 1000 and label not in AT_1000:
                    continue
                if args.quick and name not in ("DDIM", "DPM++ 2M"):
                    continue
                record(
                    p, "diffusers", name, spacing, nfe, lambda: diffusers_run(p, name, nfe, spacing)
                )
        if 10 in nfes and not args.quick:
            done = {(name, sp) for name, sp in DIFFUSERS_CURVES}
            for name in SCHEDULERS:
                if name == "DDPM":
                    continue
                for spacing in diffusers_spacings(name):
                    if (name, spacing) not in done:
                        record(
                            p,
                            "diffusers",
                            name,
                            spacing,
                            10,
                            lambda: diffusers_run(p, name, 10, spacing),
                        )
            # the same solver as difflab's best, fed difflab's optimised grid (rounded to integer t)
            key = f"{p.name} dpmpp_3m 10"
            if key in schedules:
                ts = p.proc.t_of(torch.tensor(schedules[key][:-1])).round().long().tolist()
                record(
                    p,
                    "hybrid",
                    "diffusers DPM++ 3M on difflab's optimised t",
                    "rounded",
                    10,
                    lambda: diffusers_run(p, "DPM++ 3M", 10, "linspace", timesteps=ts),
                )
        if p.name == "64d" and args.repeats and 10 in nfes:
            repeat_headline(p, rows, schedules, args, record)
    return {
        "command": "python benchmarks/sampler_quality.py" + (" --quick" if args.quick else ""),
        "n": args.n,
        "nfes": list(nfes),
        "seconds": round(time.time() - t_start, 1),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
        "diffusers": _version("diffusers"),
        "rows": rows,
        "optimised_sigmas": schedules,
        "seed": 1,
        "quick": bool(args.quick),
    }


def repeat_headline(p: Problem, rows: list, schedules: dict, args, record) -> None:
    """The 10-NFE headline entries again on fresh noise and true samples (seeds 2, 3, ...): is the
    ranking more than noise? The model, the NLL reference and the fitted schedules stay."""
    main = [r for r in rows if r["problem"] == p.name and r["seed"] == p.seed]
    picks = {
        (r["library"], r["method"], r["spacing"])
        for r in [
            best_at(main, p.name, lib, 10, key)
            for lib in ("difflab", "diffusers")
            for key in ("fd", "nll_gap")
        ]
        if r
    }
    picks |= {
        ("difflab", "dpmpp_2m", "logsnr"),
        ("diffusers", "DPM++ 2M", "lu"),
        ("diffusers", "DPM++ 2M", "linspace"),
    }
    first_seed = p.seed
    for seed in range(first_seed + 1, first_seed + 1 + args.repeats):
        p.reseed(seed)
        rows.append(floor_row(p))
        record(
            p, "difflab", "ddpm", "trailing", 1000, lambda: difflab_run(p, "ddpm", 1000, "trailing")
        )
        record(
            p,
            "difflab",
            "exact ODE (dpmpp_3m, 500 steps)",
            "logsnr",
            500,
            lambda: difflab_run(p, "dpmpp_3m", 500, "logsnr"),
        )
        for lib, method, spacing in sorted(picks, key=str):
            if lib == "difflab" and spacing == "optimised":
                sig = torch.tensor(
                    schedules[f"{p.name} {method.split()[0]} 10"], dtype=torch.float64
                )
                record(
                    p,
                    lib,
                    method,
                    spacing,
                    10,
                    lambda: difflab_run(p, method.split()[0], 10, sigmas=sig),
                )
            elif lib == "difflab":
                record(p, lib, method, spacing, 10, lambda: difflab_run(p, method, 10, spacing))
            else:
                record(p, lib, method, spacing, 10, lambda: diffusers_run(p, method, 10, spacing))
    p.reseed(first_seed)


def _version(mod: str) -> Optional[str]:
    try:
        return __import__(mod).__version__
    except ImportError:
        return None


# ----------------------------------------------------------------------------- the report
def _label(r: dict) -> str:
    if r["library"] in ("truth", "hybrid"):
        return r["method"]
    opt = r["spacing"] and r["spacing"] != "optimised"
    return f"{r['library']} {r['method']}" + (f" ({r['spacing']})" if opt else "")


def main_rows(res: dict) -> list:
    """The rows of the main evaluation (the repeats on other seeds are summarised separately)."""
    return [r for r in res["rows"] if r.get("seed", res["seed"]) == res["seed"]]


def best_at(rows, problem, library, nfe, key):
    """The row of ``library`` with the smallest ``key`` (|key| for the NLL gap) among runs with at
    most ``nfe`` evaluations and more than nfe / 2 (Heun's 2 * steps - 1 lands one below an even target)."""
    cands = [
        r
        for r in rows
        if r["problem"] == problem
        and r["library"] == library
        and nfe / 2 < r["nfe"] <= nfe
        and math.isfinite(r.get(key, math.nan))
    ]
    return min(cands, key=lambda r: abs(r[key]), default=None)


def headline(res: dict, problem: str = "64d", nfe: int = 10) -> dict:
    rows = main_rows(res)
    out = {}
    for lib in ("difflab", "diffusers"):
        out[f"{lib}_best_fd"] = best_at(rows, problem, lib, nfe, "fd")
        out[f"{lib}_best_nll"] = best_at(rows, problem, lib, nfe, "nll_gap")
    pick = lambda pred: next((r for r in rows if r["problem"] == problem and pred(r)), None)  # noqa: E731
    out["floor"] = pick(lambda r: r["library"] == "truth")
    out["ddpm1000"] = pick(
        lambda r: r["library"] == "difflab" and r["method"] == "ddpm" and r["nfe"] == 1000
    )
    out["diffusers_ddpm1000"] = pick(
        lambda r: r["library"] == "diffusers" and r["method"] == "DDPM"
    )
    out["exact"] = pick(lambda r: r["method"].startswith("exact ODE"))
    out["hybrid"] = pick(lambda r: r["library"] == "hybrid")
    d, p, q = out["difflab_best_fd"], out["diffusers_best_fd"], out["diffusers_best_nll"]
    if d and p and q:
        out["beats_fd"] = d["fd"] < p["fd"]
        out["beats_nll"] = abs(d["nll_gap"]) < abs(q["nll_gap"])
    if d and out["ddpm1000"]:
        out["within_10pct_of_ddpm1000"] = d["fd"] <= 1.1 * out["ddpm1000"]["fd"]
    return out


def _fmt(v, nll: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "NaN/inf"
    if abs(v) >= 1e4:
        return f"{v:.3g}"
    return f"{v:+.3f}" if nll else f"{v:.4f}"


def curve_table(rows, problem, key) -> str:
    rows = [r for r in rows if r["problem"] == problem and r["library"] in ("difflab", "diffusers")]
    nfes = sorted({r["nfe_target"] for r in rows if r["nfe_target"] in NFES})
    labels = []
    for r in rows:
        lab = _label(r)
        if r["nfe_target"] in nfes and lab not in labels:
            if (
                sum(_label(q) == lab for q in rows) == 1
                and r["library"] == "diffusers"
                and r["nfe_target"] == 10
            ):
                continue  # the 10-NFE-only sweep entries are in the sweep table
            labels.append(lab)
    head = (
        "| sampler | " + " | ".join(str(n) for n in nfes) + " |\n|---|" + "---|" * len(nfes) + "\n"
    )
    body = ""
    for lab in labels:
        cells = []
        for n in nfes:
            r = next((r for r in rows if _label(r) == lab and r["nfe_target"] == n), None)
            cells.append(
                ""
                if r is None
                else _fmt(r[key], key == "nll_gap") + (f" ({r['nfe']})" if r["nfe"] != n else "")
            )
        body += f"| {lab} | " + " | ".join(cells) + " |\n"
    return head + body


def sweep_table(rows, problem, nfe=10) -> str:
    sel = [
        r
        for r in rows
        if r["problem"] == problem
        and r["library"] in ("diffusers", "hybrid")
        and r["nfe_target"] == nfe
    ]
    sel.sort(key=lambda r: r["fd"] if math.isfinite(r["fd"]) else 1e30)
    s = "| diffusers scheduler | spacing | NFE | FD | NLL gap |\n|---|---|---|---|---|\n"
    for r in sel:
        err = f" ({r['error']})" if r.get("error") else ""
        s += f"| {r['method']} | {r['spacing']} | {r['nfe']} | {_fmt(r['fd'])}{err} | {_fmt(r['nll_gap'], True)} |\n"
    return s


def repeats_table(res: dict, problem: str = "64d") -> str:
    """Mean and sd over seeds of each repeated entry, and its paired difference from difflab's best
    (same noise and true samples per seed: most of the sampling noise cancels)."""
    rows = [r for r in res["rows"] if r["problem"] == problem]
    rep = {(_label(r), r["nfe_target"]) for r in rows if r["seed"] != res["seed"]}
    entries = {k: {r["seed"]: r for r in rows if (_label(r), r["nfe_target"]) == k} for k in rep}
    best = headline(res, problem).get("difflab_best_fd")
    ref = entries.get((_label(best), best["nfe_target"])) if best else None
    seeds = sorted({r["seed"] for r in rows})
    s = (
        f"| seeds {', '.join(map(str, seeds))} | NFE | FD mean (sd) | NLL gap mean (sd) | FD minus best's | "
        "abs NLL gap minus best's | seeds where best is better on both |\n|---|---|---|---|---|---|---|\n"
    )

    def ms(v):
        v = torch.tensor(v, dtype=torch.float64)
        return float(v.mean()), float(v.std()) if len(v) > 1 else 0.0

    order = sorted(entries, key=lambda k: ms([r["fd"] for r in entries[k].values()])[0])
    for k in order:
        e = entries[k]
        fd, nll = ms([r["fd"] for r in e.values()]), ms([r["nll_gap"] for r in e.values()])
        diff = ""
        if ref is not None and e is not ref:
            common = sorted(set(e) & set(ref))
            dfd = ms([e[i]["fd"] - ref[i]["fd"] for i in common])
            dnll = ms([abs(e[i]["nll_gap"]) - abs(ref[i]["nll_gap"]) for i in common])
            wins = sum(
                e[i]["fd"] > ref[i]["fd"] and abs(e[i]["nll_gap"]) > abs(ref[i]["nll_gap"])
                for i in common
            )
            diff = f"{dfd[0]:+.4f} ({dfd[1]:.4f}) | {dnll[0]:+.3f} ({dnll[1]:.3f}) | {wins}/{len(common)}"
        else:
            diff = "- | - | -"
        nfe = next(iter(e.values()))["nfe"]
        s += f"| {k[0]} | {nfe} | {fd[0]:.4f} ({fd[1]:.4f}) | {nll[0]:+.3f} ({nll[1]:.3f}) | {diff} |\n"
    return s


NOTES = """## What won, and the defaults

- **Winner at 10 NFE: `dpmpp_3m` (difflab's third-order DPM-Solver++ multistep) on noise levels
  fitted to the model by `dl.samplers.optimize_sigmas`** (Powell search over the 9 free levels,
  500 evaluations of the 10-step sampler on 256 noise draws that are not the evaluation noise,
  against a 500-step reference; seconds here, 5,000 batched network calls in general). Across
  seeds it is indistinguishable from the exact ODE (paired FD difference 0.0004, NLL gap within
  0.01) and better than DDPM-1000 on the NLL gap. The schedule does most of the work: on
  log-SNR-uniform steps the same solver is far off at 10 NFE, and diffusers' 3M fed the same
  timesteps (rounded to integers, as diffusers needs) comes close in FD ("hybrid" row).
  Among fixed spacings diffusers' best at 10 NFE is DEIS-3 on exponential (log-uniform)
  sigmas: its noise-prediction extrapolation suits the high-noise phase, where the data
  prediction D changes fastest in log-SNR. difflab's best fixed-spacing entry is `dpmpp_2m`
  (logsnr), level with diffusers' DPM++ 2M (lu). At 5 NFE nothing is close in 64-D: the
  optimised `dpmpp_2m` has the lowest FD, DEIS-3 the smallest NLL gap (in 2-D the optimised
  samplers lead on both).
- Defaults (`dl.sample(..., spacing=None)`), chosen from these tables: `"logsnr"` (uniform in
  log-SNR, continuous levels) for `dpmpp_2m`, `dpmpp_3m`, `euler` (best at 5-20 NFE on both
  mixtures) and `heun`; `"trailing"` for `ddim` and `ddpm` (core). Heun spends 2 * steps - 1
  evaluations and its trapezoidal correction overshoots on the huge first steps of a VP
  schedule, so it is unusable below ~20 NFE whatever the spacing ("trailing" is least bad at
  9 NFE); from 20-50 NFE, where it becomes usable, logsnr is its best spacing (measured
  separately: 49 NFE on 64d, FD 0.074 / NLL gap +1.6 vs Karras 0.079 / +2.4, trailing
  0.093 / -4.6). Karras (rho = 7) is an option for all; it wins nowhere here (the DDPM linear
  schedule reaches sigma_max = 157, twice EDM's 80).
- `dpmpp_3m` is third order: DPM-Solver's reference 3M (diffusers', k-diffusion's) weights its
  second difference by phi_3, half the Taylor integral, and converges at second order
  (tests/test_samplers_fast.py measures both; `variant="dpmsolver"` gives the reference update).
  The extra accuracy costs a little robustness at 5-10 NFE on uniform steps (it extrapolates
  further), none on optimised steps.
- DDPM-1000 is not the ceiling: its reverse variance (beta~) ignores Var[x0 | x_t] and leaves
  samples a little too concentrated (negative NLL gap), which FD does not see.
- diffusers notes: DDIMScheduler and DDPMScheduler clip x0 to [-1, 1] by default; switched off
  here (the data are not in [-1, 1]). DPMSolverMultistepScheduler with its default "linspace"
  spacing and 1000 steps returns NaN: round(linspace(0, 999, 1001)) repeats a timestep, h = 0.
  With Karras / lu sigmas it rounds the timestep it gives the network while integrating at the
  unrounded sigma; tests/test_crosscheck_diffusers.py shows this and the other differences.
"""


def write_markdown(res: dict, path: Path, png: Optional[Path]) -> None:
    rows = main_rows(res)
    h = headline(res)
    lines = ["# Sample quality per network evaluation: difflab vs diffusers", ""]
    lines += [
        f"Made by `{res['command']}` ({res['seconds']:.0f} s on {res['machine']}; diffusers {res['diffusers']}).",
        "Exact Gaussian-mixture denoisers (no training: only the samplers' discretisation error shows),",
        f"{res['n']} samples per entry, every sampler from the same starting noise; the script's docstring",
        "has the setup. FD: Frechet distance between Gaussian fits of the samples and of as many true",
        "samples. NLL gap: mean -log p_true(samples) minus E[-log p_true] of true samples (negative: too",
        "concentrated; positive: too spread or off the modes).",
        "",
        "On a trained network (MNIST, FID in the features of difflab's MNIST CNN, diffusers in the same",
        "run): `python benchmarks/sampler_quality.py --mnist RUN --classifier CLF`; the CPU run on the",
        "reduced-size (14x14) experiments model is in "
        "[sampler_quality_mnist_cpu/](sampler_quality_mnist_cpu/sampler_quality_mnist.md).",
        "",
    ]
    if h.get("difflab_best_fd") and h.get("diffusers_best_fd"):
        d, p, q = h["difflab_best_fd"], h["diffusers_best_fd"], h["diffusers_best_nll"]
        lines += [
            "## Headline: 64-D mixture (10 components, std 0.3, linear schedule, T = 1000), 10 NFE",
            "",
            "| | FD | NLL gap |",
            "|---|---|---|",
        ]
        for name, r in [
            (f"**difflab best**: {_label(d)}", d),
            (f"**diffusers best FD**: {_label(p)}", p),
            (f"**diffusers best NLL gap**: {_label(q)}", q),
            ("diffusers' 3M on difflab's optimised timesteps (hybrid)", h["hybrid"]),
            ("noise floor (true vs true; mean of 5 draws)", h["floor"]),
            ("exact ODE (difflab dpmpp_3m, 500 steps)", h["exact"]),
            ("DDPM, 1000 steps (difflab)", h["ddpm1000"]),
            ("DDPM, 1000 steps (diffusers)", h["diffusers_ddpm1000"]),
        ]:
            if r:
                lines.append(f"| {name} | {_fmt(r['fd'])} | {_fmt(r['nll_gap'], True)} |")
        lines += [
            "",
            f"difflab's best beats diffusers' best FD: **{h.get('beats_fd')}**; beats diffusers' best "
            f"|NLL gap|: **{h.get('beats_nll')}**; within 10% of DDPM-1000's FD: "
            f"**{h.get('within_10pct_of_ddpm1000')}**.",
            "",
        ]
        if any(r["seed"] != res["seed"] for r in res["rows"]):
            lines += [
                "The same entries on fresh noise and fresh true samples (seeds 2-4; the model and the fitted",
                "schedules stay). Differences are paired per seed, so the sampling noise they share cancels.",
                "Near-exact samplers all sit at the FD noise floor (its sd across seeds is about 0.01), and FD",
                "even favours slightly over-concentrated samples (DDPM-1000); the NLL gap separates them.",
                "",
                repeats_table(res),
                "",
            ]
    if not res.get("quick"):
        lines += [NOTES]
    for prob in ("64d", "2d"):
        if not any(r["problem"] == prob for r in rows):
            continue
        floor = next(r for r in rows if r["problem"] == prob and r["library"] == "truth")
        lines += [
            f"## {prob}: Frechet distance vs NFE (floor {_fmt(floor['fd'])}, sd {_fmt(floor['fd_sd'])})",
            "",
            "Columns: target NFE; the actual NFE follows in brackets where it differs (Heun: 2 * steps - 1).",
            "Empty: not run (1000 NFE only for the references; optimised schedules up to 20 NFE).",
            "",
            curve_table(rows, prob, "fd"),
            f"## {prob}: NLL gap vs NFE (floor {_fmt(floor['nll_gap'], True)}, sd {_fmt(floor['nll_gap_sd'])})",
            "",
            curve_table(rows, prob, "nll_gap"),
        ]
        if any(r["problem"] == prob and r["library"] == "diffusers" for r in rows):
            lines += [
                f"### {prob}: every diffusers scheduler and spacing at 10 NFE",
                "",
                sweep_table(rows, prob),
            ]
    if res.get("optimised_sigmas"):
        lines += [
            "## The optimised noise levels",
            "",
            "`dl.samplers.optimize_sigmas(model, proc, (256, D), nfe, sampler)` (sigma_0 = sigma_max, then 0):",
            "",
        ]
        for k, v in res["optimised_sigmas"].items():
            lines.append(f"- {k}: {', '.join(f'{x:.4g}' for x in v)}")
        lines.append("")
    if png is not None:
        lines += [f"![FD and NLL gap vs NFE]({png.name})", ""]
    path.write_text("\n".join(lines) + "\n")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in main_rows(res) if r["library"] != "hybrid"]
    probs = [p for p in ("64d", "2d") if any(r["problem"] == p for r in rows)]
    fig, axes = plt.subplots(2, len(probs), figsize=(7 * len(probs), 9), squeeze=False)
    for j, prob in enumerate(probs):
        floor = next(r for r in rows if r["problem"] == prob and r["library"] == "truth")
        labels = list(
            dict.fromkeys(
                _label(r) for r in rows if r["problem"] == prob and r["library"] != "truth"
            )
        )
        for i, (key, name) in enumerate(
            [("fd", "Frechet distance"), ("nll_gap", "|NLL gap| (nats)")]
        ):
            ax = axes[i][j]
            for lab in labels:
                pts = sorted(
                    (r["nfe"], abs(r[key]))
                    for r in rows
                    if r["problem"] == prob
                    and _label(r) == lab
                    and r["nfe_target"] in NFES
                    and math.isfinite(r[key])
                )
                if len(pts) < 2:
                    continue
                style = "-" if lab.startswith("difflab") else "--"
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    style,
                    marker="o",
                    ms=3,
                    label=lab,
                    lw=2.2 if "optimised" in lab else 1.2,
                )
            if key == "fd":
                ax.axhspan(
                    max(floor["fd"] - floor["fd_sd"], 1e-12),
                    floor["fd"] + floor["fd_sd"],
                    color="k",
                    alpha=0.12,
                    label="noise floor (true vs true, mean +- sd)",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("network evaluations (NFE)")
            ax.set_ylabel(name)
            ax.set_title(f"{prob} mixture: {name} (solid: difflab, dashed: diffusers)")
            ax.grid(alpha=0.3, which="both")
            if i == 0:
                ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- a trained MNIST model
def mnist_benchmark(args) -> dict:
    """FID-like distance (a small MNIST CNN's features, ``difflab train-classifier``) vs NFE for a
    trained run, difflab's samplers and diffusers' on the same network and the same noise.
    Unconditional samples (the null label for a class-conditional model). GPU-sized by default:
    ``--n 10000``; any size runs on the CPU."""
    from difflab import data
    from difflab.evaluation.classifier import AtResolution, ClassifierFeatures, load_classifier
    from difflab.evaluation.report import ImageReference

    device = torch.device(args.device)
    run = dl.load(args.mnist, device=device)
    model, proc, n = run.ema_model, run.proc, args.n
    size = run.image_shape[-1]  # a reduced-size run (14x14) is compared with real digits at its size
    clf = load_classifier(args.classifier)
    feats = ClassifierFeatures(AtResolution(clf, 28) if size != 28 else clf, name="mnist-cnn").to(device)
    kw = {"image_size": size} if size != 28 else {}
    t10k, _ = data.load("mnist", root=args.mnist_root, split="t10k", **kw)
    held, _ = data.load("mnist", root=args.mnist_root, split="train5k", **kw)
    ref = ImageReference(t10k, feats, batch_size=args.batch)
    k = getattr(model, "num_classes", None)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(n, *run.sample_shape, generator=g)
    opt_noise = torch.randn(min(256, n), *run.sample_shape, generator=g).to(device)
    null = None if k is None else torch.full((args.batch,), k, dtype=torch.long, device=device)

    def net(x_t, t):
        return model(x_t, t) if null is None else model(x_t, t, null[: len(x_t)])

    def images(draw) -> tuple[Tensor, int]:
        out, calls = [], 0
        for i in range(0, n, args.batch):
            x, c = draw(noise[i : i + args.batch].to(device))
            out.append(x.float().cpu())
            calls = c
        return torch.cat(out).reshape(n, *run.image_shape), calls

    rows, t_start = [], time.time()
    pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))[:n]  # train5k is sorted by class
    floor = ref(held[pick])["fid"]
    rows.append(dict(library="truth", method="train5k vs t10k", spacing=None, nfe=0, fid=floor))
    nfes = [x for x in args.nfe if x <= 100] or [10]

    def record(library, method, spacing, nfe, draw):
        t0 = time.time()
        x, calls = images(draw)
        row = dict(
            library=library,
            method=method,
            spacing=spacing,
            nfe=calls,
            nfe_target=nfe,
            fid=ref(x)["fid"],
            seconds=round(time.time() - t0, 1),
        )
        rows.append(row)
        if not args.quiet:
            print(
                f"mnist {library:9s} {method:20s} {str(spacing):10s} NFE {calls:4d} {ref.fid_name} {row['fid']:.3f}",
                flush=True,
            )

    with torch.no_grad():
        for nfe in nfes:
            for label, sampler, spacing in DIFFLAB_CURVES:
                spacing = spacing or dl.samplers.SAMPLERS[sampler].default_spacing
                steps = (nfe + 1) // 2 if sampler == "heun" else nfe
                cond = None if null is None else null
                record(
                    "difflab",
                    label,
                    spacing,
                    nfe,
                    lambda z: (
                        dl.sample(
                            model,
                            proc,
                            z.shape,
                            sampler,
                            steps,
                            cond=None if cond is None else cond[: len(z)],
                            noise=z,
                            spacing=spacing,
                        ),
                        steps if sampler != "heun" else 2 * steps - 1,
                    ),
                )
            if nfe <= args.optimise_up_to:
                sig = dl.samplers.optimize_sigmas(
                    model,
                    proc,
                    opt_noise.shape,
                    nfe,
                    "dpmpp_3m",
                    noise=opt_noise,
                    cond=None if null is None else null[: len(opt_noise)],
                    max_evals=args.max_evals * nfe,
                )
                record(
                    "difflab",
                    "dpmpp_3m optimised",
                    "optimised",
                    nfe,
                    lambda z: (
                        dl.sample(
                            model,
                            proc,
                            z.shape,
                            "dpmpp_3m",
                            cond=None if null is None else null[: len(z)],
                            noise=z,
                            sigmas=sig,
                        ),
                        nfe,
                    ),
                )
            try:
                import diffusers  # noqa: F401
            except ImportError:
                continue
            for name, spacing in [
                ("DDIM", "leading"),
                ("DPM++ 2M", "lu"),
                ("DEIS 3", "exponential"),
            ]:
                record(
                    "diffusers",
                    name,
                    spacing,
                    nfe,
                    lambda z: diffusers_loop(net, proc, z, name, nfe, spacing),
                )
    return {
        "command": "python " + " ".join(["benchmarks/sampler_quality.py", *sys.argv[1:]]),
        "image_size": size,
        "metric": ref.fid_name,
        "n": n,
        "device": str(device),
        "seconds": round(time.time() - t_start, 1),
        "rows": rows,
    }


def write_mnist(res: dict, out: Path) -> None:
    rows = res["rows"]
    floor = next(r for r in rows if r["library"] == "truth")["fid"]
    nfes = sorted({r["nfe_target"] for r in rows if r["library"] != "truth"})
    labels = list(dict.fromkeys(_label(r) for r in rows if r["library"] != "truth"))
    lines = [
        f"# {res['metric']} vs NFE on a trained MNIST model",
        "",
        f"`{res['command']}` on {res['device']}, {res['n']} samples per entry ({res['seconds']:.0f} s); "
        f"floor ({res['n']} random held-out train5k digits vs t10k): {floor:.3f}.",
        "",
        f"Unconditional samples (the null label of a class-conditional model), no clipping of x0, "
        f"{res.get('image_size', 28)}x{res.get('image_size', 28)} images"
        + (" (the reference digits are downsampled to the same size and every image is upsampled to 28x28 "
           "for the classifier's features)" if res.get("image_size", 28) != 28 else "")
        + "; every sampler starts from the same noise. difflab's solvers use their default spacing "
        "(DDPM/DDIM trailing, the others uniform in log-SNR); `dpmpp_3m optimised` uses noise levels "
        "fitted to the network by `dl.samplers.optimize_sigmas` on 256 other noise draws; diffusers' "
        "schedulers run in their own loop on the same network.",
        "",
        "| sampler | " + " | ".join(map(str, nfes)) + " |",
        "|---|" + "---|" * len(nfes),
    ]
    for lab in labels:
        cells = [
            next((f"{r['fid']:.3f}" for r in rows if _label(r) == lab and r["nfe_target"] == m), "")
            for m in nfes
        ]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    (out / "sampler_quality_mnist.md").write_text("\n".join(lines) + "\n")
    (out / "sampler_quality_mnist.json").write_text(json.dumps(res, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lab in labels:
        pts = sorted((r["nfe"], r["fid"]) for r in rows if _label(r) == lab)
        ax.plot(*zip(*pts), "-" if lab.startswith("difflab") else "--", marker="o", ms=3, label=lab)
    ax.axhline(floor, color="k", ls=":", lw=0.8, label="floor")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="NFE",
        ylabel=res["metric"],
        title="MNIST: FID-like distance vs NFE",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sampler_quality_mnist.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
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
    h = headline(res)
    if not args.quiet and h.get("difflab_best_fd"):
        d = h["difflab_best_fd"]
        print(
            f"\n64d at 10 NFE: difflab best {_label(d)} FD {d['fd']:.4f} NLL gap {d['nll_gap']:+.3f}"
        )
        for k in ("diffusers_best_fd", "diffusers_best_nll"):
            if h.get(k):
                print(f"  {k}: {_label(h[k])} FD {h[k]['fd']:.4f} NLL gap {h[k]['nll_gap']:+.3f}")
        print(
            f"  beats on FD: {h.get('beats_fd')}, on NLL gap: {h.get('beats_nll')}; "
            f"within 10% of DDPM-1000: {h.get('within_10pct_of_ddpm1000')}; total {res['seconds']:.0f} s"
        )
    return res


if __name__ == "__main__":
    main()
