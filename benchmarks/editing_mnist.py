"""The must-show numbers of editing (issue 6) on MNIST, with pictures, written as JSON.

    python benchmarks/editing_mnist.py train-base   # unconditional MNIST model (CPU-sized), runs/editing/base
    python benchmarks/editing_mnist.py train-sr     # configs/mnist_superres_cpu.yaml -> runs/editing/superres
    python benchmarks/editing_mnist.py evaluate --out docs/editing     # numbers + pictures
    python benchmarks/editing_mnist.py evaluate --only inversion interpolation   # re-measure two parts

or point ``evaluate`` at any trained runs: ``--base runs/mnist --sr runs/mnist_superres
--classifier classifiers/mnist`` (a GPU-trained configs/mnist.yaml model gives better
samples; the procedure is the same). Measured on held-out digits (train5k; the models and the
classifier train on t10k):

- inpainting, lower half masked: kept pixels equal to the input after the final paste (max
  |diff|) and before it (mean |diff|); the classifier's accuracy on the inpainted digits
  (against the original label; chance is 10%), also on the masked input alone and on the
  originals; replacement vs RePaint, DDPM vs DDIM;
- SDEdit: mean L2 distance to the input per strength (must grow monotonically);
- super-resolution 14x14 -> 28x28: PSNR of the samples (and of their mean) against bicubic;
- DDIM inversion round trip: mean |x - x'| and PSNR at 20, 50, 100 steps;
- interpolation strips (pictures).

Everything is seeded; ``evaluate`` takes about 13 minutes on one CPU thread (the CPU-sized models
train in 43 and 16 minutes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import difflab as dl
from difflab import editing as E

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"

# The unconditional base model, sized for a 2-core CPU: 1.2M parameters, 32-64-64 channels at
# 28-14-7, one residual block per level, attention at 7x7; about 1 s per step of 64 images.
BASE_CONFIG = {
    "model": {"name": "unet", "kwargs": {
        "in_channels": 1, "channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
        "attention_levels": [2], "image_size": 28, "norm_groups": 8, "head_dim": 32,
        "use_scale_shift_norm": True}},
    "diffusion": {"schedule": "linear", "T": 1000, "prediction": "eps"},
    "data": {"name": "mnist", "kwargs": {"root": str(MNIST), "split": "t10k"}},
    "optim": {"lr": 1.0e-3, "warmup_steps": 100, "decay": "cosine", "grad_clip": 1.0},
    "ema": {"decay": 0.995, "warmup": 10},
    "sample": {"every": 0, "sampler": "ddim", "steps": 50, "n": 64, "seed": 0},
    "batch_size": 64, "steps": 2500, "cond_drop_prob": 0.0, "device": "cpu", "seed": 0,
    "log_every": 50, "ckpt_every": 250,
}


def _train_base(args) -> None:
    from difflab.training.config import TrainConfig, apply_overrides
    from difflab.training.trainer import Trainer

    cfg = apply_overrides(TrainConfig.from_dict(BASE_CONFIG), args.set)
    out = Path(args.base)
    resume = dl.training.checkpoint.latest_checkpoint(out) is not None
    trainer = Trainer(cfg, out, resume=resume, progress=not args.quiet)
    try:
        print(json.dumps(trainer.train()))
    finally:
        trainer.close()


def _train_sr(args) -> None:
    from difflab.training.config import apply_overrides, load_config

    cfg = load_config(REPO / "configs" / "mnist_superres_cpu.yaml")
    cfg = apply_overrides(cfg, [f"data.kwargs.root={MNIST}"] + list(args.set))
    out = Path(args.sr)
    resume = dl.training.checkpoint.latest_checkpoint(out) is not None
    print(json.dumps(E.train_superres(cfg, out, resume=resume, progress=not args.quiet)))


def _psnr(x, ref):
    """Per-image PSNR in dB of images in [-1, 1], measured on [0, 1] (peak 1)."""
    mse = ((x.clamp(-1, 1) - ref) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


def _classifier(args, log):
    from difflab.evaluation.classifier import load_classifier, save_classifier, train_classifier

    path = Path(args.classifier) if args.classifier else REPO / "classifiers" / "mnist"
    if not args.classifier and not (path / "classifier.safetensors").is_file():
        path = REPO / "runs" / "editing" / "classifier"
    if (path / "classifier.safetensors").is_file():
        clf = load_classifier(path)
        log(f"classifier: {path} (test accuracy {clf.meta.get('test_accuracy')})")
        return clf, {"path": _rel(path), "test_accuracy": clf.meta.get("test_accuracy"), "trained_here": False}
    x, y = dl.data.load("mnist", root=str(MNIST), split="t10k")
    xt, yt = dl.data.load("mnist", root=str(MNIST), split="train5k")
    clf, record = train_classifier(x, y, test_images=xt, test_labels=yt, epochs=4, seed=0)
    save_classifier(clf, path, {"dataset": "mnist", "train_split": "t10k", "test_split": "train5k", **record})
    log(f"classifier trained here on t10k: test accuracy on train5k {record['test_accuracy']:.4f}")
    return clf.eval(), {"path": _rel(path), "test_accuracy": record["test_accuracy"], "trained_here": True}


@torch.no_grad()
def _accuracy(clf, x, y):
    return (clf(x.clamp(-1, 1)).argmax(1) == y).float().mean().item()


def _rel(path) -> str:
    """A path relative to the repository when inside it (for the JSON committed under docs/)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _describe(run):
    return {"path": _rel(run.path), "model": run.config.model.name, "kwargs": run.config.model.kwargs,
            "params": sum(p.numel() for p in run.ema_model.parameters()), "train_steps": run.step,
            "batch_size": run.config.batch_size}


PARTS = ("inpaint", "sdedit", "inversion", "interpolation", "superres")


def evaluate(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", flush=True)

    x_all, y_all = dl.data.load("mnist", root=str(MNIST), split="train5k")
    pick = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))[: args.n]
    x, y = x_all[pick], y_all[pick]
    clf, clf_info = _classifier(args, log)
    result = {"held_out": f"train5k, {args.n} digits (seeded random subset)", "classifier": clf_info,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads()}
    result["classifier_accuracy_originals"] = _accuracy(clf, x, y)
    parts = set(args.only or PARTS)
    if args.only and (out / "editing_mnist.json").is_file():  # update those sections, keep the others
        result = {**json.loads((out / "editing_mnist.json").read_text()), **result}

    base = dl.load(args.base)
    model, proc = base.ema_model, base.proc
    result["base_model"] = _describe(base)
    log(f"base model: {result['base_model']['params']} parameters, {base.step} steps")
    m = min(args.n, 100)

    # ------------------------------------------------------------------ inpainting
    if "inpaint" in parts:
        _inpaint(model, proc, x, y, clf, result, out, log)
    # ---------------------------------------------------------------------- SDEdit
    if "sdedit" in parts:
        _sdedit(model, proc, x, y, m, clf, result, out, log)
    # ----------------------------------------------------------- inversion round trip
    if "inversion" in parts:
        _inversion(model, proc, x, m, result, out, log)
    # --------------------------------------------------------------- interpolation
    if "interpolation" in parts:
        _interpolation(model, proc, x, out, log)
    # ------------------------------------------------------------ super-resolution
    if "superres" in parts:
        _superres(args, x, y, clf, result, out, log)

    result["seconds" if not args.only else f"seconds_{'_'.join(sorted(parts))}"] = time.perf_counter() - t_all
    (out / "editing_mnist.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out / 'editing_mnist.json'}")
    return result


def _inpaint(model, proc, x, y, clf, result, out, log) -> None:
    mask = E.parse_mask("half:bottom", (28, 28))
    masked_input = E.paste(torch.full_like(x, -1.0), x, mask)  # the lower half erased to background
    result["classifier_accuracy_masked_input"] = _accuracy(clf, masked_input, y)
    methods = {
        "replacement_ddpm_100": dict(sampler="ddpm", steps=100, clip_x0=1.0),
        "replacement_ddim_50": dict(sampler="ddim", steps=50, clip_x0=1.0),
        "repaint_ddpm_50_j5_r4": dict(sampler="ddpm", steps=50, jump_length=5, resample=4, clip_x0=1.0),
        "repaint_ddim_50_j5_r4": dict(sampler="ddim", steps=50, jump_length=5, resample=4, clip_x0=1.0),
    }
    inpaint = {}
    pictures = [x[:10], masked_input[:10]]
    for name, kw in methods.items():
        t0 = time.perf_counter()
        raw = E.inpaint(model, proc, x, mask, generator=torch.Generator().manual_seed(0), paste_final=False, **kw)
        seconds = time.perf_counter() - t0
        pasted = E.paste(raw, x, mask)
        keep = (1 - mask).bool().expand_as(x)
        inpaint[name] = {
            "kept_max_abs_diff_after_paste": (pasted - x)[keep].abs().max().item(),
            "kept_mean_abs_diff_before_paste": (raw - x)[keep].abs().mean().item(),
            "kept_max_abs_diff_before_paste": (raw - x)[keep].abs().max().item(),
            "classifier_accuracy": _accuracy(clf, pasted, y),
            "seconds": seconds,
            **kw,
        }
        pictures.append(pasted[:10])
        log(f"inpaint {name}: accuracy {inpaint[name]['classifier_accuracy']:.3f}, kept |diff| before paste "
            f"{inpaint[name]['kept_mean_abs_diff_before_paste']:.4f} ({seconds:.0f} s)")
    result["inpainting_lower_half"] = inpaint
    E.save_images(torch.cat(pictures), out / "inpaint.png", nrow=10)


def _sdedit(model, proc, x, y, m, clf, result, out, log) -> None:
    eps = torch.randn(x[:m].shape, generator=torch.Generator().manual_seed(1))
    strengths = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    rows, sd = [x[:8]], {}
    for s in strengths:
        e = E.img2img(model, proc, x[:m], s, "ddim", 50, noise=eps, clip_x0=1.0)
        sd[str(s)] = {"mean_l2_distance": (e - x[:m]).flatten(1).norm(dim=1).mean().item(),
                      "rms_pixel_distance": (e - x[:m]).pow(2).mean().sqrt().item(),
                      "classifier_keeps_label": _accuracy(clf, e, y[:m])}
        rows.append(e[:8])
    d = [sd[str(s)]["mean_l2_distance"] for s in strengths]
    result["sdedit_ddim_50"] = {"per_strength": sd, "monotone": all(b > a for a, b in zip(d[:-1], d[1:])),
                                "n": m, "clip_x0": 1.0}
    E.save_images(torch.cat(rows), out / "sdedit.png", nrow=8)
    log(f"SDEdit distances {[round(v, 2) for v in d]} monotone={result['sdedit_ddim_50']['monotone']}")


def _inversion(model, proc, x, m, result, out, log) -> None:
    inv, rows = {}, [x[:10]]
    for steps in (20, 50, 100):
        rec = E.reconstruct(model, proc, x[:m], steps)
        inv[str(steps)] = {"mean_abs_error": (rec - x[:m]).abs().mean().item(),
                           "rmse": (rec - x[:m]).pow(2).mean().sqrt().item(),
                           "psnr_db": _psnr(rec, x[:m]).mean().item()}
        rows.append(rec[:10])
        log(f"inversion {steps} steps: mean |x - x'| {inv[str(steps)]['mean_abs_error']:.4f}")
    result["ddim_inversion_round_trip"] = {"n": m, "spacing": "trailing", **inv}
    E.save_images(torch.cat(rows), out / "inversion.png", nrow=10)


def _interpolation(model, proc, x, out, log) -> None:
    strips = [E.interpolate(model, proc, x[i], x[i + 1], frames=8, steps=50) for i in (0, 2)]
    g = torch.Generator().manual_seed(5)
    strips.append(E.interpolate(model, proc, torch.randn(1, 28, 28, generator=g),
                                torch.randn(1, 28, 28, generator=g), frames=8, steps=50, latents=True))
    E.save_images(torch.cat(strips), out / "interpolation.png", nrow=8)
    log("interpolation strips written")


def _superres(args, x, y, clf, result, out, log) -> None:
    if Path(args.sr).exists():
        sr = dl.load(args.sr)
        result["superres_model"] = _describe(sr)
        low = E.downsample(x, 2)
        bicubic = E.upsample(low, (28, 28), "bicubic").clamp(-1, 1)
        samples = [E.upscale(sr.ema_model, sr.proc, low, "ddim", 50, clip_x0=1.0,
                             noise=torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + k)))
                   for k in range(4)]
        mean = torch.stack(samples).mean(0)
        result["superres_14_to_28"] = {
            "psnr_bicubic_db": _psnr(bicubic, x).mean().item(),
            "psnr_sample_db": _psnr(samples[0], x).mean().item(),
            "psnr_mean_of_4_samples_db": _psnr(mean, x).mean().item(),
            "low_res_consistency_mean_abs": (E.downsample(samples[0], 2) - low).abs().mean().item(),
            "classifier_accuracy_bicubic": _accuracy(clf, bicubic, y),
            "classifier_accuracy_sample": _accuracy(clf, samples[0], y),
            "sampler": "ddim, 50 steps, x0 clipped to [-1, 1]",
        }
        nearest = E.upsample(low, (28, 28), "nearest")
        E.save_images(torch.cat([nearest[:10], bicubic[:10], samples[0][:10], samples[1][:10], x[:10]]),
                      out / "superres.png", nrow=10)
        r = result["superres_14_to_28"]
        log(f"super-resolution PSNR: bicubic {r['psnr_bicubic_db']:.2f} dB, sample {r['psnr_sample_db']:.2f} dB, "
            f"mean of 4 {r['psnr_mean_of_4_samples_db']:.2f} dB")
    else:
        log(f"no super-resolution run at {args.sr}: skipped (python benchmarks/editing_mnist.py train-sr)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=["train-base", "train-sr", "evaluate"])
    p.add_argument("--base", default=str(REPO / "runs" / "editing" / "base"), help="unconditional MNIST run")
    p.add_argument("--sr", default=str(REPO / "runs" / "editing" / "superres"), help="super-resolution run")
    p.add_argument("--classifier", default=None,
                   help="classifier folder (default: classifiers/mnist from `difflab train-classifier` when "
                        "present, else one is trained here on t10k into runs/editing/classifier)")
    p.add_argument("--out", default=str(REPO / "docs" / "editing"), help="pictures and editing_mnist.json")
    p.add_argument("--n", type=int, default=200, help="held-out digits per measurement")
    p.add_argument("--only", nargs="+", choices=PARTS, default=None,
                   help="evaluate: only these parts, updating their sections of an existing editing_mnist.json")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override (training)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stage == "train-base":
        _train_base(args)
    elif args.stage == "train-sr":
        _train_sr(args)
    else:
        evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
