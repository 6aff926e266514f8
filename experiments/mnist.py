"""The MNIST experiments: the classifier and reference the metrics are measured in, the floor (real
held-out digits), the forward process, unconditional against conditional generation, the guidance
sweep, few-step sampling (experiments/sampling.py) and bits/dim on held-out digits."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Optional

import torch

from difflab import data
from difflab.data import save_image_grid
from difflab.evaluation import report
from difflab.evaluation.classifier import (
    AtResolution,
    ClassifierFeatures,
    accuracy,
    load_classifier,
    train_and_save_classifier,
)
from experiments.runs import RowCache, given_mnist_run, logged_seconds, sd, train_or_reuse
from experiments.sampling import SampleEvaluator, few_step_rows, fid_noise, plot_steps, tolerance


def mnist_kwargs(S: dict, root: str, split: str) -> dict:
    kw = {"root": root, "split": split}
    if S["mnist_size"] != 28:
        kw["image_size"] = S["mnist_size"]  # reduced size: antialiased downsampling
    return kw


def mnist_config(S: dict, root: str, device: str) -> dict:
    """The training config of the size's class-conditional MNIST network (10% of labels dropped)."""
    return {
        "model": copy.deepcopy(S["mnist_model"]),
        "diffusion": copy.deepcopy(S.get("mnist_diffusion", {"schedule": "linear", "T": 1000, "prediction": "eps"})),
        "data": {"name": "mnist", "kwargs": mnist_kwargs(S, root, "t10k"), "flatten": S["mnist_flatten"]},
        "optim": {"lr": S["mnist_lr"], "warmup_steps": S.get("mnist_warmup", min(500, S["mnist_steps"] // 10)),
                  "decay": "cosine", "grad_clip": 1.0},
        "ema": {"decay": S.get("mnist_ema", 0.999 if S["mnist_steps"] >= 2000 else 0.9),
                "warmup": S.get("mnist_ema_warmup", 10)},
        "sample": {"every": -1},
        "batch_size": S["mnist_batch"], "steps": S["mnist_steps"], "cond_drop_prob": 0.1,
        "precision": "bf16" if torch.device(device).type == "cuda" else "fp32", "device": device, "seed": 0,
        "log_every": 100,
        "ckpt_every": max(1, S["mnist_steps"] // 4),
    }


def on_grid(x: torch.Tensor) -> torch.Tensor:
    """Round images in [-1, 1] to the 256 levels of 8-bit data (downsampled digits are between levels)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def classifier_for(out: Path, root: str, S: dict, given: Optional[str], progress: bool):
    """The MNIST classifier (``given``, or one trained into out/classifier) and its folder."""
    if given:
        return load_classifier(given), str(given)
    d = out / "classifier"
    if not (d / "classifier.json").is_file():
        train_and_save_classifier("mnist", d, root, epochs=S["clf_epochs"], limit=S["clf_limit"], progress=progress)
    return load_classifier(d), str(d)


def full_size_floor(clf, root: str, S: dict) -> dict:
    """FID / precision / recall of all held-out train5k digits against t10k at 28x28 (the data's own size)."""
    t10k, _ = data.load("mnist", root=root, split="t10k")
    held, held_labels = data.load("mnist", root=root, split="train5k")
    ref = report.ImageReference(t10k, ClassifierFeatures(clf, name="mnist-cnn"), clf, batch_size=S["batch"])
    return ref(held, held_labels)


def floor_rows(ref, held: torch.Tensor, held_labels: torch.Tensor, S: dict) -> dict:
    """Real held-out digits against the reference: all of them, as many as the samples, and (when
    fewer than all) a few random subsets of that many, since the floor at small n varies."""
    n = S["n"]
    floor_n = S.get("floor_n", len(held))
    res = {"train5k_all": ref(held[:floor_n], held_labels[:floor_n]),
           f"train5k_first_{n}": ref(held[:n], held_labels[:n])}
    if n < floor_n:
        fids = []
        for k in range(S.get("floor_draws", 1)):
            idx = torch.randperm(floor_n, generator=torch.Generator().manual_seed(100 + k))[:n]
            fids.append(ref(held[idx], held_labels[idx])["fid"])
        res["subsets_of_n"] = {"fid": fids, "mean": sum(fids) / len(fids), "sd": sd(fids)}
    return res


def measure_setup(res: dict, S: dict, out: Path, root: str, device: str, classifier: Optional[str],
                  progress: bool):
    """The classifier, the reference (t10k) and the held-out digits (train5k, in a fixed random
    order: the split is sorted by class); records the classifier and the floors in ``res``.
    Returns (ref, t10k, held, held_labels, classifier folder)."""
    clf, clf_dir = classifier_for(out, root, S, classifier, progress)
    res["classifier"] = {k: clf.meta.get(k) for k in ("train_split", "test_split", "test_accuracy", "num_test")}
    res["classifier"]["path"] = clf_dir
    clf.to(device)
    t10k, _ = data.load("mnist", **mnist_kwargs(S, root, "t10k"))
    held, held_labels = data.load("mnist", **mnist_kwargs(S, root, "train5k"))
    if S["mnist_size"] != 28:
        if S.get("floor_28", True):
            res["floor_28"] = full_size_floor(clf, root, S)
        clf = AtResolution(clf).eval()
        res["classifier"]["accuracy_at_size"] = accuracy(clf, held, held_labels)
    res["image_size"] = S["mnist_size"]
    ref = report.ImageReference(t10k[: S["ref_n"]], ClassifierFeatures(clf, name="mnist-cnn"), clf,
                                batch_size=S["batch"])
    res["metric"] = ref.fid_name
    order = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))
    held, held_labels = held[order], held_labels[order]
    res["floor"] = floor_rows(ref, held, held_labels, S)
    return ref, t10k, held, held_labels, clf_dir


def mnist_network(S: dict, out: Path, root: str, device: str, progress: bool, mnist_run: Optional[str]):
    """The class-conditional network: the given trained run (e.g. benchmarks/mnist_cond_gpu.py's),
    evaluated as it is, or one trained into out/runs/mnist_cond. Returns (run, training record)."""
    if mnist_run:
        run = given_mnist_run(mnist_run, S["mnist_size"], device)
        cfg, run_dir, secs = run.config.to_dict(), Path(mnist_run), 0.0
    else:
        cfg = mnist_config(S, root, device)
        run, secs = train_or_reuse(cfg, "mnist_cond", out, progress)
        run_dir = out / "runs" / "mnist_cond"
    return run, {"seconds": logged_seconds(run_dir) or secs, "steps": run.step, "run": str(run_dir),
                 "model": cfg["model"], "diffusion": cfg["diffusion"], "batch_size": cfg["batch_size"],
                 "lr": cfg["optim"]["lr"], "ema": cfg["ema"],
                 "parameters": sum(p.numel() for p in run.ema_model.parameters())}


def forward_figure(run, t10k: torch.Tensor, path: Path) -> list:
    """The forward process on eight example digits (rows) at seven timesteps (columns); returns the
    timesteps counted from 1."""
    ts = [0, 50, 100, 200, 400, 700, 999]
    g = torch.Generator().manual_seed(3)
    x0 = t10k[:8]
    cols = [run.proc.q_sample(x0, torch.full((8,), t, dtype=torch.long), torch.randn(x0.shape, generator=g))
            for t in ts]
    save_image_grid(torch.stack(cols, 1).reshape(-1, *x0.shape[1:]).clamp(-1, 1), path, nrow=len(ts))
    return [t + 1 for t in ts]


def guidance_sweep(ev: SampleEvaluator, labels: torch.Tensor) -> list:
    """DDIM-50 at each guidance scale; a picture with a row per scale and a column per class (same
    noise in each column) and the metrics against the scale."""
    rows, pics = [], []
    for w in ev.S["guidance"]:
        rows.append(ev.evaluate("ddim", 50, w, labels, "conditional" if w == 1.0 else None))
        pics.append(ev.draw("ddim", 50, w, torch.arange(10), 123, 10)[0])
    save_image_grid(torch.cat(pics), ev.out / "mnist_guidance_grid.png", nrow=10)
    report.plot_sweep(rows, "guidance", ["fid", "accuracy", "precision", "recall"], ev.out / "mnist_guidance.png",
                      labels={"fid": ev.ref.fid_name, "guidance": "guidance scale w"})
    return rows


def bits_per_dim(run, held: torch.Tensor, S: dict, device: str) -> dict:
    """The variational bound on S["bpd_n"] held-out digits (null label: the unconditional model)."""
    x = on_grid(held[: S["bpd_n"]]).reshape(-1, *run.sample_shape).to(device)  # a random subset (fixed order)
    cond = torch.full((len(x),), 10, dtype=torch.long, device=device)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(4)  # one stream: each batch its own timesteps and noise
    bpd = torch.cat([run.proc.vlb_bits_per_dim(run.ema_model, x[i : i + S["batch"]], cond[i : i + S["batch"]],
                                               num_timesteps=S["bpd_timesteps"], clip_x0=True,
                                               generator=gen).cpu()
                     for i in range(0, len(x), S["batch"])])
    return {"n": len(bpd), "mean": float(bpd.mean()), "stderr": float(bpd.std() / math.sqrt(len(bpd))),
            "timesteps": S["bpd_timesteps"], "seconds": time.perf_counter() - t0}


def mnist_part(S: dict, out: Path, root: str, device: str, classifier: Optional[str], progress: bool,
               mnist_run: Optional[str] = None) -> dict:
    res: dict = {}
    ref, t10k, held, held_labels, clf_dir = measure_setup(res, S, out, root, device, classifier, progress)
    run, res["train"] = mnist_network(S, out, root, device, progress, mnist_run)
    cache = RowCache(out / "runs" / "mnist_rows.json",
                     f"{run.path.resolve()}@{run.step}/n={S['n']}/ref={S['ref_n']}/classifier={clf_dir}")
    res["forward_ts"] = forward_figure(run, t10k, out / "mnist_forward.png")
    ev = SampleEvaluator(run, ref, S, out, device, cache)
    labels = torch.arange(S["n"]) % 10
    res["guidance"] = guidance_sweep(ev, labels)
    # unconditional (null label) vs conditional (w = 1 above): one network, one code path
    cond_row = next(r for r in res["guidance"] if r["guidance"] == 1.0)
    res["uncond_vs_cond"] = [ev.evaluate("ddim", 50, 1.0, None, "unconditional"), cond_row]
    # the FID's own sampling noise: the conditional DDIM-50 setting again from fresh noise
    res["fid_noise"] = fid_noise([cond_row] + [ev.evaluate("ddim", 50, 1.0, labels, seed=10_000 * k)
                                               for k in range(1, S["noise_seeds"])])
    # few-step sampling at w = 1 (one network pass per step) against DDPM with all T steps
    steps_rows = few_step_rows(ev, labels)
    res["steps"] = steps_rows
    res["tolerance"] = tolerance(steps_rows[0]["fid"], res["fid_noise"])
    for r in steps_rows:
        r["within_tolerance"] = bool(r["fid"] <= steps_rows[0]["fid"] + res["tolerance"]["fid"])
    plot_steps(steps_rows, res["tolerance"]["fid"], ref.fid_name, out / "mnist_steps.png")
    res["bits_per_dim"] = bits_per_dim(run, held, S, device)
    return res
