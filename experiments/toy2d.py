"""The 2D experiments: a Swiss roll's forward and reverse process with DDPM and DDIM samples, and
classifier-free guidance on the labelled 8 Gaussians at several scales."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch

from difflab import data, sample
from difflab.evaluation import plots, report
from experiments.runs import train_or_reuse
from experiments.settings import TOY_RUN


def toy_config(dataset: str, steps: int, width: int, num_classes: Optional[int], device: str) -> dict:
    kwargs = {"dim": 2, "width": width, "depth": 3}
    if num_classes:
        kwargs["num_classes"] = num_classes
    cfg = copy.deepcopy(TOY_RUN)
    cfg.update(model={"name": "mlp", "kwargs": kwargs},
               data={"name": "toy2d", "kwargs": {"dataset": dataset, "n": 100_000, "seed": 0}},
               steps=steps, ckpt_every=steps, cond_drop_prob=0.1 if num_classes else 0.0, device=device)
    return cfg


def swiss_roll_part(S: dict, out: Path, device: str, progress: bool) -> dict:
    steps = S.get("swiss_steps", S["toy_steps"])  # the roll's thin arms take longer than the 8 Gaussians
    run, secs = train_or_reuse(toy_config("swiss_roll", steps, S["toy_width"], None, device), "swiss_roll", out,
                               progress)
    g = torch.Generator().manual_seed(1)
    n = S["toy_n"]
    ref, labels = data.toy2d.make("swiss_roll", max(n, 2000), g, labels=True)
    fresh = data.toy2d.make("swiss_roll", n, g)
    plots.forward_process_2d(run.proc, fresh, out / "swiss_forward.png")
    T = S["toy_ddpm_steps"]
    x_ddpm = _reverse_process_figure(run, n, T, g, out / "swiss_reverse.png")
    x_ddim = sample(run.ema_model, run.proc, (n, 2), "ddim", 50, generator=g)
    plots.scatter_panels({"data": fresh, f"DDPM, {T} steps": x_ddpm, "DDIM, 50 steps": x_ddim},
                         out / "swiss_samples.png")
    return {"train_seconds": secs, "train_steps": steps,
            "floor": report.toy_metrics(fresh, ref, labels),
            f"ddpm_{T}": report.toy_metrics(x_ddpm, ref, labels),
            "ddim_50": report.toy_metrics(x_ddim, ref, labels)}


def _reverse_process_figure(run, n: int, T: int, g: torch.Generator, path: Path) -> torch.Tensor:
    """DDPM samples with T steps, and a figure of the state x_t at six of the steps; returns x_0."""
    shots = sorted({0, T // 4, T // 2, (3 * T) // 4, T - max(1, T // 20), T - 1})
    frames = {}

    def record(step: dict) -> None:
        if step["i"] in shots:  # the VP state x_t at the step's noise level
            t = float(run.proc.t_of(torch.tensor(float(step["sigma"]))))
            frames[f"x_t, t = {round(t) + 1}"] = step["x"].clone()

    x = sample(run.ema_model, run.proc, (n, 2), "ddpm", T, generator=g, callback=record)
    frames["samples x_0"] = x
    plots.scatter_panels(frames, path, lim=3.0, suptitle="reverse process (DDPM)")
    return x


def guidance_2d_part(S: dict, out: Path, device: str, progress: bool) -> dict:
    run, secs = train_or_reuse(toy_config("8gaussians", S["toy_steps"], S["toy_width"], 8, device),
                               "8gaussians_cond", out, progress)
    g = torch.Generator().manual_seed(2)
    n = S["toy_n"]
    ref, ref_labels = data.toy2d.make("8gaussians", max(n, 2000), g, labels=True)
    rows, panels = [], {}
    labels = torch.arange(n) % 8
    noise = torch.randn(n, 2, generator=g)
    for w in S["guidance"]:
        x = sample(run.ema_model, run.proc, (n, 2), "ddim", 50, cond=labels, guidance=w, noise=noise.clone())
        nearest = torch.cdist(x.double(), ref.double()).argmin(1)
        row = {"guidance": w, **report.toy_metrics(x, ref, ref_labels),
               "accuracy": float((ref_labels[nearest] == labels).double().mean())}
        row.pop("mode_share", None)
        rows.append(row)
        panels[f"w = {w:g}"] = x
    plots.scatter_panels(panels, out / "guidance_2d.png", lim=2.5,
                         suptitle="8 Gaussians, class-conditional DDIM-50, classifier-free guidance scale w")
    return {"train_seconds": secs, "rows": rows}
