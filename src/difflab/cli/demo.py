"""``difflab demo``: train a 2D diffusion model on the CPU and show what it learned.

Trains an MLP on the Swiss roll with the chosen process (``--process``: the DDPM chain by
default, or the VP / VE score SDEs, EDM or flow matching), samples it with two samplers -- the
process's many-step reverse process and a few-step ODE solver -- and writes: samples.png (data
beside samples), reverse_process.gif (the first sampler's trajectory), forward_process.png,
loss.png and metrics.json (the process and each sampler's settings, the sliced Wasserstein
distance of each sampler to fresh data and the noise floor, data against fresh data, each a mean
over 8 fresh sets; MMD^2 against the first). Runs in under a minute on 2 CPU cores.

The samplers of each process (``DEMO_SAMPLERS``), with steps at which both reach the
sliced-Wasserstein noise floor, the reverse process at DDPM's 1000 network calls or fewer:

- ddpm: DDPM ancestral, 1000 steps, then DDIM, 50 steps (both "trailing" on the chain's grid);
- vp, ve: the reverse SDE by Euler-Maruyama (Song et al. 2021), 500 steps uniform in t, then
  DPM-Solver++(2M), 25 steps uniform in log-SNR (the predictor-corrector sampler, ``pc``, at
  their corrector's snr = 0.16 landed further from the data on this 2-D set);
- edm: Heun with churn (Karras et al. 2022, Algorithm 2), 64 steps, then Heun, 18 steps, both
  on EDM's rho = 7 noise levels;
- flow: Euler on the flow's ODE, 100 steps uniform in t, then 20 (labelled ``euler_few``); at 10
  steps Euler's samples spread too wide, and DPM-Solver++(2M)'s come out thinner than the data
  (its last step jumps to the denoised mean from a noise level above the roll's width).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .. import data, evaluation, models, schedules
from ..devices import count_flops, use_cpu_threads
from ..files import atomic_write_text
from ..processes import PROCESSES, GaussianDiffusion, Process, build
from ..samplers import sample
from ..training import EMA
from ..validation import is_int, is_real

__all__ = ["run_demo", "add_parser", "DemoSampler", "DEMO_SAMPLERS", "demo_process"]

T = 1000  # diffusion steps of the DDPM demo's linear schedule: its samplers take 1 .. T steps


@dataclass(frozen=True)
class DemoSampler:
    """One sampler of the demo: ``label`` names it in metrics.json (``label_steps``) and the
    pictures; ``sampler``, ``steps``, ``spacing`` and ``options`` go to :func:`difflab.sample`."""

    label: str
    title: str
    sampler: str
    steps: int
    spacing: str
    options: tuple[tuple[str, float], ...] = ()


# EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) as their repository samples ImageNet-64
# (256 steps, S_churn = 40, S_tmin = 0.05, S_tmax = 50, S_noise = 1.003), with the same noise added a
# step, gamma = S_churn / steps = 40 / 256, over the demo's 64 steps: S_churn = 10.
_EDM_CHURN = (("s_churn", 10.0), ("s_tmin", 0.05), ("s_tmax", 50.0), ("s_noise", 1.003))

# Per process: the reverse process (many steps, stochastic where the process has an SDE; drawn in
# reverse_process.gif), then a few-step deterministic solver of the probability-flow ODE.
DEMO_SAMPLERS: dict[str, tuple[DemoSampler, DemoSampler]] = {
    "ddpm": (DemoSampler("ddpm", "DDPM", "ddpm", 1000, "trailing"),
             DemoSampler("ddim", "DDIM", "ddim", 50, "trailing")),
    "vp": (DemoSampler("euler_maruyama", "Euler-Maruyama", "euler_maruyama", 500, "uniform"),
           DemoSampler("dpmpp_2m", "DPM-Solver++(2M)", "dpmpp_2m", 25, "logsnr")),
    "ve": (DemoSampler("euler_maruyama", "Euler-Maruyama", "euler_maruyama", 500, "uniform"),
           DemoSampler("dpmpp_2m", "DPM-Solver++(2M)", "dpmpp_2m", 25, "logsnr")),
    "edm": (DemoSampler("heun_churn", "Heun with churn", "heun", 64, "karras", _EDM_CHURN),
            DemoSampler("heun", "Heun", "heun", 18, "karras")),
    "flow": (DemoSampler("euler", "Euler", "euler", 100, "uniform"),
             DemoSampler("euler_few", "Euler", "euler", 20, "uniform")),
}

VE_SIGMA_MAX = 50.0  # Song et al. 2021's (CIFAR-10): the least sigma_max of the demo's VE SDE (see demo_process)
# The sliced Wasserstein distances are means over FRESH_SETS fresh data sets of n points, the noise
# floor the mean over as many pairs of them (real against real): one set's distance is as noisy as
# the gap between a good model and the floor. SW_PROJECTIONS directions resolve the one angle of 2-D
# data far more finely than that noise.
FRESH_SETS = 8
SW_PROJECTIONS = 64
PICTURE_SIGMAS = (0.1, 0.3, 1.0, 3.0)  # forward_process.png: the same noise levels (SNRs) for every process


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    """A ValueError naming the argument and its flag (``ddpm_steps`` / ``--ddpm-steps``)."""
    flag = "--" + name.replace("_", "-")
    allowed = f"{low} .. {high}" if high is not None else f">= {low}"
    if not is_int(value) or value < low or (high is not None and value > high):
        why = f" (the schedule has T = {T} steps)" if high == T else ""
        raise ValueError(f"{name} ({flag}) must be an integer in {allowed}{why}, got {value!r}")


def demo_process(name: str, points: Tensor) -> tuple[Process, nn.Module]:
    """The process ``name`` set for the toy data ``points`` and the network it trains.

    One network for every process, the residual MLP (width 128, depth 3); the papers' settings
    but two. EDM's sigma_data is the data's standard deviation, in the process and in the
    preconditioning around the network. VE's sigma_max must be at least the largest distance
    between two training points (Song & Ermon 2020, technique 1; measured on 4096 of them), and
    is Song et al. 2021's 50 unless the data need more: sampling starts from N(0, (1 + sigma_max^2) I),
    which ignores the data's mean and shape, an error that reaches the samples shrunk about as
    1 / sigma_max, so sigma_max at the bound itself (below 4 for the toy sets, whose means lie
    off 0) leaves it visible. Nothing is clipped (the toy data is not in [-1, 1]).
    """
    net = models.MLPDenoiser(dim=2, width=128, depth=3)
    if name == "ddpm":
        return GaussianDiffusion(schedules.linear(T), prediction="eps"), net
    if name == "ve":
        largest_distance = float(torch.pdist(points[:4096].double()).max())
        return build("ve", sigma_max=max(VE_SIGMA_MAX, largest_distance)), net
    if name == "edm":
        sigma_data = float(points.std())
        return build("edm", sigma_data=sigma_data), models.EDMPrecond(net, sigma_data=sigma_data)
    return build(name), net


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


def _demo_samplers(process: str, steps, fast_steps, ddpm_steps, ddim_steps) -> tuple[DemoSampler, DemoSampler]:
    """The process's two samplers with the step counts asked for, checked before training.

    ``steps`` / ``fast_steps`` set the reverse process's and the few-step sampler's steps for
    every process; ``ddpm_steps`` / ``ddim_steps`` are their names for the DDPM chain (from
    before ``--process``), where every count lies in 1 .. T, the chain's grid."""
    asked = []
    for generic, value, ddpm_name, ddpm_value in (("steps", steps, "ddpm_steps", ddpm_steps),
                                                  ("fast_steps", fast_steps, "ddim_steps", ddim_steps)):
        if ddpm_value is not None and process != "ddpm":
            raise ValueError(f"{ddpm_name} (--{ddpm_name.replace('_', '-')}) sets the DDPM chain's samplers "
                             f"(--process ddpm); for process {process!r} use steps (--steps) and fast_steps "
                             "(--fast-steps)")
        if ddpm_value is not None and value is not None:
            raise ValueError(f"{generic} and {ddpm_name} set the same sampler's steps: give one of them")
        asked.append((generic, value) if ddpm_value is None else (ddpm_name, ddpm_value))
    chosen = []
    for sampler, (name, value) in zip(DEMO_SAMPLERS[process], asked):
        if value is not None:
            _check_int(name, value, 1, T if process == "ddpm" else None)
            sampler = dataclasses.replace(sampler, steps=int(value))
        chosen.append(sampler)
    return chosen[0], chosen[1]


def _sampler_record(s: DemoSampler, evaluations: int) -> dict:
    return {"sampler": s.sampler, "steps": s.steps, "spacing": s.spacing, "options": dict(s.options),
            "network_evaluations": evaluations}


def run_demo(
    out: str | Path = "difflab-demo",
    dataset: str = "swiss_roll",
    train_steps: int = 3000,
    batch: int = 512,
    lr: float = 2e-3,
    n: int = 2000,
    ddpm_steps: Optional[int] = None,
    ddim_steps: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
    threads: int = 0,
    say: Optional[Callable[[str], None]] = None,
    *,
    process: str = "ddpm",
    steps: Optional[int] = None,
    fast_steps: Optional[int] = None,
) -> dict:
    """Train, sample, evaluate and draw; returns the metrics written to ``out/metrics.json``.

    ``process``: one of ``difflab.processes.PROCESSES``, trained and sampled as
    :func:`demo_process` and ``DEMO_SAMPLERS`` say. ``steps`` / ``fast_steps``: the steps of its
    two samplers (default: ``DEMO_SAMPLERS``'s); for the DDPM chain ``ddpm_steps`` / ``ddim_steps``
    say the same. ``threads``: torch's intra-op threads, set for the process as the trainer does
    (0: the rule of ``difflab.devices.choose_cpu_threads``, which gives the demo's small MLP one
    thread); ``say`` receives the line that says what was chosen.
    """
    # every argument is checked before training, so a bad sampler setting does not waste the run
    if process not in PROCESSES:
        raise ValueError(f"process (--process) must be one of {', '.join(PROCESSES)}, got {process!r}")
    _check_int("train_steps", train_steps, 1)
    _check_int("batch", batch, 1)
    _check_int("n", n, 2)
    first, second = _demo_samplers(process, steps, fast_steps, ddpm_steps, ddim_steps)
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

    points = data.toy2d.make(dataset, 100_000, g)
    proc, model = demo_process(process, points)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # a step: forward + backward (~3x) of a batch
        step_flops = 3 * count_flops(lambda: model(points[:2], proc.timestep(1.0, 2))) / 2 * batch
    line = use_cpu_threads(step_flops, threads)
    if say is not None:
        say(line)
    t0 = time.perf_counter()
    ema_model, losses = _train(model, proc, points, train_steps, batch, lr, seed, progress)
    train_seconds = time.perf_counter() - t0

    # Reverse process: keep ~40 frames of the first sampler's trajectory (the model's x0 guess is not shown).
    frames, titles = [], []
    every = max(1, first.steps // 40)

    def record(step: dict) -> None:
        if step["i"] % every == 0:
            frames.append(step["x"].clone())
            titles.append(f"reverse process, step {step['i']}/{first.steps}")

    samples, seconds, records = {}, {}, {}
    for s, callback, bar in ((first, record, progress), (second, None, False)):
        counted = evaluation.CountedModel(ema_model)
        t0 = time.perf_counter()
        samples[s] = sample(counted, proc, (n, 2), s.sampler, s.steps, generator=g, callback=callback,
                            progress=bar, spacing=s.spacing, **dict(s.options))
        seconds[s.label] = time.perf_counter() - t0
        records[f"{s.label}_{s.steps}"] = _sampler_record(s, counted.calls)
    frames.append(samples[first])
    titles.append("samples x_0")

    pairs = [(data.toy2d.make(dataset, n, g), data.toy2d.make(dataset, n, g)) for _ in range(FRESH_SETS)]
    (fresh, other), fresh_sets = pairs[0], [f for f, _ in pairs]
    mmd = evaluation.mmd
    metrics = {
        "dataset": dataset,
        "n": n,
        "process": process,
        "process_settings": repr(proc),
        "samplers": records,
        "sliced_wasserstein": {**{f"{s.label}_{s.steps}": _mean_sw([(x, f) for f in fresh_sets])
                                  for s, x in samples.items()},
                               "noise_floor": _mean_sw([(o, f) for f, o in pairs])},
        "sliced_wasserstein_settings": {"fresh_sets": FRESH_SETS, "projections": SW_PROJECTIONS},
        "mmd2": {**{f"{s.label}_{s.steps}": mmd(x, fresh) for s, x in samples.items()},
                 "noise_floor": mmd(other, fresh)},
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "train_steps": train_steps,
        "cpu_threads": torch.get_num_threads(),
        "seconds": {"train": train_seconds, **seconds},
    }
    if not all(math.isfinite(v) for v in metrics["sliced_wasserstein"].values()):
        raise FloatingPointError("the samples contain NaN or inf; training diverged")

    plots = evaluation.plots
    plots.scatter_panels({"data": fresh, **{f"{s.title}, {s.steps} steps": x for s, x in samples.items()}},
                         out / "samples.png")
    plots.animate_2d(frames, titles, out / "reverse_process.gif", lim=3.0)
    plots.forward_process_2d(proc, fresh, out / "forward_process.png", ts=_picture_times(proc))
    plots.loss_curve(losses, out / "loss.png")
    metrics["seconds"]["total"] = time.perf_counter() - start
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _mean_sw(pairs: list[tuple[Tensor, Tensor]]) -> float:
    """The mean sliced Wasserstein distance over the pairs (SW_PROJECTIONS directions)."""
    sw = evaluation.sliced_wasserstein
    return sum(sw(x, y, n_projections=SW_PROJECTIONS) for x, y in pairs) / len(pairs)


def _picture_times(proc: Process) -> Optional[list[float]]:
    """forward_process.png's times: the plot's default for the DDPM chain (as before); for a
    continuous process the times of PICTURE_SIGMAS and its two ends, so every process is shown
    at the same signal-to-noise ratios."""
    if proc.discrete:
        return None
    inside = [s for s in PICTURE_SIGMAS if proc.sigma_min < s < proc.sigma_max]
    levels = torch.tensor([proc.sigma_min, *inside, proc.sigma_max], dtype=torch.float64)
    return proc.t_of(levels).clamp(proc.t_min, proc.t_max).tolist()


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a 2D model on the CPU, sample it with two samplers, write pictures")
    p.add_argument("--out", default="difflab-demo", help="output folder (default: difflab-demo)")
    p.add_argument("--process", default="ddpm", choices=tuple(PROCESSES),
                   help="the diffusion process (default ddpm: the DDPM chain; vp, ve: the score SDEs; edm; "
                        "flow: flow matching)")
    p.add_argument("--dataset", default="swiss_roll", choices=data.toy2d.NAMES)
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=2000, help="samples per sampler")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="steps of the reverse-process sampler (default: the process's, e.g. 1000 for DDPM)")
    p.add_argument("--fast-steps", type=int, default=None, metavar="N",
                   help="steps of the few-step sampler (default: the process's, e.g. 50 for DDIM)")
    p.add_argument("--ddpm-steps", type=int, default=None, metavar="N",
                   help="--process ddpm: DDPM's steps (1 .. 1000, default 1000), the same as --steps")
    p.add_argument("--ddim-steps", type=int, default=None, metavar="N",
                   help="--process ddpm: DDIM's steps (1 .. 1000, default 50), the same as --fast-steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch's CPU threads (default 0: one for the demo's small model, see difflab.devices)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)


def _main(args) -> int:
    m = run_demo(args.out, args.dataset, args.train_steps, n=args.n, ddpm_steps=args.ddpm_steps,
                 ddim_steps=args.ddim_steps, seed=args.seed, progress=not args.quiet, threads=args.threads,
                 say=print, process=args.process, steps=args.steps, fast_steps=args.fast_steps)
    sw = m["sliced_wasserstein"]
    print(f"difflab demo: {m['dataset']}, process {m['process']}, {m['train_steps']} training steps in "
          f"{m['seconds']['train']:.1f} s, {m['seconds']['total']:.1f} s in all")
    print("sliced Wasserstein distance to fresh data (lower is better):")
    for name, value in sw.items():
        print(f"  {name:<16} {value:.4f}")
    print(f"files in {Path(args.out).resolve()}: samples.png, reverse_process.gif, forward_process.png, "
          "loss.png, metrics.json")
    return 0
