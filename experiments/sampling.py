"""Drawing and scoring MNIST samples for the experiments: one evaluation row per setting (cached),
the FID's own sampling noise as the yardstick, and few-step samplers against DDPM with all T steps."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import torch

from difflab.data import save_image_grid
from difflab.evaluation import CountedModel, plots
from difflab.files import atomic_write
from difflab.samplers import optimize_sigmas
from difflab.training.generate import generate
from experiments.runs import RowCache, sd
from experiments.settings import FIT_SEED


class SampleEvaluator:
    """Samples of one trained run, scored against one reference, each finished row kept in ``cache``.

    Batch i of a sample set is seeded seed + i; ``draw`` counts the network passes exactly."""

    def __init__(self, run, ref, S: dict, out: Path, device: str, cache: RowCache) -> None:
        self.run, self.ref, self.S, self.out, self.device, self.cache = run, ref, S, out, device, cache

    def draw(self, sampler: str, steps: int, w: float, lab, seed: int = 0, n: Optional[int] = None, **options):
        """n samples (default S["n"]) with wall time and exact network passes per batch."""
        run, S = self.run, self.S
        n = S["n"] if n is None else n
        model = CountedModel(run.ema_model)
        xs, start = [], time.perf_counter()
        for b, i in enumerate(range(0, n, S["batch"])):
            m = min(S["batch"], n - i)
            xs.append(generate(model, run.proc, m, run.sample_shape, image_shape=run.image_shape, sampler=sampler,
                               steps=steps, guidance=w, labels=None if lab is None else lab[i : i + m],
                               seed=seed + b, device=self.device, clip_x0=S.get("clip_x0"), **options).float().cpu())
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()
        return torch.cat(xs), {"seconds": time.perf_counter() - start,
                               "calls_per_batch": model.calls / math.ceil(n / S["batch"])}

    def evaluate(self, sampler: str, steps: int, w: float, lab, tag: Optional[str] = None, seed: int = 0,
                 key_extra: str = "", **options) -> dict:
        """The row of one setting (from the cache when finished earlier); ``tag``: also save a grid
        of its samples as mnist_{tag}.png (ten per class for balanced labels)."""
        key = f"{sampler}/{steps}/w={w:g}/{'balanced' if lab is not None else 'null'}/seed={seed}/" + ",".join(
            f"{k}={v:g}" for k, v in sorted(options.items()) if isinstance(v, (int, float))) + key_extra
        row = self.cache.get(key)
        if row is not None and (not tag or (self.out / f"mnist_{tag}.png").is_file()):
            return row
        x, timing = self.draw(sampler, steps, w, lab, seed, **options)
        row = {"sampler": sampler, "steps": steps, "guidance": w, "labels": "balanced" if lab is not None else "null",
               "seed": seed, **timing, **self.ref(x, lab)}
        if tag:
            if lab is not None:
                grid_idx = torch.cat([torch.nonzero(lab == c)[:10, 0] for c in range(10)])
            else:
                grid_idx = torch.arange(min(100, self.S["n"]))
            save_image_grid(x[grid_idx], self.out / f"mnist_{tag}.png", nrow=10)
        return self.cache.put(key, row)


def fid_noise(rows: list) -> dict:
    """FID of the same setting from independent noise: its spread is the yardstick for 'the same'."""
    fids = [r["fid"] for r in rows]
    return {"sampler": rows[0]["sampler"], "steps": rows[0]["steps"], "guidance": rows[0]["guidance"],
            "seeds": [r["seed"] for r in rows], "fid": fids, "mean": sum(fids) / len(fids), "sd": sd(fids),
            "range": max(fids) - min(fids),
            "accuracy": [r.get("accuracy") for r in rows]}


def tolerance(ref_fid: float, noise: dict, rel: float = 0.15) -> dict:
    """'Nearly the same FID' as the reference: at most rel * FID_ref above it, or two standard
    deviations of the difference of two independent FIDs (sqrt(2) * sd) where that is larger."""
    noise_tol = 2 * math.sqrt(2) * noise["sd"] if noise["sd"] == noise["sd"] else 0.0
    return {"fid": max(rel * ref_fid, noise_tol), "relative": rel, "relative_fid": rel * ref_fid,
            "noise_fid": noise_tol}


def setting_name(setting: dict) -> str:
    name = setting["sampler"]
    if name == "ddim":
        name += f" (eta = {setting.get('eta', 0.0):g})"
    if setting.get("fitted"):
        name += " (fitted levels)"
    return name


def fitted_levels(ev: SampleEvaluator, setting: dict) -> tuple[torch.Tensor, float]:
    """Noise levels for ``setting`` fitted to the run on other noise than the evaluation's
    (FIT_SEED), and the seconds the fit took; from the cache when a cut-short run fitted them."""
    run, S, device = ev.run, ev.S, ev.device
    fit_key = f"fitted:{setting['sampler']}/{setting['steps']}/seed{FIT_SEED}"
    saved = ev.cache.get(fit_key)
    if saved:
        return torch.tensor(saved["sigmas"], dtype=torch.float64), saved["seconds"]
    t0 = time.perf_counter()
    k_fit = S["fit_n"]
    sigmas = optimize_sigmas(run.ema_model, run.proc, (k_fit, *run.sample_shape), setting["steps"],
                             setting["sampler"], cond=(torch.arange(k_fit) % 10).to(device),
                             generator=torch.Generator().manual_seed(FIT_SEED), device=device,
                             reference_steps=S["fit_reference_steps"], max_evals=S["fit_evals"])
    seconds = time.perf_counter() - t0
    ev.cache.put(fit_key, {"sigmas": [float(v) for v in sigmas], "seconds": seconds})
    return sigmas, seconds


def few_step_rows(ev: SampleEvaluator, labels: torch.Tensor) -> list:
    """One row per setting of S["few_step"] at w = 1, the first (DDPM with all T steps) the reference:
    speed-ups in network passes and seconds against it."""
    rows = []
    for setting in ev.S["few_step"]:
        opts = {"eta": setting["eta"]} if setting.get("eta") else {}
        fit_seconds = None
        if setting.get("fitted"):
            opts["sigmas"], fit_seconds = fitted_levels(ev, setting)
        first = not rows
        r = ev.evaluate(setting["sampler"], setting["steps"], 1.0, labels, "ddpm" if first else None,
                        key_extra="/fitted" if setting.get("fitted") else "", **opts)
        r = dict(r)
        r.update(name=setting_name(setting), eta=setting.get("eta", 0.0), fitted=bool(setting.get("fitted")))
        if fit_seconds is not None:
            r.update(fit_seconds=fit_seconds, sigmas=[float(v) for v in opts["sigmas"]])
        rows.append(r)
    ref_row = rows[0]
    for r in rows:
        r["speedup_passes"] = ref_row["calls_per_batch"] / r["calls_per_batch"]
        r["speedup_seconds"] = ref_row["seconds"] / r["seconds"]
    return rows


def plot_steps(rows: list, tol: float, metric: str, path: Path) -> Path:
    """FID and accuracy against network passes, one line per sampler setting, with DDPM-T's
    value and the tolerance band."""
    plt = plots.pyplot()
    ref_row = rows[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, y, lab in ((axes[0], "fid", metric), (axes[1], "accuracy", "accuracy")):
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = sorted((r["calls_per_batch"], r[y]) for r in rows if r["name"] == name and y in r)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=name)
        ax.axhline(ref_row[y], color="k", lw=0.8, ls="--")
        if y == "fid":
            _fid_axis(ax, rows, tol)
        ax.set_xscale("log")
        ax.set_xlabel("network passes")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return Path(path)


def _fid_axis(ax, rows: list, tol: float) -> None:
    """The tolerance band above the reference's FID, and a y range that the fewest-step rows do not flatten."""
    ref_row = rows[0]
    ax.axhspan(ref_row["fid"], ref_row["fid"] + tol, color="0.85", zorder=0)
    many = [r["fid"] for r in rows if r["calls_per_batch"] >= 10]
    top = max(many) if many else None
    if top is not None and top > 0:
        ax.set_ylim(0, min(max(r["fid"] for r in rows), 1.1 * top))
    ax.set_title(f"grey: within tolerance of {ref_row['name']}-{ref_row['steps']}", fontsize=9)
