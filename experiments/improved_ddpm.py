"""Improved DDPM's learned variance against fixed variances: likelihood and few-step sampling
(Nichol & Dhariwal 2021; not part of the difflab package).

    python experiments/improved_ddpm.py --out docs/improved_ddpm          # about 45 minutes on 2 busy CPU cores
    python experiments/improved_ddpm.py --size tiny --out /tmp/iddpm      # the code path in seconds

Training runs go to --runs (default runs/improved_ddpm; a finished run there is reused).

Likelihood: on scikit-learn's digits (configs/digits.yaml against configs/digits_hybrid.yaml: the same
class-conditional MLP, L_simple with a fixed variance against L_hybrid with a learned one), on the
config's cosine chain and again on Diffusion-LM's sqrt schedule (``DIGITS_PROCESSES``), and on
14x14 MNIST (configs/mnist14_hybrid.yaml and its L_simple twin), three seeds each; the variational
bound in bits/dim (200 strata of the T terms, x0 estimates clipped as difflab eval clips them;
class-conditional, each image's label given) on held-out images
(digits: the 300 of experiments/processes.py's split, 17 levels; MNIST: t10k, 256), the L_simple models under their best fixed variance (beta~ or beta) and the
hybrid ones under their learned variance. Both models of a seed see the same noise, so their
per-image difference is paired; the must-show compares the three seeds' means with their standard
errors.

Few steps: digits (both processes) sampled at w = 1 by DDPM ancestral sampling on 25, 50 and 100 respaced steps
(the paper's respacing, t = round(i (T - 1) / (K - 1)): spacing "linspace") with the learned variance, and with beta~ and beta (of the
L_simple model, as in the paper's figure 8, and of the hybrid model itself); Frechet distance in the
features of a CNN trained on the real training digits against the held-out digits, beside the floor
and the distance's own noise (a second draw).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
if __package__ in (None, "") and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: import from the repository root

import torch  # noqa: E402
import yaml  # noqa: E402

import difflab as dl  # noqa: E402
from difflab.files import atomic_write_text  # noqa: E402
from difflab.training import load as load_run  # noqa: E402
from experiments.processes import Judge, split_digits, train_run  # noqa: E402
from experiments.settings import DEFAULT_MNIST_ROOT  # noqa: E402

COMMAND = "python experiments/improved_ddpm.py"
REPO = HERE.parent

SIZES = {
    "tiny": dict(steps=6, mnist_steps=4, seeds=(0,), bpd_n=8, mnist_bpd_n=8, bpd_timesteps=4, n=40,
                 respaced=(5,), clf_epochs=1),
    "cpu": dict(steps=2000, mnist_steps=6000, seeds=(0, 1, 2), bpd_n=300, mnist_bpd_n=1000, bpd_timesteps=200,
                n=1000, respaced=(25, 50, 100), clf_epochs=30),
}


def configs(name: str, steps: int, seed: int, mnist_root: str, schedule: Optional[str] = None) -> dict:
    """{"simple": cfg, "hybrid": cfg}: the shipped hybrid config and its L_simple twin (fixed variance),
    both on the noise schedule ``schedule`` if one is named (else the config's)."""
    hybrid = yaml.safe_load((REPO / "configs" / f"{name}_hybrid.yaml").read_text())
    if name == "mnist14":
        hybrid["data"]["kwargs"]["root"] = mnist_root
    if schedule is not None:
        hybrid["diffusion"] = dict(hybrid["diffusion"], schedule=schedule)
    hybrid.update(steps=steps, seed=seed, ckpt_every=steps, log_every=max(1, steps // 10))
    hybrid["sample"] = dict(hybrid["sample"], every=-1)
    simple = yaml.safe_load(yaml.safe_dump(hybrid))
    simple["model"]["kwargs"].pop("learn_sigma")
    simple["loss"] = "diffusion"
    simple.pop("vlb")
    return {"simple": simple, "hybrid": hybrid}


BINS = {"digits": 17, "mnist14": 256}  # the data's levels in [-1, 1], as difflab eval counts them

# The digits' processes: configs/digits_hybrid.yaml's cosine chain, and Diffusion-LM's sqrt schedule (Li
# et al. 2022), made for discrete data. The bound is a code length for data on a grid, and the cosine chain
# was sized to 8-bit images: its first step's noise (sd 0.006) is a twentieth of the digits' 17-level grid
# spacing (0.125), so its first terms charge any network that cannot snap x0 to the grid, whatever its
# variance. The sqrt chain starts at sd 0.15, about a grid spacing, as the cosine chain starts at about
# one 8-bit spacing.
DIGITS_PROCESSES = {"digits": None, "digits_sqrt": "sqrt"}


def bits_per_dim(run, x, y, variance: str, timesteps: Optional[int], seed: int, bins: int) -> torch.Tensor:
    """The class-conditional variational bound per image in bits/dim (its label given), from noise
    seeded ``seed`` (the same for every model), its x0 estimates clipped to the data's range as
    ``difflab eval`` clips them: unclipped, an eps network's x0 at the cosine chain's last steps
    (beta_t up to 0.999) puts most of the bound in a few terms there."""
    g = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    return run.proc.vlb_bits_per_dim(run.ema_model, flat, y, num_timesteps=timesteps, variance=variance, generator=g,
                                     bins=bins, clip_x0=True)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan"))


def likelihood(name: str, data, held, S: dict, runs_dir: Path, mnist_root: str,
               schedule: Optional[str] = None, tag: Optional[str] = None) -> dict:
    """Both models at every seed: bits/dim of the held-out images under each variance. Runs go to
    ``runs_dir/{tag}_{kind}_s{seed}`` (tag: the data's name unless given)."""
    rows = []
    x_held, y_held = held
    for seed in S["seeds"]:
        cfgs = configs(name, S["mnist_steps" if name == "mnist14" else "steps"], seed, mnist_root, schedule)
        row = {"seed": seed}
        for kind, cfg in cfgs.items():
            out = runs_dir / f"{tag or name}_{kind}_s{seed}"
            row[f"{kind}_train_seconds"] = train_run(cfg, out, data)
            run = load_run(out)
            variances = ("learned", "posterior", "beta") if kind == "hybrid" else ("posterior", "beta")
            for variance in variances:
                bpd = bits_per_dim(run, x_held, y_held, variance, S["bpd_timesteps"], seed=100 + seed, bins=BINS[name])
                row[f"{kind}_{variance}"] = float(bpd.mean())
                row[f"{kind}_{variance}_se"] = float(bpd.std() / math.sqrt(len(bpd)))
                if kind == "hybrid" and variance == "learned":
                    learned = bpd
                if kind == "simple" and variance == "posterior":
                    simple_post = bpd
                if kind == "simple" and variance == "beta":
                    simple_beta = bpd
        best = simple_post if simple_post.mean() < simple_beta.mean() else simple_beta
        diff = learned - best  # paired: the same images and noise
        row["paired_difference"] = float(diff.mean())
        row["paired_difference_se"] = float(diff.std() / math.sqrt(len(diff)))
        row["simple_best"] = float(best.mean())
        rows.append(row)
    hyb = mean_se([r["hybrid_learned"] for r in rows])
    sim = mean_se([r["simple_best"] for r in rows])
    se = math.hypot(hyb[1], sim[1])
    return {"rows": rows, "hybrid_learned": hyb, "simple_best": sim, "difference": hyb[0] - sim[0],
            "difference_se": se, "must_show": bool(sim[0] - hyb[0] > 2 * se) if math.isfinite(se) else None}


# improved DDPM's respacing, space_timesteps(T, "K"): t = round(i (T - 1) / (K - 1)), difflab's "linspace"
SPACING = "linspace"


def draw(run, n: int, steps: int, variance: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    x = dl.sample(run.ema_model, run.proc, (n, 64), "ddpm", steps, cond=labels, guidance=1.0, generator=g,
                  variance=variance, spacing=SPACING)
    return x.clamp(-1, 1).reshape(n, 1, 8, 8), labels


def few_steps(S: dict, runs_dir: Path, judge: Judge, tag: str = "digits") -> dict:
    """The digits twins of ``tag`` at every seed, sampled on respaced steps under each variance."""
    rows = []
    for seed in S["seeds"]:
        for kind, variances in (("hybrid", ("learned", "posterior", "beta")), ("simple", ("posterior", "beta"))):
            run = load_run(runs_dir / f"{tag}_{kind}_s{seed}")
            for steps in S["respaced"]:
                for variance in variances:
                    rows.append({"seed": seed, "model": kind, "variance": variance, "steps": steps,
                                 **judge(*draw(run, S["n"], steps, variance, seed=10 + seed))})
    run = load_run(runs_dir / f"{tag}_hybrid_s{S['seeds'][0]}")
    a = judge(*draw(run, S["n"], S["respaced"][0], "learned", seed=10 + S["seeds"][0]))
    b = judge(*draw(run, S["n"], S["respaced"][0], "learned", seed=999))
    means = {}
    for r in rows:
        means.setdefault(f"{r['model']}/{r['variance']}/{r['steps']}", []).append(r["fd"])
    summary = {k: mean_se(v) for k, v in means.items()}
    must = {}
    for steps in S["respaced"][:2]:
        learned = summary[f"hybrid/learned/{steps}"][0]
        must[steps] = {"learned": learned,
                       "simple_posterior": summary[f"simple/posterior/{steps}"][0],
                       "simple_beta": summary[f"simple/beta/{steps}"][0],
                       "hybrid_posterior": summary[f"hybrid/posterior/{steps}"][0],
                       "hybrid_beta": summary[f"hybrid/beta/{steps}"][0]}
        must[steps]["holds"] = all(learned < v for k, v in must[steps].items() if k != "learned")
    return {"rows": rows, "summary": summary, "fd_noise": abs(a["fd"] - b["fd"]), "floor": judge.floor(S["n"]),
            "must_show": must}


def write_table(res: dict, path: Path) -> None:
    lines = ["| data | L_simple, best fixed variance | L_hybrid, learned variance | difference (2 SE) | "
             "paired difference per seed |", "|---|---|---|---|---|"]
    for name, r in res["likelihood"].items():
        paired = ", ".join(f"{row['paired_difference']:+.3f} +- {row['paired_difference_se']:.3f}" for row in r["rows"])
        lines.append(f"| {name} | {r['simple_best'][0]:.3f} +- {r['simple_best'][1]:.3f} | "
                     f"{r['hybrid_learned'][0]:.3f} +- {r['hybrid_learned'][1]:.3f} | "
                     f"{r['difference']:+.3f} ({2 * r['difference_se']:.3f}) | {paired} |")
    lines += ["", "| process | steps | " + " | ".join(k for k in ("learned", "simple_posterior", "simple_beta",
                                                                   "hybrid_posterior", "hybrid_beta")) + " |",
              "|---|---|---|---|---|---|---|"]
    for tag, fs in res["few_steps"].items():
        for steps in res["settings"]["respaced"]:
            cells = []
            for key in ("hybrid/learned", "simple/posterior", "simple/beta", "hybrid/posterior", "hybrid/beta"):
                m, se = fs["summary"][f"{key}/{steps}"]
                cells.append(f"{m:.2f} +- {se:.2f}" if math.isfinite(se) else f"{m:.2f}")
            lines.append(f"| {tag} | {steps} | " + " | ".join(cells) + " |")
    lines.append("\nFrechet distance floor (real digits against held-out): "
                 f"{next(iter(res['few_steps'].values()))['floor']:.2f}; the distance's noise (two draws of one "
                 "setting): " + ", ".join(f"{fs['fd_noise']:.2f} ({tag})" for tag, fs in res["few_steps"].items()) + ".")
    atomic_write_text(path, "\n".join(lines) + "\n")


def run_experiment(out="docs/improved_ddpm", size: str = "cpu", runs_dir: Optional[str] = None,
                   mnist_root: str = DEFAULT_MNIST_ROOT, command: str = COMMAND) -> dict:
    S = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir or "runs/improved_ddpm")
    torch.set_num_threads(1)  # small MLPs: one thread is fastest, and robust on a busy machine
    x_train, y_train, x_held, y_held = split_digits()
    n = S["bpd_n"]
    res = {"command": f"{command}" + (f" --size {size}" if size != "cpu" else "") + f" --out {out}",
           "size": size, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in S.items()},
           "likelihood": {}}
    for tag, schedule in DIGITS_PROCESSES.items():
        res["likelihood"][tag] = likelihood("digits", (x_train, y_train), (x_held[:n], y_held[:n]), S, runs_dir,
                                            mnist_root, schedule, tag)
    mnist_train = dl.data.load("mnist", root=mnist_root, split="train5k", image_size=14)
    xm, ym = dl.data.load("mnist", root=mnist_root, split="t10k", image_size=14)
    m = S["mnist_bpd_n"]
    res["likelihood"]["mnist14"] = likelihood("mnist14", mnist_train, (xm[:m], ym[:m]), S, runs_dir, mnist_root)
    judge = Judge(x_train, y_train, x_held, y_held, S["clf_epochs"])
    res["few_steps"] = {tag: few_steps(S, runs_dir, judge, tag) for tag in DIGITS_PROCESSES}
    atomic_write_text(out / "metrics.json", json.dumps(res, indent=1))
    write_table(res, out / "table.md")
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/improved_ddpm")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--runs", default=None, help="training runs folder (default runs/improved_ddpm)")
    p.add_argument("--mnist-root", default=DEFAULT_MNIST_ROOT)
    a = p.parse_args(argv)
    res = run_experiment(a.out, a.size, a.runs, a.mnist_root)
    print((Path(a.out) / "table.md").read_text())
    print(json.dumps({k: v["must_show"] for k, v in res["likelihood"].items()}),
          json.dumps({tag: fs["must_show"] for tag, fs in res["few_steps"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
