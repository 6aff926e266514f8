"""``difflab experiments``: the classic experiments of the field, end to end, into one report.

    difflab experiments --size cpu --out docs/experiments     # reduced size, 2 CPU cores
    difflab experiments --size gpu --out docs/experiments_gpu --device cuda   # full size

(1) 2D: a Swiss roll's forward and reverse process, DDPM (and DDIM) samples with sliced
Wasserstein / MMD / coverage, classifier-free guidance on the labelled 8-Gaussians at several
scales (accuracy of the requested mode, precision, coverage). (2) MNIST: the forward process on
example digits, unconditional (null label) against conditional generation from one network,
the guidance sweep (FID, precision, recall, accuracy), accelerated samplers against 1000-step
DDPM (FID and wall-clock speed-up), bits/dim on held-out digits and the FID floor (held-out
train5k against t10k). Every claim in ``report.md`` quotes a number from ``metrics.json``.

Sizes: ``tiny`` (seconds; the test suite), ``cpu`` (reduced: a residual MLP on flattened MNIST,
fewer samples; the report says so), ``gpu`` (configs/mnist_cond.yaml's U-Net, 10k samples).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from .. import data
from ..evaluation import plots, report
from ..evaluation.classifier import ClassifierFeatures, accuracy, load_classifier
from ..evaluation.grids import save_image_grid
from ..samplers import SAMPLERS, sample
from ..training import load as load_run
from ..training import train
from .eval import draw_samples
from .train_classifier import DEFAULT_MNIST_ROOT, run_train_classifier

__all__ = ["add_parser", "run_experiments", "SIZES"]

_TOY_RUN = {
    "diffusion": {"schedule": "linear", "T": 1000, "prediction": "eps"},
    "optim": {"lr": 2.0e-3, "warmup_steps": 50, "decay": "cosine", "grad_clip": 1.0},
    "ema": {"decay": 0.995, "warmup": 10},
    "sample": {"every": -1},
    "batch_size": 512,
    "precision": "fp32",
    "log_every": 100,
    "seed": 0,
}

SIZES = {
    "tiny": dict(mnist_size=14, toy_steps=40, toy_n=300, toy_ddpm_steps=50, toy_width=64,
                 mnist_model={"name": "mlp", "kwargs": {"dim": 196, "width": 64, "depth": 1, "num_classes": 10}},
                 mnist_flatten=True, mnist_steps=4, mnist_batch=32, mnist_lr=1e-3, n=40, ref_n=400,
                 guidance=[0.0, 1.0, 3.0], sweep_steps=[2, 4], ddpm_steps=8, samplers=["ddim", "dpmpp_2m"],
                 bpd_n=4, bpd_timesteps=3, clf_epochs=1, clf_limit=600, batch=200, floor_n=400, floor_28=False),
    "cpu": dict(mnist_size=14, toy_steps=1200, swiss_steps=4000, toy_n=2000, toy_ddpm_steps=1000, toy_width=128,
                mnist_model={"name": "mlp", "kwargs": {"dim": 196, "width": 512, "depth": 3, "num_classes": 10}},
                mnist_flatten=True, mnist_steps=4000, mnist_batch=128, mnist_lr=2e-3, mnist_ema=0.995, n=2000,
                ref_n=10000, guidance=[0.0, 1.0, 2.0, 3.0, 5.0, 8.0], sweep_steps=[5, 10, 20, 50], ddpm_steps=1000,
                samplers=["ddim", "dpmpp_2m", "euler"], bpd_n=200, bpd_timesteps=50, clf_epochs=8, clf_limit=None,
                batch=500),
    "gpu": dict(mnist_size=28, toy_steps=10000, toy_n=10000, toy_ddpm_steps=1000, toy_width=256,
                mnist_model={"name": "unet_mnist", "kwargs": {"num_classes": 10}},
                mnist_flatten=False, mnist_steps=5000, mnist_batch=256, mnist_lr=5e-4, n=10000, ref_n=10000,
                guidance=[0.0, 1.0, 2.0, 3.0, 5.0, 8.0], sweep_steps=[5, 10, 20, 50, 100], ddpm_steps=1000,
                samplers=["ddim", "dpmpp_2m", "euler", "heun"], bpd_n=1000, bpd_timesteps=100, clf_epochs=8,
                clf_limit=None, batch=1000),
}


def _write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _train(cfg: dict, name: str, out: Path, progress: bool):
    """Train ``cfg`` into out/runs/name (reusing a finished run of the same config), return dl.load(run)."""
    cfg_path = _write_config(out / "configs" / f"{name}.yaml", cfg)
    run_dir = out / "runs" / name
    done = run_dir / "config.yaml"
    if done.is_file():
        try:
            run = load_run(run_dir, device=cfg.get("device", "cpu"))
            if run.step >= cfg["steps"]:
                return run, 0.0
        except (FileNotFoundError, ValueError):
            pass
    start = time.perf_counter()
    train(cfg_path, run_dir, resume=done.is_file(), progress=progress)
    return load_run(run_dir, device=cfg.get("device", "cpu")), time.perf_counter() - start


def _toy_config(dataset: str, steps: int, width: int, num_classes: Optional[int], device: str) -> dict:
    kwargs = {"dim": 2, "width": width, "depth": 3}
    if num_classes:
        kwargs["num_classes"] = num_classes
    cfg = copy.deepcopy(_TOY_RUN)
    cfg.update(model={"name": "mlp", "kwargs": kwargs},
               data={"name": "toy2d", "kwargs": {"dataset": dataset, "n": 100_000, "seed": 0}},
               steps=steps, ckpt_every=steps, cond_drop_prob=0.1 if num_classes else 0.0, device=device)
    return cfg


# ------------------------------------------------------------------------------------------ 2D
def swiss_roll_part(S: dict, out: Path, device: str, progress: bool) -> dict:
    steps = S.get("swiss_steps", S["toy_steps"])  # the roll's thin arms take longer than the 8 Gaussians
    run, secs = _train(_toy_config("swiss_roll", steps, S["toy_width"], None, device), "swiss_roll", out, progress)
    g = torch.Generator().manual_seed(1)
    n = S["toy_n"]
    ref, labels = data.toy2d.make("swiss_roll", max(n, 2000), g, labels=True)
    fresh = data.toy2d.make("swiss_roll", n, g)
    plots.forward_process_2d(run.proc, fresh, out / "swiss_forward.png")
    T = S["toy_ddpm_steps"]
    shots = sorted({0, T // 4, T // 2, (3 * T) // 4, T - max(1, T // 20), T - 1})
    frames = {}

    def record(step: dict) -> None:
        if step["i"] in shots:  # the VP state x_t at the step's noise level
            t = float(run.proc.t_of(torch.tensor(float(step["sigma"]))))
            frames[f"x_t, t = {round(t) + 1}"] = step["x"].clone()

    x_ddpm = sample(run.ema_model, run.proc, (n, 2), "ddpm", T, generator=g, callback=record)
    frames["samples x_0"] = x_ddpm
    plots.scatter_panels(frames, out / "swiss_reverse.png", lim=3.0, suptitle="reverse process (DDPM)")
    x_ddim = sample(run.ema_model, run.proc, (n, 2), "ddim", 50, generator=g)
    plots.scatter_panels({"data": fresh, f"DDPM, {T} steps": x_ddpm, "DDIM, 50 steps": x_ddim},
                         out / "swiss_samples.png")
    return {"train_seconds": secs, "train_steps": steps,
            "floor": report.toy_metrics(fresh, ref, labels),
            f"ddpm_{T}": report.toy_metrics(x_ddpm, ref, labels),
            "ddim_50": report.toy_metrics(x_ddim, ref, labels)}


def guidance_2d_part(S: dict, out: Path, device: str, progress: bool) -> dict:
    run, secs = _train(_toy_config("8gaussians", S["toy_steps"], S["toy_width"], 8, device), "8gaussians_cond", out,
                       progress)
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


# --------------------------------------------------------------------------------------- MNIST
def _mnist_config(S: dict, root: str, device: str) -> dict:
    cfg = {
        "model": copy.deepcopy(S["mnist_model"]),
        "diffusion": {"schedule": "linear", "T": 1000, "prediction": "eps"},
        "data": {"name": "mnist", "kwargs": _mnist_kwargs(S, root, "t10k"), "flatten": S["mnist_flatten"]},
        "optim": {"lr": S["mnist_lr"], "warmup_steps": min(500, S["mnist_steps"] // 10), "decay": "cosine",
                  "grad_clip": 1.0},
        "ema": {"decay": S.get("mnist_ema", 0.999 if S["mnist_steps"] >= 2000 else 0.9), "warmup": 10},
        "sample": {"every": -1},
        "batch_size": S["mnist_batch"], "steps": S["mnist_steps"], "cond_drop_prob": 0.1,
        "precision": "bf16" if device == "cuda" else "fp32", "device": device, "seed": 0, "log_every": 100,
        "ckpt_every": max(1, S["mnist_steps"] // 4),
    }
    return cfg


def _mnist_kwargs(S: dict, root: str, split: str) -> dict:
    kw = {"root": root, "split": split}
    if S["mnist_size"] != 28:
        kw["image_size"] = S["mnist_size"]  # reduced size: antialiased downsampling
    return kw


def _on_grid(x: torch.Tensor) -> torch.Tensor:
    """Round images in [-1, 1] to the 256 levels of 8-bit data (downsampled digits are between levels)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


class _AtResolution(torch.nn.Module):
    """The 28x28 classifier applied to images upsampled (bilinear) from a reduced size."""

    def __init__(self, classifier, size: int = 28) -> None:
        super().__init__()
        self.inner, self.size = classifier, size
        self.config, self.meta, self.num_classes = classifier.config, getattr(classifier, "meta", {}), classifier.num_classes

    def _up(self, x):
        if x.shape[-1] == self.size:
            return x
        return torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def features(self, x):
        return self.inner.features(self._up(x))

    def forward(self, x):
        return self.inner(self._up(x))


def full_size_floor(clf, root: str, S: dict) -> dict:
    """FID / precision / recall of all held-out train5k digits against t10k at 28x28 (the data's own size)."""
    t10k, _ = data.load("mnist", root=root, split="t10k")
    held, held_labels = data.load("mnist", root=root, split="train5k")
    ref = report.ImageReference(t10k, ClassifierFeatures(clf, name="mnist-cnn"), clf, batch_size=S["batch"])
    return ref(held, held_labels)


def _classifier(out: Path, root: str, S: dict, given: Optional[str], progress: bool):
    if given:
        return load_classifier(given), str(given)
    d = out / "classifier"
    if not (d / "classifier.json").is_file():
        run_train_classifier("mnist", d, root, epochs=S["clf_epochs"], limit=S["clf_limit"], progress=progress)
    return load_classifier(d), str(d)


def mnist_part(S: dict, out: Path, root: str, device: str, classifier: Optional[str], progress: bool) -> dict:
    res: dict = {}
    clf, clf_dir = _classifier(out, root, S, classifier, progress)
    res["classifier"] = {k: clf.meta.get(k) for k in ("train_split", "test_split", "test_accuracy", "num_test")}
    res["classifier"]["path"] = clf_dir
    clf.to(device)
    t10k, _ = data.load("mnist", **_mnist_kwargs(S, root, "t10k"))
    held, held_labels = data.load("mnist", **_mnist_kwargs(S, root, "train5k"))
    if S["mnist_size"] != 28:
        if S.get("floor_28", True):
            res["floor_28"] = full_size_floor(clf, root, S)
        clf = _AtResolution(clf).eval()
        res["classifier"]["accuracy_at_size"] = accuracy(clf, held, held_labels)
    res["image_size"] = S["mnist_size"]
    feats = ClassifierFeatures(clf, name="mnist-cnn")
    ref = report.ImageReference(t10k[: S["ref_n"]], feats, clf, batch_size=S["batch"])
    res["metric"] = ref.fid_name
    n = S["n"]
    # train5k is sorted by class: every subset below is a fixed random one
    order = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))
    held, held_labels = held[order], held_labels[order]
    floor_n = S.get("floor_n", len(held))
    res["floor"] = {"train5k_all": ref(held[:floor_n], held_labels[:floor_n]),
                    f"train5k_first_{n}": ref(held[:n], held_labels[:n])}

    # forward process on example digits: rows = digits, columns = t
    cfg = _mnist_config(S, root, device)
    run, secs = _train(cfg, "mnist_cond", out, progress)
    res["train"] = {"seconds": secs, "steps": cfg["steps"], "model": cfg["model"], "batch_size": cfg["batch_size"],
                    "parameters": sum(p.numel() for p in run.ema_model.parameters())}
    ts = [0, 50, 100, 200, 400, 700, 999]
    g = torch.Generator().manual_seed(3)
    x0 = t10k[:8]
    cols = [run.proc.q_sample(x0, torch.full((8,), t, dtype=torch.long), torch.randn(x0.shape, generator=g))
            for t in ts]
    save_image_grid(torch.stack(cols, 1).reshape(-1, *x0.shape[1:]).clamp(-1, 1), out / "mnist_forward.png",
                    nrow=len(ts))
    res["forward_ts"] = [t + 1 for t in ts]

    labels = torch.arange(n) % 10
    samplers = [s for s in S["samplers"] if s in SAMPLERS]

    def evaluate(sampler, steps, w, lab, tag):
        x, timing = draw_samples(run, n, sampler, steps, w, lab, 0, S["batch"], device)
        row = {"sampler": sampler, "steps": steps, "guidance": w, "labels": "balanced" if lab is not None else "null",
               **timing, **ref(x, lab)}
        if tag:
            grid_idx = torch.cat([torch.nonzero(lab == c)[:10, 0] for c in range(10)]) if lab is not None else torch.arange(min(100, n))
            save_image_grid(x[grid_idx], out / f"mnist_{tag}.png", nrow=10)
        return row

    # unconditional (null label) vs conditional, one network, one code path
    res["uncond_vs_cond"] = [evaluate("ddim", 50, 1.0, None, "unconditional"),
                             evaluate("ddim", 50, 1.0, labels, "conditional")]
    # guidance sweep, same noise per scale: rows of the picture = scales, columns = classes
    rows, pics = [], []
    for w in S["guidance"]:
        rows.append(evaluate("ddim", 50, w, labels, None))
        pics.append(draw_samples(run, 10, "ddim", 50, w, torch.arange(10), 123, 10, device)[0])
    res["guidance"] = rows
    save_image_grid(torch.cat(pics), out / "mnist_guidance_grid.png", nrow=10)
    report.plot_sweep(rows, "guidance", ["fid", "accuracy", "precision", "recall"], out / "mnist_guidance.png",
                      labels={"fid": ref.fid_name, "guidance": "guidance scale w"})
    # accelerated sampling at w = 1 (one network pass per step): against DDPM with all steps
    ddpm = evaluate("ddpm", S["ddpm_steps"], 1.0, labels, "ddpm")
    steps_rows = [ddpm]
    for s in samplers:
        for k in S["sweep_steps"]:
            r = evaluate(s, k, 1.0, labels, None)
            r["speedup_vs_ddpm"] = ddpm["seconds"] / r["seconds"]
            steps_rows.append(r)
    ddpm["speedup_vs_ddpm"] = 1.0
    res["steps"] = steps_rows
    report.plot_sweep([r for r in steps_rows if r["sampler"] != "ddpm"], "steps", ["fid", "accuracy"],
                      out / "mnist_steps.png", group="sampler", logx=True,
                      labels={"fid": ref.fid_name, "steps": "solver steps"},
                      title=f"DDPM {S['ddpm_steps']} steps: FID {ddpm['fid']:.2f}, accuracy {ddpm['accuracy']:.3f}")
    # likelihood on held-out digits (null label: the unconditional model)
    x = _on_grid(held[: S["bpd_n"]]).reshape(-1, *run.sample_shape).to(device)  # a random subset (order above)
    cond = torch.full((len(x),), 10, dtype=torch.long, device=device)
    t0 = time.perf_counter()
    bpd = torch.cat([run.proc.vlb_bits_per_dim(run.ema_model, x[i : i + S["batch"]], cond[i : i + S["batch"]],
                                               num_timesteps=S["bpd_timesteps"], clip_x0=True,
                                               generator=torch.Generator().manual_seed(4)).cpu()
                     for i in range(0, len(x), S["batch"])])
    res["bits_per_dim"] = {"n": len(bpd), "mean": float(bpd.mean()), "stderr": float(bpd.std() / math.sqrt(len(bpd))),
                           "timesteps": S["bpd_timesteps"], "seconds": time.perf_counter() - t0}
    return res


# -------------------------------------------------------------------------------------- report
def _f(v, d=3):
    return f"{v:.{d}f}"


def write_report(res: dict, out: Path, command: str) -> Path:
    S, sw, g2, m = res["settings"], res["swiss_roll"], res["guidance_2d"], res["mnist"]
    T = S["toy_ddpm_steps"]
    ddpm_key = f"ddpm_{T}"
    size_note = {
        "tiny": "**tiny size** (a smoke test of the code path: the numbers mean nothing).",
        "cpu": ("**reduced size, on the CPU**: MNIST downsampled to 14x14 (antialiased), the model a residual MLP "
                "on the flattened digits "
                f"({m['train']['parameters'] / 1e6:.1f}M parameters, {m['train']['steps']} steps of batch "
                f"{m['train']['batch_size']}), not the U-Net; {S['n']} samples per setting (FID is biased upward at "
                "small n, so the floor is also given at the same n); the classifier (trained at 28x28) sees every image, real "
                "or generated, upsampled bilinearly from 14x14, so all FIDs here compare 14x14 digits. The full-size "
                "run (28x28, U-Net) is `difflab experiments --size gpu --device cuda`."),
        "gpu": "**full size**: configs/mnist_cond.yaml's U-Net, 10,000 samples per setting.",
    }[res["size"]]
    L = [f"# Diffusion experiments, reproduced ({res['size']} size)", "",
         f"Made by `{command}` in {res['seconds'] / 60:.1f} minutes on {res['device']}. This is the {size_note}",
         "All numbers are in `metrics.json`.", "",
         "## 1. Two dimensions", "", "### Swiss roll: forward and reverse process", "",
         "![forward](swiss_forward.png)", "",
         "The forward process q(x_t | x_0) dissolves the roll into N(0, I); the reverse process (DDPM, "
         f"{T} steps) rebuilds it:", "", "![reverse](swiss_reverse.png)", "",
         "![samples](swiss_samples.png)", "",
         report.markdown_table(
             [dict(name="fresh data (floor)", **sw["floor"]), dict(name=f"DDPM, {T} steps", **sw[ddpm_key]),
              dict(name="DDIM, 50 steps", **sw["ddim_50"])],
             ["name", "sliced_wasserstein", "mmd2", "precision", "recall"],
             ["samples", "sliced W2 (lower is better)", "MMD^2", "precision", "recall"]), "",
         f"DDPM's samples sit at sliced W2 = {_f(sw[ddpm_key]['sliced_wasserstein'], 4)} from the data, against "
         f"{_f(sw['floor']['sliced_wasserstein'], 4)} for a fresh draw of the data itself.", "",
         "### Classifier-free guidance on a labelled 2D set (8 Gaussians)", "",
         "![guidance 2d](guidance_2d.png)", "",
         report.markdown_table(g2["rows"], ["guidance", "accuracy", "precision", "recall", "sliced_wasserstein",
                                            "on_manifold"],
                               ["w", "accuracy (requested mode)", "precision", "recall", "sliced W2 (all classes)",
                                "on manifold"]), ""]
    r0 = {r["guidance"]: r for r in g2["rows"]}
    if 0.0 in r0 and len(g2["rows"]) > 1:
        top = max(g2["rows"], key=lambda r: r["guidance"])
        L += [f"Without guidance from the label (w = 0, the unconditional model) a sample lands in the requested mode "
              f"{_f(100 * r0[0.0]['accuracy'], 1)}% of the time (chance: 12.5%); at w = {top['guidance']:g} "
              f"{_f(100 * top['accuracy'], 1)}%.", ""]
    fl = m["floor"]
    n = S["n"]
    fl_n = fl[f"train5k_first_{n}"]
    name = m["metric"]
    c = m["classifier"]
    uc, co = m["uncond_vs_cond"]
    L += ["## 2. MNIST", "",
          f"Metrics: {name} — the penultimate layer of a small CNN trained by `difflab train-classifier` on t10k, "
          f"test accuracy **{_f(100 * c['test_accuracy'], 2)}%** on the {c['num_test']} held-out train5k digits"
          + (f" ({_f(100 * c['accuracy_at_size'], 2)}% on them at {m['image_size']}x{m['image_size']}, upsampled). "
             if "accuracy_at_size" in c else ". ") +
          "These are not Inception FIDs. Precision/recall: k-NN manifolds (k = 3) in the same features; accuracy: "
          "the classifier's agreement with the requested class. The classifier "
          f"(`{c.get('path', 'classifiers/mnist')}`) comes from `difflab train-classifier --data mnist --out "
          f"{c.get('path', 'classifiers/mnist')}` (8 epochs on t10k, a few minutes on a CPU).", "",
          "**The floor**: held-out real digits against the reference (t10k):", "",
          report.markdown_table([dict(name=f"train5k ({fl['train5k_all']['n']} images)", **fl["train5k_all"]),
                                 dict(name=f"train5k ({n} random images, as many as the samples)", **fl_n)],
                                ["name", "fid", "precision", "recall", "accuracy"],
                                ["real images", name, "precision", "recall", "accuracy"]), "",
          *([f"At the data's own 28x28 size the floor (all 5000 train5k digits against t10k) is "
             f"**{_f(m['floor_28']['fid'], 3)}** (precision {_f(m['floor_28']['precision'])}, recall "
             f"{_f(m['floor_28']['recall'])}, accuracy {_f(m['floor_28']['accuracy'])}).", ""] if "floor_28" in m else []),
          "### Forward process on example digits", "",
          f"Columns: t = {', '.join(map(str, m['forward_ts']))} (of 1000).", "", "![forward](mnist_forward.png)", "",
          "### Unconditional against conditional generation (one network, one code path)", "",
          "The same network, trained with 10% of labels dropped, samples unconditionally with the null label and "
          "conditionally with a label (DDIM, 50 steps, w = 1):", "",
          "| unconditional | conditional (a row per class) |", "|---|---|",
          "| ![u](mnist_unconditional.png) | ![c](mnist_conditional.png) |", "",
          report.markdown_table([uc, co], ["labels", "fid", "precision", "recall", "accuracy"],
                                ["labels", name, "precision", "recall", "accuracy"]), "",
          f"Conditional samples are the requested digit {_f(100 * co['accuracy'], 1)}% of the time.", "",
          "### Guidance scale", "",
          "Rows: w = " + ", ".join(f"{w:g}" for w in S["guidance"]) + "; columns: classes 0-9, same noise in each column.",
          "", "![guidance grid](mnist_guidance_grid.png)", "", "![guidance](mnist_guidance.png)", "",
          report.markdown_table(m["guidance"], ["guidance", "fid", "precision", "recall", "accuracy"],
                                ["w", name, "precision", "recall", "accuracy"]), ""]
    gr = m["guidance"]
    best = min(gr, key=lambda r: r["fid"])
    top = max(gr, key=lambda r: r["guidance"])
    w1 = next((r for r in gr if r["guidance"] == 1.0), gr[0])
    L += [f"Guidance sharpens the class: accuracy goes from {_f(100 * w1['accuracy'], 1)}% at w = 1 to "
          f"{_f(100 * max(r['accuracy'] for r in gr), 1)}% (best over w). FID is lowest at w = {best['guidance']:g} "
          f"({_f(best['fid'], 2)}, against {_f(w1['fid'], 2)} at w = 1)."]
    if top["fid"] > best["fid"]:
        L += [f"Past it FID rises again, to {_f(top['fid'], 2)} at w = {top['guidance']:g}, and recall falls from "
              f"{_f(w1['recall'])} (w = 1) to {_f(top['recall'])}: strong guidance trades diversity for class "
              "fidelity and then leaves the data manifold (the artefacts in the bottom rows of the grid).", ""]
    else:
        L += [f"At this size FID still falls up to w = {top['guidance']:g}; recall goes from {_f(w1['recall'])} "
              f"(w = 1) to {_f(top['recall'])}.", ""]
    L += [
          "### Accelerated sampling", ""]
    st = m["steps"]
    dd = st[0]
    L += ["![steps](mnist_steps.png)", "",
          report.markdown_table(st, ["sampler", "steps", "fid", "accuracy", "precision", "recall", "calls_per_batch",
                                     "seconds", "speedup_vs_ddpm"],
                                ["sampler", "steps", name, "accuracy", "precision", "recall", "network passes",
                                 "seconds", "speed-up vs DDPM"]), "",
          "Seconds are wall-clock on a shared machine (other jobs ran at the same time); network passes are exact.", ""]
    for s in dict.fromkeys(r["sampler"] for r in st[1:]):
        rows = sorted((r for r in st[1:] if r["sampler"] == s), key=lambda r: r["steps"])
        final = rows[-1]
        first = next(r for r in rows if r["fid"] <= 1.1 * final["fid"])
        L += [f"- {s}: {first['steps']} steps reach {name} {_f(first['fid'], 2)}, within 10% of its "
              f"{final['steps']}-step value ({_f(final['fid'], 2)}), with {final['steps'] / first['steps']:.1f}x fewer "
              f"network passes; against DDPM's {dd['steps']} steps ({_f(dd['fid'], 2)}) that is "
              f"{dd['calls_per_batch'] / first['calls_per_batch']:.0f}x fewer passes."]
    good = [r for r in st[1:] if r["fid"] <= 1.1 * dd["fid"]]
    if good:
        best = min(good, key=lambda r: r["calls_per_batch"])
        L += ["", f"Within 10% of DDPM-{dd['steps']}'s {name} the cheapest is {best['sampler']} with {best['steps']} steps "
              f"({_f(best['fid'], 2)}, {dd['calls_per_batch'] / best['calls_per_batch']:.0f}x fewer passes).", ""]
    else:
        L += ["", f"At this size DDPM-{dd['steps']} ({_f(dd['fid'], 2)}, accuracy {_f(dd['accuracy'])}) stays ahead of "
              "every deterministic sampler: its fresh noise at each step corrects part of the network's error, which "
              "the ODE samplers carry to the end (a known effect for imperfect networks; Karras et al. 2022, sec. 4).", ""]
    b = m["bits_per_dim"]
    L += ["### Likelihood", "",
          f"Variational bound (DDPM's discretized decoder, {b['timesteps']} stratified KL terms per image, null label) "
          f"on {b['n']} random held-out train5k digits: **{_f(b['mean'])} ± {_f(b['stderr'])} bits/dim**.", ""]
    path = out / "report.md"
    path.write_text("\n".join(L))
    return path


def run_experiments(out="docs/experiments", size: str = "cpu", mnist_root: Optional[str] = None,
                    classifier: Optional[str] = None, device: Optional[str] = None, progress: bool = True,
                    command: str = "difflab experiments") -> dict:
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    S = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = mnist_root or DEFAULT_MNIST_ROOT
    start = time.perf_counter()
    torch.manual_seed(0)
    res = {"size": size, "settings": S, "device": torch.cuda.get_device_name(0) if device == "cuda"
           else f"the CPU ({torch.get_num_threads()} threads)"}
    res["swiss_roll"] = swiss_roll_part(S, out, device, progress)
    res["guidance_2d"] = guidance_2d_part(S, out, device, progress)
    res["mnist"] = mnist_part(S, out, root, device, classifier, progress)
    res["seconds"] = time.perf_counter() - start
    res["command"] = command
    report.write_json(out / "metrics.json", res)
    write_report(res, out, command)
    return res


def add_parser(sub) -> None:
    p = sub.add_parser("experiments", help="reproduce the classic 2D and MNIST experiments into report.md")
    p.add_argument("--out", default="docs/experiments")
    p.add_argument("--size", default="cpu", choices=tuple(SIZES), help="tiny (tests), cpu (reduced), gpu (full)")
    p.add_argument("--mnist-root", default=None, help=f"MNIST folder (default {DEFAULT_MNIST_ROOT})")
    p.add_argument("--classifier", default=None, help="an existing classifier folder (default: train one in OUT)")
    p.add_argument("--device", default=None)
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from OUT/metrics.json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_main)


def _main(args) -> int:
    import sys

    cmd = "difflab " + " ".join(sys.argv[1:]) if sys.argv and "experiments" in sys.argv else "difflab experiments"
    if args.report_only:
        metrics = Path(args.out) / "metrics.json"
        if not metrics.is_file():
            raise FileNotFoundError(f"--report-only needs {metrics} from an earlier run")
        res = json.loads(metrics.read_text())
        print(f"difflab experiments: rewrote {write_report(res, Path(args.out), res.get('command', cmd))}")
        return 0
    res = run_experiments(args.out, args.size, args.mnist_root, args.classifier, args.device, not args.quiet, cmd)
    print(f"difflab experiments: wrote {Path(args.out) / 'report.md'} in {res['seconds'] / 60:.1f} min")
    return 0
