"""``difflab experiments``: the classic experiments of the field, end to end, into one report.

    difflab experiments --size cpu --out docs/experiments     # reduced size, 2 CPU cores
    difflab experiments --size gpu --out docs/experiments_gpu --device cuda   # full size
    difflab experiments --size gpu --out docs/experiments_gpu --mnist-run runs/mnist_cond
        # full size on the run that benchmarks/mnist_cond_gpu.py trained (evaluation only)

Finished evaluation rows are kept in OUT/runs/mnist_rows.json (for one network and sample
count), so a run stopped by a time limit continues where it stopped when started again.

(1) 2D: a Swiss roll's forward and reverse process, DDPM (and DDIM) samples with sliced
Wasserstein / MMD / coverage, classifier-free guidance on the labelled 8-Gaussians at several
scales (accuracy of the requested mode, precision, coverage). (2) MNIST: the forward process on
example digits, unconditional (null label) against conditional generation from one network,
the guidance sweep (FID, precision, recall, accuracy), accelerated sampling against 1000-step
DDPM (respaced DDPM, DDIM with eta = 1 and 0, DPM-Solver++ 2M/3M, Euler, Heun, dpmpp_3m on
fitted noise levels; FID, network passes, wall-clock speed-up), the FID's own sampling noise
(one setting from independent noise) as the yardstick for "nearly the same quality", bits/dim
on held-out digits and the FID floor (held-out train5k against t10k). Every claim in
``report.md`` is written from a number in ``metrics.json``; a claim the numbers do not back
is written as such.

Sizes: ``tiny`` (seconds; the test suite), ``cpu`` (reduced: a small class-conditional U-Net
on 14x14 MNIST, 2000 samples per setting; the report says so), ``gpu`` (configs/mnist_cond.yaml's
U-Net at 28x28, 10k samples).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from .. import data
from .._files import atomic_write, atomic_write_text
from ..evaluation import plots, report
from ..evaluation.classifier import AtResolution, ClassifierFeatures, accuracy, load_classifier
from ..evaluation.grids import save_image_grid
from ..samplers import optimize_sigmas, sample
from ..training import load as load_run
from ..training import train
from ..training.generate import generate
from .eval import _Counted
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

# Accelerated sampling at w = 1: every setting against the first one, DDPM with all T steps.
# eta: DDIM's noise (1 = DDPM's posterior variance); fitted: dpmpp_3m on noise levels fitted to
# the trained network by dl.samplers.optimize_sigmas (docs/sampler_quality.md's winner).
_ACCEL_CPU = ([{"sampler": "ddpm", "steps": k} for k in (1000, 500, 250, 200, 100, 50)]
              + [{"sampler": "ddim", "steps": k, "eta": 1.0} for k in (200, 100, 50)]
              + [{"sampler": "ddim", "steps": k} for k in (200, 100, 50, 20, 10)]
              + [{"sampler": s, "steps": k} for s in ("dpmpp_2m", "dpmpp_3m", "euler") for k in (10, 20, 50)]
              + [{"sampler": "heun", "steps": k} for k in (10, 25, 50)]
              + [{"sampler": "dpmpp_3m", "steps": k, "fitted": True} for k in (5, 10)])

# The CPU size's MNIST network: a small class-conditional U-Net on 14x14 digits (levels 14x14
# and 7x7 with 32 and 64 channels, one residual block per level, attention at 7x7, ADM's
# scale-shift norm): 0.76M parameters, about 0.17 s per step of 128 on 2 cores.
_UNET_CPU = {"name": "unet", "kwargs": {"in_channels": 1, "channels": 32, "channel_mult": [1, 2],
                                        "num_res_blocks": 1, "attention_levels": [1],
                                        "use_scale_shift_norm": True, "num_classes": 10}}

SIZES = {
    "tiny": dict(mnist_size=14, toy_steps=40, toy_n=300, toy_ddpm_steps=50, toy_width=64,
                 mnist_model={"name": "mlp", "kwargs": {"dim": 196, "width": 64, "depth": 1, "num_classes": 10}},
                 mnist_flatten=True, mnist_steps=4, mnist_batch=32, mnist_lr=1e-3, n=40, ref_n=400,
                 guidance=[0.0, 1.0, 3.0], ddpm_steps=8, clip_x0=1.0,
                 accel=[{"sampler": "ddpm", "steps": 8}, {"sampler": "ddpm", "steps": 4},
                        {"sampler": "ddim", "steps": 4, "eta": 1.0}, {"sampler": "ddim", "steps": 2},
                        {"sampler": "dpmpp_2m", "steps": 2}, {"sampler": "dpmpp_3m", "steps": 2, "fitted": True}],
                 fit_n=4, fit_evals=4, fit_reference_steps=8, noise_seeds=2, floor_draws=2,
                 bpd_n=4, bpd_timesteps=3, clf_epochs=1, clf_limit=600, batch=200, floor_n=400, floor_28=False),
    "cpu": dict(mnist_size=14, toy_steps=1200, swiss_steps=4000, toy_n=2000, toy_ddpm_steps=1000, toy_width=128,
                mnist_model=_UNET_CPU, mnist_flatten=False, mnist_steps=10000, mnist_batch=128, mnist_lr=2e-3,
                mnist_warmup=500, mnist_ema=0.999, mnist_ema_warmup=10, n=2000, ref_n=10000,
                guidance=[0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0], ddpm_steps=1000, clip_x0=1.0, accel=_ACCEL_CPU,
                fit_n=64, fit_evals=None, fit_reference_steps=500, noise_seeds=5, floor_draws=5,
                bpd_n=200, bpd_timesteps=50, clf_epochs=8, clf_limit=None, batch=250),
    "gpu": dict(mnist_size=28, toy_steps=10000, toy_n=10000, toy_ddpm_steps=1000, toy_width=256,
                mnist_model={"name": "unet_mnist", "kwargs": {"num_classes": 10}},
                mnist_flatten=False, mnist_steps=5000, mnist_batch=256, mnist_lr=5e-4, n=10000, ref_n=10000,
                guidance=[0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0], ddpm_steps=1000, clip_x0=1.0,
                accel=_ACCEL_CPU + [{"sampler": s, "steps": 100} for s in ("dpmpp_2m", "euler")],
                fit_n=256, fit_evals=None, fit_reference_steps=500, noise_seeds=5, floor_draws=5,
                bpd_n=1000, bpd_timesteps=100, clf_epochs=8, clf_limit=None, batch=1000),
}



# The noise the fitted noise levels are fitted on: no evaluation batch's (batch b is seeded b,
# and seed 7 had made the fit's problems the first samples of batch 7)
FIT_SEED = 1_000_003

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


def _given_run(path: str, S: dict, device: str):
    """A trained class-conditional MNIST run at the size's resolution, for --mnist-run."""
    run = load_run(path, device=device)
    size = run.image_shape[-1] if run.image_shape else None
    if run.num_classes != 10 or size != S["mnist_size"]:
        raise ValueError(
            f"--mnist-run {path!r} must be a class-conditional MNIST model (10 classes) on {S['mnist_size']}x"
            f"{S['mnist_size']} images for this --size, got num_classes={run.num_classes}, image size {size}; "
            "train one with configs/mnist_cond.yaml (size gpu) or omit --mnist-run to train here"
        )
    return run


class _RowCache:
    """Finished evaluation rows in a JSON file, so a run that is cut short (a 10-minute limit on a
    lent GPU) continues where it stopped. Rows belong to one network and sample count (``tag``);
    rows of another are discarded."""

    def __init__(self, path: Path, tag: str) -> None:
        self.path, self.tag = Path(path), tag
        self.rows: dict = {}
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("tag") == tag:
                self.rows = saved["rows"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass

    def get(self, key: str) -> Optional[dict]:
        return self.rows.get(key)

    def put(self, key: str, row: dict) -> dict:
        self.rows[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"tag": self.tag, "rows": self.rows}))
        return row


def _logged_seconds(run_dir: Path) -> Optional[float]:
    """Training time of a run from its log.csv (elapsed_s of the last row, counted across resumes)."""
    try:
        import csv

        with open(run_dir / "log.csv") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["elapsed_s"]) if rows and "elapsed_s" in rows[-1] else None
    except (OSError, ValueError, KeyError):
        return None


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
        "diffusion": copy.deepcopy(S.get("mnist_diffusion", {"schedule": "linear", "T": 1000, "prediction": "eps"})),
        "data": {"name": "mnist", "kwargs": _mnist_kwargs(S, root, "t10k"), "flatten": S["mnist_flatten"]},
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
    return cfg


def _mnist_kwargs(S: dict, root: str, split: str) -> dict:
    kw = {"root": root, "split": split}
    if S["mnist_size"] != 28:
        kw["image_size"] = S["mnist_size"]  # reduced size: antialiased downsampling
    return kw


def _on_grid(x: torch.Tensor) -> torch.Tensor:
    """Round images in [-1, 1] to the 256 levels of 8-bit data (downsampled digits are between levels)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


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


def mnist_part(S: dict, out: Path, root: str, device: str, classifier: Optional[str], progress: bool,
               mnist_run: Optional[str] = None) -> dict:
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
        clf = AtResolution(clf).eval()
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
    if n < floor_n:  # the floor at the samples' n varies with the subset: a few random subsets
        fids = []
        for k in range(S.get("floor_draws", 1)):
            idx = torch.randperm(floor_n, generator=torch.Generator().manual_seed(100 + k))[:n]
            fids.append(ref(held[idx], held_labels[idx])["fid"])
        res["floor"]["subsets_of_n"] = {"fid": fids, "mean": sum(fids) / len(fids),
                                        "sd": _sd(fids)}

    # forward process on example digits: rows = digits, columns = t
    if mnist_run:  # a trained run (e.g. benchmarks/mnist_cond_gpu.py's): evaluate it, train nothing
        run = _given_run(mnist_run, S, device)
        cfg = run.config.to_dict()
        run_dir = Path(mnist_run)
        secs = 0.0
    else:
        cfg = _mnist_config(S, root, device)
        run, secs = _train(cfg, "mnist_cond", out, progress)
        run_dir = out / "runs" / "mnist_cond"
    res["train"] = {"seconds": _logged_seconds(run_dir) or secs, "steps": run.step, "run": str(run_dir),
                    "model": cfg["model"], "diffusion": cfg["diffusion"], "batch_size": cfg["batch_size"],
                    "lr": cfg["optim"]["lr"], "ema": cfg["ema"],
                    "parameters": sum(p.numel() for p in run.ema_model.parameters())}
    cache = _RowCache(out / "runs" / "mnist_rows.json", f"{run.path.resolve()}@{run.step}/n={S['n']}/ref={S['ref_n']}/classifier={clf_dir}")
    ts = [0, 50, 100, 200, 400, 700, 999]
    g = torch.Generator().manual_seed(3)
    x0 = t10k[:8]
    cols = [run.proc.q_sample(x0, torch.full((8,), t, dtype=torch.long), torch.randn(x0.shape, generator=g))
            for t in ts]
    save_image_grid(torch.stack(cols, 1).reshape(-1, *x0.shape[1:]).clamp(-1, 1), out / "mnist_forward.png",
                    nrow=len(ts))
    res["forward_ts"] = [t + 1 for t in ts]

    labels = torch.arange(n) % 10
    clip = S.get("clip_x0")

    def draw(sampler, steps, w, lab, seed=0, n_=n, **options):
        """n_ samples (batch i seeded seed + i) with wall time and exact network passes per batch."""
        model = _Counted(run.ema_model)
        xs, start = [], time.perf_counter()
        for b, i in enumerate(range(0, n_, S["batch"])):
            m_ = min(S["batch"], n_ - i)
            xs.append(generate(model, run.proc, m_, run.sample_shape, image_shape=run.image_shape, sampler=sampler,
                               steps=steps, guidance=w, labels=None if lab is None else lab[i : i + m_],
                               seed=seed + b, device=device, clip_x0=clip, **options).float().cpu())
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return torch.cat(xs), {"seconds": time.perf_counter() - start,
                               "calls_per_batch": model.calls / math.ceil(n_ / S["batch"])}

    def evaluate(sampler, steps, w, lab, tag=None, seed=0, key_extra="", **options):
        key = f"{sampler}/{steps}/w={w:g}/{'balanced' if lab is not None else 'null'}/seed={seed}/" + ",".join(
            f"{k}={v:g}" for k, v in sorted(options.items()) if isinstance(v, (int, float))) + key_extra
        row = cache.get(key)
        if row is not None and (not tag or (out / f"mnist_{tag}.png").is_file()):
            return row
        x, timing = draw(sampler, steps, w, lab, seed, **options)
        row = {"sampler": sampler, "steps": steps, "guidance": w, "labels": "balanced" if lab is not None else "null",
               "seed": seed, **timing, **ref(x, lab)}
        if tag:
            grid_idx = torch.cat([torch.nonzero(lab == c)[:10, 0] for c in range(10)]) if lab is not None else torch.arange(min(100, n))
            save_image_grid(x[grid_idx], out / f"mnist_{tag}.png", nrow=10)
        return cache.put(key, row)

    # guidance sweep (DDIM, 50 steps), same noise per scale: rows of the picture = scales, columns = classes
    rows, pics = [], []
    for w in S["guidance"]:
        rows.append(evaluate("ddim", 50, w, labels, "conditional" if w == 1.0 else None))
        pics.append(draw("ddim", 50, w, torch.arange(10), 123, 10)[0])
    res["guidance"] = rows
    save_image_grid(torch.cat(pics), out / "mnist_guidance_grid.png", nrow=10)
    report.plot_sweep(rows, "guidance", ["fid", "accuracy", "precision", "recall"], out / "mnist_guidance.png",
                      labels={"fid": ref.fid_name, "guidance": "guidance scale w"})
    # unconditional (null label) vs conditional (w = 1 above): one network, one code path
    cond_row = next(r for r in rows if r["guidance"] == 1.0)
    res["uncond_vs_cond"] = [evaluate("ddim", 50, 1.0, None, "unconditional"), cond_row]
    # the FID's own sampling noise: the conditional DDIM-50 setting again from fresh noise
    res["fid_noise"] = _fid_noise([cond_row] + [evaluate("ddim", 50, 1.0, labels, seed=10_000 * k)
                                                for k in range(1, S["noise_seeds"])])
    # accelerated sampling at w = 1 (one network pass per step) against DDPM with all T steps
    steps_rows = []
    for setting in S["accel"]:
        opts = {"eta": setting["eta"]} if setting.get("eta") else {}
        fit_seconds = None
        fit_key = f"fitted:{setting['sampler']}/{setting['steps']}/seed{FIT_SEED}"
        saved = cache.get(fit_key) if setting.get("fitted") else None
        if saved:  # fitted earlier by a run that was cut short
            opts["sigmas"], fit_seconds = torch.tensor(saved["sigmas"], dtype=torch.float64), saved["seconds"]
        elif setting.get("fitted"):  # levels fitted on other noise than the evaluation's (FIT_SEED)
            t0 = time.perf_counter()
            k_fit = S["fit_n"]
            opts["sigmas"] = optimize_sigmas(run.ema_model, run.proc, (k_fit, *run.sample_shape), setting["steps"],
                                             setting["sampler"], cond=(torch.arange(k_fit) % 10).to(device),
                                             generator=torch.Generator().manual_seed(FIT_SEED), device=device,
                                             reference_steps=S["fit_reference_steps"], max_evals=S["fit_evals"])
            fit_seconds = time.perf_counter() - t0
            cache.put(fit_key, {"sigmas": [float(v) for v in opts["sigmas"]], "seconds": fit_seconds})
        first = not steps_rows
        r = evaluate(setting["sampler"], setting["steps"], 1.0, labels, "ddpm" if first else None,
                     key_extra="/fitted" if setting.get("fitted") else "", **opts)
        r = dict(r)
        r.update(name=_setting_name(setting), eta=setting.get("eta", 0.0), fitted=bool(setting.get("fitted")))
        if fit_seconds is not None:
            r.update(fit_seconds=fit_seconds, sigmas=[float(v) for v in opts["sigmas"]])
        steps_rows.append(r)
    ref_row = steps_rows[0]
    for r in steps_rows:
        r["speedup_passes"] = ref_row["calls_per_batch"] / r["calls_per_batch"]
        r["speedup_seconds"] = ref_row["seconds"] / r["seconds"]
    res["steps"] = steps_rows
    res["tolerance"] = _tolerance(ref_row["fid"], res["fid_noise"])
    for r in steps_rows:
        r["within_tolerance"] = bool(r["fid"] <= ref_row["fid"] + res["tolerance"]["fid"])
    _plot_steps(steps_rows, res["tolerance"]["fid"], ref.fid_name, out / "mnist_steps.png")
    # likelihood on held-out digits (null label: the unconditional model)
    x = _on_grid(held[: S["bpd_n"]]).reshape(-1, *run.sample_shape).to(device)  # a random subset (order above)
    cond = torch.full((len(x),), 10, dtype=torch.long, device=device)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(4)  # one stream: each batch its own timesteps and noise
    bpd = torch.cat([run.proc.vlb_bits_per_dim(run.ema_model, x[i : i + S["batch"]], cond[i : i + S["batch"]],
                                               num_timesteps=S["bpd_timesteps"], clip_x0=True,
                                               generator=gen).cpu()
                     for i in range(0, len(x), S["batch"])])
    res["bits_per_dim"] = {"n": len(bpd), "mean": float(bpd.mean()), "stderr": float(bpd.std() / math.sqrt(len(bpd))),
                           "timesteps": S["bpd_timesteps"], "seconds": time.perf_counter() - t0}
    return res


def _sd(v) -> float:
    """Sample standard deviation (n - 1); NaN for fewer than two values."""
    return statistics.stdev(v) if len(v) >= 2 else float("nan")


def _setting_name(setting: dict) -> str:
    name = setting["sampler"]
    if name == "ddim":
        name += f" (eta = {setting.get('eta', 0.0):g})"
    if setting.get("fitted"):
        name += " (fitted levels)"
    return name


def _fid_noise(rows: list) -> dict:
    """FID of the same setting from independent noise: its spread is the yardstick for 'the same'."""
    fids = [r["fid"] for r in rows]
    return {"sampler": rows[0]["sampler"], "steps": rows[0]["steps"], "guidance": rows[0]["guidance"],
            "seeds": [r["seed"] for r in rows], "fid": fids, "mean": sum(fids) / len(fids), "sd": _sd(fids),
            "range": max(fids) - min(fids),
            "accuracy": [r.get("accuracy") for r in rows]}


def _tolerance(ref_fid: float, noise: dict, rel: float = 0.15) -> dict:
    """'Nearly the same FID' as the reference: at most rel * FID_ref above it, or two standard
    deviations of the difference of two independent FIDs (sqrt(2) * sd) where that is larger."""
    noise_tol = 2 * math.sqrt(2) * noise["sd"] if noise["sd"] == noise["sd"] else 0.0
    return {"fid": max(rel * ref_fid, noise_tol), "relative": rel, "relative_fid": rel * ref_fid,
            "noise_fid": noise_tol}


def _plot_steps(rows: list, tol: float, metric: str, path: Path) -> Path:
    """FID and accuracy against network passes, one line per sampler setting, with DDPM-T's
    value and the tolerance band."""
    from ..evaluation.plots import _plt

    plt = _plt()
    ref_row = rows[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, y, lab in ((axes[0], "fid", metric), (axes[1], "accuracy", "accuracy")):
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = sorted((r["calls_per_batch"], r[y]) for r in rows if r["name"] == name and y in r)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=name)
        ax.axhline(ref_row[y], color="k", lw=0.8, ls="--")
        if y == "fid":
            ax.axhspan(ref_row[y], ref_row[y] + tol, color="0.85", zorder=0)
            top = max(r["fid"] for r in rows if r["calls_per_batch"] >= 10) if any(
                r["calls_per_batch"] >= 10 for r in rows) else None
            if top is not None and top > 0:
                ax.set_ylim(0, min(max(r["fid"] for r in rows), 1.1 * top))
            ax.set_title(f"grey: within tolerance of {ref_row['name']}-{ref_row['steps']}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("network passes")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return Path(path)


# -------------------------------------------------------------------------------------- report
def _f(v, d=3):
    return f"{v:.{d}f}"


def _model_words(train: dict) -> str:
    """The MNIST network in words, from the run's config."""
    mdl, kw = train["model"], train["model"].get("kwargs", {})
    size = f"{train['parameters'] / 1e6:.2f}M parameters, {train['steps']} steps of batch {train['batch_size']}"
    if train.get("seconds"):
        size += f", {train['seconds'] / 60:.0f} minutes of training"
    if mdl["name"] == "unet":
        widths = "-".join(str(kw.get("channels", 128) * k) for k in kw.get("channel_mult", (1, 2, 2, 2)))
        attn = kw.get("attention_levels") or []
        nrb = kw.get("num_res_blocks", 2)
        words = (f"a class-conditional U-Net ({widths} channels over {len(kw.get('channel_mult', ()))} levels, "
                 f"{nrb} residual block{'s' if nrb != 1 else ''} per level, "
                 + (f"attention at level{'s' if len(attn) > 1 else ''} {', '.join(map(str, attn))}" if attn
                    else "no attention in the levels")
                 + (", ADM's scale-shift norm" if kw.get("use_scale_shift_norm") else "") + ")")
    elif mdl["name"] == "mlp":
        words = "a residual MLP on the flattened digits"
    else:
        words = f"`{mdl['name']}`"
    d = train.get("diffusion")
    if d:
        words += f", {d['schedule']} schedule with T = {d['T']}, {d['prediction']}-prediction"
    return f"{words} ({size})"


def _guidance_text(gr: list, name: str) -> list:
    """What the guidance sweep shows, claim by claim from the rows (w >= 1: guided or conditional)."""
    w1 = next((r for r in gr if r["guidance"] == 1.0), None)
    guided = sorted((r for r in gr if r["guidance"] >= 1.0), key=lambda r: r["guidance"])
    if w1 is None or len(guided) < 2:
        return []
    best = min(gr, key=lambda r: r["fid"])
    top = guided[-1]
    acc = [r["accuracy"] for r in guided]
    most = max(guided, key=lambda r: r["accuracy"])
    monotone = all(b >= a - 0.002 for a, b in zip(acc, acc[1:]))
    if most is w1 or most["accuracy"] <= w1["accuracy"]:
        L = [f"- Accuracy does not rise with guidance here: {_f(100 * w1['accuracy'], 1)}% at w = 1, "
             + ", ".join(f"{_f(100 * r['accuracy'], 1)}% at w = {r['guidance']:g}" for r in guided[1:]) + "."]
    else:
        L = [f"- **Sharper class**: accuracy goes from {_f(100 * w1['accuracy'], 1)}% at w = 1 to "
             f"{_f(100 * most['accuracy'], 1)}% at w = {most['guidance']:g}"
             + (" and never falls by more than 0.2 points as w grows." if monotone else
                "; it does not rise monotonically with w (" + ", ".join(f"{_f(100 * a, 1)}%" for a in acc) + ").")]
    L += [f"- {name} is lowest at w = {best['guidance']:g} ({_f(best['fid'], 2)}; w = 1: {_f(w1['fid'], 2)})."]
    if top["fid"] > best["fid"]:
        L += [f"- **Then artefacts**: past w = {best['guidance']:g} {name} rises to {_f(top['fid'], 2)} at "
              f"w = {top['guidance']:g}; recall falls from {_f(w1['recall'])} (w = 1) to {_f(top['recall'])} "
              "(less variety within each class)"
              + (f" and precision from {_f(max(r['precision'] for r in guided))} (its highest) to "
                 f"{_f(top['precision'])}: strong guidance pushes samples off the data manifold (the thick, "
                 "over-saturated strokes in the bottom rows of the grid)."
                 if top["precision"] < max(r["precision"] for r in guided) - 0.02 else
                 f"; precision stays at {_f(top['precision'])}, so at this scale the cost is diversity more than "
                 "off-manifold samples.")]
    else:
        L += [f"- Up to w = {top['guidance']:g} {name} does not rise again; recall goes from {_f(w1['recall'])} "
              f"(w = 1) to {_f(top['recall'])}."]
    return L + [""]


def _label(r: dict) -> str:
    return f"{r['name']} {r['steps']}"


def _steps_text(m: dict, S: dict, name: str) -> list:
    """The accelerated-sampling section: the yardstick, the table and what it shows."""
    st, tol, nz = m["steps"], m["tolerance"], m["fid_noise"]
    ref = st[0]
    refname = _label(ref)
    L = ["### Accelerated sampling", "",
         f"Every setting draws {S['n']} class-conditional samples (w = 1, one network pass per step; Heun takes "
         "two) from its own spacing of the noise levels (DDPM and DDIM: trailing timesteps; the "
         "DPM-Solver++ / Euler / Heun solvers: uniform in log-SNR; `fitted levels`: dpmpp_3m on noise levels "
         f"fitted to this network by `dl.samplers.optimize_sigmas` on {S['fit_n']} other noise draws).", "",
         f"**How much FID moves by chance**: the DDIM-50 setting drawn {len(nz['fid'])} times from independent "
         f"noise gives {name} " + ", ".join(_f(v, 2) for v in nz["fid"])
         + f" (sd {_f(nz['sd'], 2)}, range {_f(nz['range'], 2)}). Two independent sample sets of one setting "
         f"thus differ by about {_f(math.sqrt(2) * nz['sd'], 2)} (sd). 'Nearly the same quality as {refname}' "
         f"below means an FID at most **{_f(tol['fid'], 2)}** above its {_f(ref['fid'], 2)}: the larger of "
         f"{_f(100 * tol['relative'], 0)}% of it ({_f(tol['relative_fid'], 2)}) and two sd of such a difference "
         f"({_f(tol['noise_fid'], 2)}).", "",
         "![steps](mnist_steps.png)", "",
         report.markdown_table(st, ["name", "steps", "calls_per_batch", "fid", "accuracy", "precision", "recall",
                                    "seconds", "speedup_passes", "speedup_seconds", "within_tolerance"],
                               ["sampler", "steps", "network passes", name, "accuracy", "precision", "recall",
                                "seconds", "speed-up (passes)", "speed-up (seconds)", f"within {_f(tol['fid'], 2)}"]),
         "", f"Seconds: wall-clock for the {S['n']} samples on the machine named at the top; network passes are "
         "exact.", ""]
    ok = sorted((r for r in st[1:] if r["within_tolerance"]), key=lambda r: r["calls_per_batch"])
    two_five = [r for r in ok if 2 <= r["speedup_passes"] <= 5]
    if ok:
        fast = ok[0]
        L += [f"- **Within tolerance of {refname}** ({_f(ref['fid'], 2)}, accuracy {_f(ref['accuracy'])}, "
              f"{_f(ref['seconds'], 1)} s): " + "; ".join(
                  f"{_label(r)} ({_f(r['fid'], 2)}, {r['speedup_passes']:.0f}x fewer passes, "
                  f"{r['speedup_seconds']:.1f}x faster)" for r in reversed(ok)) + "."]
        if two_five:
            L += ["- **At 2-5x speed**: " + ", ".join(f"{_label(r)} ({r['speedup_passes']:.0f}x)"
                                                   for r in two_five)
                  + f" stay{'s' if len(two_five) == 1 else ''} within tolerance."]
        else:
            L += ["- No setting with a 2-5x speed-up in network passes stays within tolerance."]
        L += [f"- **Fastest within tolerance**: {fast['name']} with {fast['steps']} steps, {name} "
              f"{_f(fast['fid'], 2)} against {_f(ref['fid'], 2)}, accuracy {_f(fast['accuracy'])} against "
              f"{_f(ref['accuracy'])}: {fast['speedup_passes']:.0f}x fewer network passes, "
              f"{fast['speedup_seconds']:.0f}x less wall-clock time."]
    else:
        L += [f"- No faster setting stays within {_f(tol['fid'], 2)} of {refname}'s {name} ({_f(ref['fid'], 2)})."]
    for fam in dict.fromkeys(r["name"] for r in st):
        rows = sorted((r for r in st if r["name"] == fam and r is not ref), key=lambda r: r["steps"])
        if not rows:
            continue
        good = [r for r in rows if r["within_tolerance"]]
        bad = [r for r in rows if not r["within_tolerance"]]
        if good and bad and max(b["steps"] for b in bad) < min(g["steps"] for g in good):
            L += [f"- {fam}: within tolerance from {good[0]['steps']} steps; at {bad[-1]['steps']} steps "
                  f"{_f(bad[-1]['fid'], 2)}."]
        elif good and not bad:
            L += [f"- {fam}: within tolerance at every step count tried ({', '.join(str(r['steps']) for r in rows)})."]
        elif bad and not good:
            L += [f"- {fam}: outside tolerance at every step count tried (best {_f(min(r['fid'] for r in rows), 2)} "
                  f"at {min(rows, key=lambda r: r['fid'])['steps']} steps)."]
        else:
            L += [f"- {fam}: " + ", ".join(f"{r['steps']} steps {_f(r['fid'], 2)}"
                                           + ("" if r["within_tolerance"] else " (outside)") for r in rows) + "."]
    pairs = [(r, q) for r in st if r["sampler"] == "ddim" and r.get("eta") == 1.0
             for q in st if q["sampler"] == "ddpm" and q["steps"] == r["steps"]]
    if pairs and all(abs(r["fid"] - q["fid"]) <= 1e-5 * max(abs(q["fid"]), 1e-3) for r, q in pairs):
        L += ["- DDIM with eta = 1 repeats DDPM's numbers at the same steps: its step is DDPM's ancestral step "
              "with the posterior variance (Song et al. 2021, eq. 16), and both draw the same noise from the same "
              "seed, so the samples coincide up to float rounding (`tests/test_sampling_exact.py` checks this on an exact model); only "
              "the wall-clock times differ."]
    fitted = [r for r in st if r.get("fitted")]
    for r in fitted:
        plain = next((q for q in st if q["sampler"] == r["sampler"] and q["steps"] == r["steps"]
                      and not q.get("fitted")), None)
        if plain is not None:
            L += [f"- Fitted noise levels ({_f(r['fit_seconds'], 0)} s to fit) take {r['sampler']} at "
                  f"{r['steps']} steps from {_f(plain['fid'], 2)} (log-SNR-uniform levels) to {_f(r['fid'], 2)}."]
    return L + [""]


def write_report(res: dict, out: Path, command: str) -> Path:
    S, sw, g2, m = res["settings"], res["swiss_roll"], res["guidance_2d"], res["mnist"]
    T = S["toy_ddpm_steps"]
    ddpm_key = f"ddpm_{T}"
    size_note = {
        "tiny": "**tiny size** (a smoke test of the code path: the numbers mean nothing).",
        "cpu": ("**reduced size, on the CPU**: MNIST downsampled to 14x14 (antialiased), the model "
                + _model_words(m["train"]) + f"; {S['n']} samples per setting (FID is biased upward at small n, so "
                "the floor is also given at the same n); the classifier (trained at 28x28) sees every image, real or "
                "generated, upsampled bilinearly from 14x14, so all FIDs here compare 14x14 digits. The full-size run "
                "(28x28, configs/mnist_cond.yaml's U-Net, 10,000 samples) is `difflab experiments --size gpu --device "
                "cuda` (add `--mnist-run runs/mnist_cond` to evaluate the model `python benchmarks/mnist_cond_gpu.py` "
                "trains)."),
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
    real_acc = c.get("accuracy_at_size", c["test_accuracy"])
    L += ["## 2. MNIST", "",
          f"Metrics: {name} — the penultimate layer of a small CNN trained by `difflab train-classifier` on t10k, "
          f"test accuracy **{_f(100 * c['test_accuracy'], 2)}%** on the {c['num_test']} held-out train5k digits"
          + (f" ({_f(100 * c['accuracy_at_size'], 2)}% on them at {m['image_size']}x{m['image_size']}, upsampled: "
             "the most a perfect generator can score at this size). "
             if "accuracy_at_size" in c else ". ") +
          "These are not Inception FIDs. Precision/recall: k-NN manifolds (k = 3) in the same features; accuracy: "
          "the classifier's agreement with the requested class. The classifier "
          f"(`{c.get('path', 'classifiers/mnist')}`) comes from `difflab train-classifier --data mnist --out "
          f"{c.get('path', 'classifiers/mnist')}` (8 epochs on t10k, a few minutes on a CPU). "
          f"All samples below are drawn with the predicted x0 clipped to [-1, 1] (clip_x0 = {S.get('clip_x0')}).", "",
          "**The floor**: held-out real digits against the reference (t10k):", "",
          report.markdown_table([dict(name=f"train5k ({fl['train5k_all']['n']} images)", **fl["train5k_all"]),
                                 dict(name=f"train5k ({n} random images, as many as the samples)", **fl_n)],
                                ["name", "fid", "precision", "recall", "accuracy"],
                                ["real images", name, "precision", "recall", "accuracy"]), ""]
    if "subsets_of_n" in fl:
        sub = fl["subsets_of_n"]
        L += [f"Over {len(sub['fid'])} random subsets of {n} held-out digits the floor is {_f(sub['mean'], 2)} ± "
              f"{_f(sub['sd'], 2)} (mean ± sd).", ""]
    if "floor_28" in m:
        L += [f"At the data's own 28x28 size the floor (all 5000 train5k digits against t10k) is "
              f"**{_f(m['floor_28']['fid'], 3)}** (precision {_f(m['floor_28']['precision'])}, recall "
              f"{_f(m['floor_28']['recall'])}, accuracy {_f(m['floor_28']['accuracy'])}).", ""]
    L += ["### Forward process on example digits", "",
          f"Columns: t = {', '.join(map(str, m['forward_ts']))} (of 1000).", "", "![forward](mnist_forward.png)", "",
          "### Unconditional against conditional generation (one network, one code path)", "",
          "The same network, trained with 10% of labels dropped, samples unconditionally with the null label and "
          "conditionally with a label (DDIM, 50 steps, w = 1):", "",
          "| unconditional | conditional (a row per class) |", "|---|---|",
          "| ![u](mnist_unconditional.png) | ![c](mnist_conditional.png) |", "",
          report.markdown_table([uc, co], ["labels", "fid", "precision", "recall", "accuracy"],
                                ["labels", name, "precision", "recall", "accuracy"]), "",
          f"Conditional samples are the requested digit **{_f(100 * co['accuracy'], 1)}%** of the time (real "
          f"held-out digits: {_f(100 * real_acc, 1)}%); "
          + (f"conditioning lowers {name} from {_f(uc['fid'], 2)} to {_f(co['fid'], 2)} "
             f"({_f(co['fid'] / fl_n['fid'], 2)}x the floor at n = {n}, {_f(fl_n['fid'], 2)})."
             if co["fid"] < uc["fid"] else
             f"{name} is {_f(co['fid'], 2)} conditionally against {_f(uc['fid'], 2)} unconditionally."), "",
          *(["A sample set can score below the floor: the network learnt t10k, the reference itself, while the "
             "held-out train5k digits come from other writers (MNIST's training and test sets have disjoint "
             "writers), so the floor measures how far other real digits sit from t10k, not a bound for samples.", ""]
            if min(r["fid"] for r in m["guidance"] + m["steps"]) < fl_n["fid"] else []),
          "### Guidance scale", "",
          "Rows: w = " + ", ".join(f"{w:g}" for w in S["guidance"]) + "; columns: classes 0-9, same noise in each column "
          "(w = 0: the unconditional model, w = 1: the conditional one, w > 1: guided).",
          "", "![guidance grid](mnist_guidance_grid.png)", "", "![guidance](mnist_guidance.png)", "",
          report.markdown_table(m["guidance"], ["guidance", "fid", "precision", "recall", "accuracy"],
                                ["w", name, "precision", "recall", "accuracy"]), ""]
    L += _guidance_text(m["guidance"], name)
    L += _steps_text(m, S, name)
    b = m["bits_per_dim"]
    L += ["### Likelihood", "",
          f"Variational bound (DDPM's discretized decoder, {b['timesteps']} stratified KL terms per image, null label) "
          f"on {b['n']} random held-out train5k digits: **{_f(b['mean'])} ± {_f(b['stderr'])} bits/dim**.", ""]
    path = out / "report.md"
    path.write_text("\n".join(L))
    return path


def run_experiments(out="docs/experiments", size: str = "cpu", mnist_root: Optional[str] = None,
                    classifier: Optional[str] = None, device: Optional[str] = None, progress: bool = True,
                    command: str = "difflab experiments", mnist_run: Optional[str] = None) -> dict:
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    S = SIZES[size]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = mnist_root or DEFAULT_MNIST_ROOT
    start = time.perf_counter()
    torch.manual_seed(0)
    on_gpu = torch.device(device).type == "cuda"
    res = {"size": size, "settings": S, "device": torch.cuda.get_device_name(torch.device(device)) if on_gpu
           else f"the CPU ({torch.get_num_threads()} threads)"}
    res["swiss_roll"] = swiss_roll_part(S, out, device, progress)
    res["guidance_2d"] = guidance_2d_part(S, out, device, progress)
    res["mnist"] = mnist_part(S, out, root, device, classifier, progress, mnist_run)
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
    p.add_argument("--mnist-run", default=None,
                   help="evaluate this trained class-conditional MNIST run instead of training one "
                        "(size gpu: the run of benchmarks/mnist_cond_gpu.py, runs/mnist_cond)")
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
    if args.device is not None:  # a device that isn't here fails now, not after an hour of 2D experiments
        from .._devices import resolve_device

        args.device = str(resolve_device(args.device, "--device"))
    res = run_experiments(args.out, args.size, args.mnist_root, args.classifier, args.device, not args.quiet, cmd,
                          args.mnist_run)
    print(f"difflab experiments: wrote {Path(args.out) / 'report.md'} in {res['seconds'] / 60:.1f} min")
    return 0
