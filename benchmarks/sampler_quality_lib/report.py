"""docs/sampler_quality.{md,png}: the headline, the notes on what won, the tables per problem,
the optimised noise levels and the plot. Reads the rows of ``measure.run_all``; samples nothing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .headline import headline, label, main_rows
from .problems import NFES
from .tables import curve_table, fmt, repeats_table, sweep_table


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
  (tests/samplers/test_dpm_solver.py measures both; `variant="dpmsolver"` gives the reference update).
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
    """The report: introduction, headline (and its repeats), notes (full runs), the tables of
    each problem, the optimised noise levels, the plot ``png``."""
    rows = main_rows(res)
    lines = _introduction(res) + _headline_section(res)
    if not res.get("quick"):
        lines += [NOTES]
    for prob in ("64d", "2d"):
        if any(r["problem"] == prob for r in rows):
            lines += _problem_section(rows, prob)
    if res.get("optimised_sigmas"):
        lines += _sigmas_section(res["optimised_sigmas"])
    if png is not None:
        lines += [f"![FD and NLL gap vs NFE]({png.name})", ""]
    path.write_text("\n".join(lines) + "\n")


def _introduction(res: dict) -> list[str]:
    return [
        "# Sample quality per network evaluation: difflab vs diffusers",
        "",
        f"Made by `{res['command']}` ({res['seconds']:.0f} s on {res['machine']}; "
        f"diffusers {res['diffusers']}).",
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


def _headline_section(res: dict) -> list[str]:
    """The 64-D headline at 10 NFE with its verdicts, and its entries across seeds (when
    repeated); nothing without both libraries' best rows."""
    h = headline(res)
    if not (h.get("difflab_best_fd") and h.get("diffusers_best_fd")):
        return []
    d, p, q = h["difflab_best_fd"], h["diffusers_best_fd"], h["diffusers_best_nll"]
    lines = [
        "## Headline: 64-D mixture (10 components, std 0.3, linear schedule, T = 1000), 10 NFE",
        "",
        "| | FD | NLL gap |",
        "|---|---|---|",
    ]
    for name, r in [
        (f"**difflab best**: {label(d)}", d),
        (f"**diffusers best FD**: {label(p)}", p),
        (f"**diffusers best NLL gap**: {label(q)}", q),
        ("diffusers' 3M on difflab's optimised timesteps (hybrid)", h["hybrid"]),
        ("noise floor (true vs true; mean of 5 draws)", h["floor"]),
        ("exact ODE (difflab dpmpp_3m, 500 steps)", h["exact"]),
        ("DDPM, 1000 steps (difflab)", h["ddpm1000"]),
        ("DDPM, 1000 steps (diffusers)", h["diffusers_ddpm1000"]),
    ]:
        if r:
            lines.append(f"| {name} | {fmt(r['fd'])} | {fmt(r['nll_gap'], True)} |")
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
    return lines


def _problem_section(rows: list[dict], prob: str) -> list[str]:
    """FD and NLL gap against NFE on problem ``prob``, and its 10-NFE diffusers sweep."""
    floor = next(r for r in rows if r["problem"] == prob and r["library"] == "truth")
    lines = [
        f"## {prob}: Frechet distance vs NFE (floor {fmt(floor['fd'])}, sd {fmt(floor['fd_sd'])})",
        "",
        "Columns: target NFE; the actual NFE follows in brackets where it differs (Heun: 2 * steps - 1).",
        "Empty: not run (1000 NFE only for the references; optimised schedules up to 20 NFE).",
        "",
        curve_table(rows, prob, "fd"),
        f"## {prob}: NLL gap vs NFE (floor {fmt(floor['nll_gap'], True)}, sd {fmt(floor['nll_gap_sd'])})",
        "",
        curve_table(rows, prob, "nll_gap"),
    ]
    if any(r["problem"] == prob and r["library"] == "diffusers" for r in rows):
        lines += [
            f"### {prob}: every diffusers scheduler and spacing at 10 NFE",
            "",
            sweep_table(rows, prob),
        ]
    return lines


def _sigmas_section(sigmas: dict) -> list[str]:
    lines = [
        "## The optimised noise levels",
        "",
        "`dl.samplers.optimize_sigmas(model, proc, (256, D), nfe, sampler)` (sigma_0 = sigma_max, then 0):",
        "",
    ]
    lines += [f"- {k}: {', '.join(f'{x:.4g}' for x in v)}" for k, v in sigmas.items()]
    return lines + [""]


def plot(res: dict, path: Path) -> None:
    """FD and |NLL gap| against NFE, one column per problem (solid: difflab, dashed: diffusers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in main_rows(res) if r["library"] != "hybrid"]
    probs = [p for p in ("64d", "2d") if any(r["problem"] == p for r in rows)]
    fig, axes = plt.subplots(2, len(probs), figsize=(7 * len(probs), 9), squeeze=False)
    for j, prob in enumerate(probs):
        mine = [r for r in rows if r["problem"] == prob]
        for i, (key, name) in enumerate(
            [("fd", "Frechet distance"), ("nll_gap", "|NLL gap| (nats)")]
        ):
            _plot_panel(axes[i][j], mine, prob, key, name, legend=i == 0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_panel(ax, rows: list[dict], prob: str, key: str, name: str, legend: bool) -> None:
    """|``key``| against NFE of each sampler of problem ``prob`` (``rows``: its rows); the FD
    panel shades the noise floor."""
    floor = next(r for r in rows if r["library"] == "truth")
    labels = list(dict.fromkeys(label(r) for r in rows if r["library"] != "truth"))
    for lab in labels:
        pts = sorted(
            (r["nfe"], abs(r[key]))
            for r in rows
            if label(r) == lab and r["nfe_target"] in NFES and math.isfinite(r[key])
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
    if legend:
        ax.legend(fontsize=6.5, ncol=2)
