"""``difflab demo``: train a 2D diffusion model on the CPU and show what it learned.

Trains an MLP denoiser on the Swiss roll, samples with DDPM (1000 steps) and DDIM (50 steps),
and writes: samples.png (data beside samples), reverse_process.gif, forward_process.png,
loss.png and metrics.json (sliced Wasserstein distance of each sampler to fresh data, and
the noise floor: data against fresh data). Runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import data, evaluation, models, schedules
from ..devices import count_flops, use_cpu_threads
from ..files import atomic_write_text
from ..processes import GaussianDiffusion
from ..samplers import sample
from ..training import EMA
from ..validation import is_int, is_real

__all__ = ["run_demo", "add_parser"]

T = 1000  # diffusion steps of the demo's linear schedule: the samplers take 1 .. T steps


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    """A ValueError naming the argument and its flag (``ddpm_steps`` / ``--ddpm-steps``)."""
    flag = "--" + name.replace("_", "-")
    allowed = f"{low} .. {high}" if high is not None else f">= {low}"
    if not is_int(value) or value < low or (high is not None and value > high):
        why = f" (the schedule has T = {T} steps)" if high == T else ""
        raise ValueError(f"{name} ({flag}) must be an integer in {allowed}{why}, got {value!r}")


def _train(model, proc, points, steps, batch, lr, seed, progress):
    """Plain AdamW with one-cycle LR and an EMA of the weights; returns (ema_model, losses)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # OneCycleLR divides by its warm-up's length, pct_start * steps - 1: zero for 5% of 20 steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.05 if steps != 20 else 0.1)
    ema = EMA(model, decay=0.995)
    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="training", unit="step")
    for step in range(steps):
        x0 = points[torch.randint(0, len(points), (batch,), generator=g)]
        loss = proc.training_loss(model, x0, generator=g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 100 == 0:
                bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    if bar is not None:
        bar.close()
    return ema.model, losses


def run_demo(
    out: str | Path = "difflab-demo",
    dataset: str = "swiss_roll",
    train_steps: int = 3000,
    batch: int = 512,
    lr: float = 2e-3,
    n: int = 2000,
    ddpm_steps: int = 1000,
    ddim_steps: int = 50,
    seed: int = 0,
    progress: bool = True,
    threads: int = 0,
    say: Optional[Callable[[str], None]] = None,
) -> dict:
    """Train, sample, evaluate and draw; returns the metrics written to ``out/metrics.json``.

    ``threads``: torch's intra-op threads, set for the process as the trainer does (0: the rule of
    ``difflab.devices.choose_cpu_threads``, which gives the demo's small MLP one thread);
    ``say`` receives the line that says what was chosen.
    """
    # every argument is checked before training, so a bad sampler setting does not waste the run
    _check_int("train_steps", train_steps, 1)
    _check_int("batch", batch, 1)
    _check_int("n", n, 2)
    _check_int("ddpm_steps", ddpm_steps, 1, T)
    _check_int("ddim_steps", ddim_steps, 1, T)
    _check_int("seed", seed, 0)
    _check_int("threads", threads, 0)
    if not is_real(lr) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if dataset not in data.toy2d.NAMES:
        raise ValueError(f"dataset (--dataset) must be one of {', '.join(data.toy2d.NAMES)}, got {dataset!r}")
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)

    proc = GaussianDiffusion(schedules.linear(T), prediction="eps")
    points = data.toy2d.make(dataset, 100_000, g)
    model = models.MLPDenoiser(dim=2, width=128, depth=3)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # a step: forward + backward (~3x) of a batch
        step_flops = 3 * count_flops(lambda: model(points[:2], torch.zeros(2, dtype=torch.long))) / 2 * batch
    line = use_cpu_threads(step_flops, threads)
    if say is not None:
        say(line)
    t0 = time.perf_counter()
    ema_model, losses = _train(model, proc, points, train_steps, batch, lr, seed, progress)
    train_seconds = time.perf_counter() - t0

    # Reverse process: keep ~40 frames of DDPM's trajectory (the model's x0 guess is not shown).
    frames, titles = [], []
    every = max(1, ddpm_steps // 40)

    def record(step: dict) -> None:
        if step["i"] % every == 0:
            frames.append(step["x"].clone())
            titles.append(f"reverse process, step {step['i']}/{ddpm_steps}")

    t0 = time.perf_counter()
    x_ddpm = sample(ema_model, proc, (n, 2), "ddpm", ddpm_steps, generator=g, callback=record, progress=progress)
    ddpm_seconds = time.perf_counter() - t0
    frames.append(x_ddpm)
    titles.append("samples x_0")
    t0 = time.perf_counter()
    x_ddim = sample(ema_model, proc, (n, 2), "ddim", ddim_steps, generator=g)
    ddim_seconds = time.perf_counter() - t0

    fresh = data.toy2d.make(dataset, n, g)
    other = data.toy2d.make(dataset, n, g)
    sw = evaluation.sliced_wasserstein
    metrics = {
        "dataset": dataset,
        "n": n,
        "sliced_wasserstein": {
            f"ddpm_{ddpm_steps}": sw(x_ddpm, fresh),
            f"ddim_{ddim_steps}": sw(x_ddim, fresh),
            "noise_floor": sw(other, fresh),
        },
        "mmd2": {
            f"ddpm_{ddpm_steps}": evaluation.mmd(x_ddpm, fresh),
            f"ddim_{ddim_steps}": evaluation.mmd(x_ddim, fresh),
            "noise_floor": evaluation.mmd(other, fresh),
        },
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "train_steps": train_steps,
        "cpu_threads": torch.get_num_threads(),
        "seconds": {"train": train_seconds, "ddpm": ddpm_seconds, "ddim": ddim_seconds},
    }
    if not all(math.isfinite(v) for v in metrics["sliced_wasserstein"].values()):
        raise FloatingPointError("the samples contain NaN or inf; training diverged")

    plots = evaluation.plots
    plots.scatter_panels(
        {"data": fresh, f"DDPM, {ddpm_steps} steps": x_ddpm, f"DDIM, {ddim_steps} steps": x_ddim},
        out / "samples.png",
    )
    plots.animate_2d(frames, titles, out / "reverse_process.gif", lim=3.0)
    plots.forward_process_2d(proc, fresh, out / "forward_process.png")
    plots.loss_curve(losses, out / "loss.png")
    metrics["seconds"]["total"] = time.perf_counter() - start
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a 2D model on the CPU, sample with DDPM and DDIM, write pictures")
    p.add_argument("--out", default="difflab-demo", help="output folder (default: difflab-demo)")
    p.add_argument("--dataset", default="swiss_roll", choices=data.toy2d.NAMES)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=2000, help="samples per sampler")
    p.add_argument("--ddpm-steps", type=int, default=1000)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch's CPU threads (default 0: one for the demo's small model, see difflab.devices)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)


def _main(args) -> int:
    m = run_demo(args.out, args.dataset, args.train_steps, n=args.n, ddpm_steps=args.ddpm_steps,
                 ddim_steps=args.ddim_steps, seed=args.seed, progress=not args.quiet, threads=args.threads,
                 say=print)
    sw = m["sliced_wasserstein"]
    print(f"difflab demo: {m['dataset']}, {m['train_steps']} training steps in {m['seconds']['train']:.1f} s, "
          f"{m['seconds']['total']:.1f} s in all")
    print("sliced Wasserstein distance to fresh data (lower is better):")
    for name, value in sw.items():
        print(f"  {name:<12} {value:.4f}")
    print(f"files in {Path(args.out).resolve()}: samples.png, reverse_process.gif, forward_process.png, "
          "loss.png, metrics.json")
    return 0
