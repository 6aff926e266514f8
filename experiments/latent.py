"""Latent against pixel-space diffusion on MNIST, at matched training time (not part of the difflab package).

    difflab train-autoencoder --config configs/mnist_vae.yaml --out runs/mnist_vae
    OMP_NUM_THREADS=1 difflab train --config configs/mnist_latent.yaml --out runs/mnist_latent &
    OMP_NUM_THREADS=1 difflab train --config configs/mnist_latent_pixel.yaml --out runs/mnist_latent_pixel &
    wait
    python experiments/latent.py --latent-run runs/mnist_latent --pixel-run runs/mnist_latent_pixel \\
        --classifier classifiers/mnist --out docs/latent/diffusion
    python experiments/latent.py --size tiny --out /tmp/latent       # the code path in seconds (trains its runs)

The two configs are the same run -- t10k, the linear DDPM chain (T = 1000, eps), AdamW 5e-4 at a
constant rate after 200 warm-up steps, batch 64, EMA 0.995, label dropout 0.1, ``max_time`` 1,200 s
of wall clock -- but for the data the network sees and the network: 7x7x4 latents of
runs/mnist_vae (one U-Net level of 64 channels, 1.08M parameters) or the 28x28 pixels (a
three-level U-Net of 32-64-64 channels, 1.19M). Both train at the same time, one thread each, so
they share the machine alike; each makes as many steps as its speed allows in the same time.

Measured here, for each: FID (mnist-cnn features: difflab's MNIST CNN, never to be read as Inception
FID) of ``n`` DDIM-50 samples (balanced classes, the EMA weights, a latent model's decoded) against
t10k at guidance 1 and 3, the CNN's accuracy on the requested class, precision and recall; the
floors at the same n: held-out real train5k digits, and for the latent model the autoencoder's
reconstructions of them (the best its decoder can give); CPU seconds (``time.process_time``, this
one-thread process) per 1,000 samples (the decoding included, and apart) and per training step
(forward, backward and AdamW of a batch of 64, timed here in turns so both see the same machine;
the latent step excludes the one-time encoding of the data, given apart per 1,000 images).
OUT/metrics.json holds every number; OUT/latent_samples.png and OUT/pixel_samples.png a row per class.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
if __package__ in (None, "") and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: import from the repository root

import torch  # noqa: E402

import difflab as dl  # noqa: E402
from difflab.data.grids import save_image_grid  # noqa: E402
from difflab.evaluation import report  # noqa: E402
from difflab.evaluation.classifier import ClassifierFeatures, load_classifier, train_and_save_classifier  # noqa: E402
from difflab.files import atomic_write_text  # noqa: E402
from difflab.training import train  # noqa: E402
from difflab.training.autoencoder import train_autoencoder  # noqa: E402
from difflab.training.build import build_model  # noqa: E402
from difflab.training.config import apply_overrides, load_config  # noqa: E402
from difflab.training.latent import decode_latents, encode_images  # noqa: E402
from difflab.training.loss import TrainBatch, build_loss  # noqa: E402

COMMAND = "python experiments/latent.py"
REPO = HERE.parent
DEFAULT_ROOT = str(REPO.parent / "shared" / "data" / "mnist")

SIZES = {
    "tiny": dict(n=20, guidance=(1.0, 3.0), steps=5, ref_n=200, timing_steps=2, timing_n=20, train_seconds=None),
    "cpu": dict(n=1000, guidance=(1.0, 3.0), steps=50, ref_n=None, timing_steps=10, timing_n=1000, train_seconds=None),
}


def _tiny_runs(out: Path, root: str) -> tuple[str, str]:
    """The two configs at a few steps each (and a few-step autoencoder), for the code path."""
    ae = out / "runs" / "vae"
    if not (ae / "checkpoints" / "latest").is_file():
        cfg = load_config(REPO / "configs" / "mnist_vae.yaml")
        cfg = apply_overrides(cfg, [f"data.kwargs.root={root}", "steps=2", "ckpt_every=2", "batch_size=8",
                                    "ema.decay=0.0"])
        train_autoencoder(cfg, ae, progress=False)
    runs = []
    for name in ("mnist_latent", "mnist_latent_pixel"):
        run = out / "runs" / name
        if not (run / "checkpoints" / "latest").is_file():
            cfg = load_config(REPO / "configs" / f"{name}.yaml")
            changes = [f"data.kwargs.root={root}", "steps=3", "ckpt_every=3", "batch_size=8", "max_time=null",
                       "sample.every=-1"]
            if cfg.latent.autoencoder is not None:
                changes.append(f"latent.autoencoder={ae}")
            train(apply_overrides(cfg, changes), run, progress=False)
        runs.append(str(run))
    return runs[0], runs[1]


@torch.no_grad()
def _draw(run, n: int, guidance: float, steps: int, seed: int, batch: int = 250) -> tuple[torch.Tensor, dict]:
    """n DDIM samples of balanced classes (batch i seeded seed + i), decoded for a latent run; the
    CPU seconds of sampling and, apart, of decoding."""
    labels = torch.arange(n) % 10
    latents, sample_s = [], 0.0
    for b, i in enumerate(range(0, n, batch)):
        t0 = time.process_time()
        g = torch.Generator().manual_seed(seed + b)
        latents.append(dl.sample(run.ema_model, run.proc, (len(labels[i:i + batch]), *run.sample_shape), "ddim",
                                 steps, cond=labels[i:i + batch], guidance=guidance, generator=g))
        sample_s += time.process_time() - t0
    x = torch.cat(latents)
    decode_s = 0.0
    if run.autoencoder is not None:
        t0 = time.process_time()
        x = decode_latents(run.autoencoder, x)
        decode_s = time.process_time() - t0
    else:
        x = x.reshape(n, *run.image_shape)
    return x, labels, {"sampling_cpu_s_per_1000": 1000 * (sample_s + decode_s) / n,
                       "decoding_cpu_s_per_1000": 1000 * decode_s / n}


def _step_seconds(runs: dict, data: dict, k: int) -> dict:
    """CPU seconds of one training step (forward, backward, AdamW) of each run's network on a batch
    of 64 of its own training data, k steps each, in turns (after a warm-up step)."""
    setups = {}
    for name, run in runs.items():
        cfg = run.config
        model = build_model(cfg).train()
        model.load_state_dict(run.model.state_dict())
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        loss_fn = build_loss(run.proc, cfg)
        g = torch.Generator().manual_seed(0)
        x0 = data[name][:cfg.batch_size]
        y = torch.randint(0, 10, (len(x0),), generator=g)
        batch = TrainBatch(x0=x0, cond=y, labels=y, t=run.proc.training_times(len(x0), generator=g),
                           noise=torch.randn(x0.shape, generator=g), u=torch.ones(len(x0)), step=0,
                           index=torch.arange(len(x0)))
        setups[name] = (model, opt, loss_fn, batch)
    seconds = {name: 0.0 for name in runs}
    for i in range(k + 1):
        for name, (model, opt, loss_fn, batch) in setups.items():
            t0 = time.process_time()
            opt.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            opt.step()
            if i > 0:  # (the first: warm-up)
                seconds[name] += time.process_time() - t0
    return {name: s / k for name, s in seconds.items()}


def _run_facts(run) -> dict:
    st = run.state
    params = sum(p.numel() for p in run.ema_model.parameters())
    return {"path": str(run.path), "step": run.step, "train_wall_s": st.get("elapsed_s"), "parameters": params,
            "model": run.config.model.name, "model_kwargs": run.config.model.kwargs,
            "sample_shape": list(run.sample_shape), "image_shape": list(run.image_shape),
            "latent": run.config.latent.autoencoder}


def run_experiment(out: str, latent_run: Optional[str], pixel_run: Optional[str], classifier: Optional[str],
                   root: str, size: str, command: str = COMMAND) -> dict:
    S = SIZES[size]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if latent_run is None or pixel_run is None:
        latent_run, pixel_run = _tiny_runs(out_dir, root)
    if classifier is None:
        classifier = str(out_dir / "classifier")
        if not (Path(classifier) / "classifier.json").is_file():
            train_and_save_classifier("mnist", classifier, root, epochs=1, limit=200, progress=False)
    clf = load_classifier(classifier)
    runs = {"latent": dl.load(latent_run), "pixel": dl.load(pixel_run)}
    if runs["latent"].autoencoder is None or runs["pixel"].autoencoder is not None:
        raise ValueError("--latent-run must be a latent run (latent.autoencoder set) and --pixel-run a pixel-space one")

    t10k, t10k_labels = dl.data.load("mnist", root=root, split="t10k")
    held, held_labels = dl.data.load("mnist", root=root, split="train5k")
    order = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))[:S["n"]]  # (train5k: by class)
    held, held_labels = held[order], held_labels[order]
    ref = report.ImageReference(t10k[:S["ref_n"]] if S["ref_n"] else t10k, ClassifierFeatures(clf, name="mnist-cnn"),
                                clf, batch_size=500)
    ae = runs["latent"].autoencoder
    with torch.no_grad():
        t0 = time.process_time()
        codes = encode_images(ae, held)
        encode_s = time.process_time() - t0
        reconstructions = decode_latents(ae, codes)
    floors = {"real train5k": ref(held, held_labels), "autoencoder reconstructions of them": ref(reconstructions,
                                                                                               held_labels)}
    rows = []
    grids = {}
    for name, run in runs.items():
        for w in S["guidance"]:
            x, labels, speed = _draw(run, S["n"], w, S["steps"], seed=0)
            rows.append({"model": name, "guidance": w, **ref(x, labels), **speed})
            if w == max(S["guidance"]):
                grids[name] = x
    for name, x in grids.items():
        pick = torch.cat([x[torch.arange(len(x)) % 10 == c][:10] for c in range(10)])
        save_image_grid(pick, out_dir / f"{name}_samples.png", nrow=10)
    data = {"latent": encode_images(ae, t10k[:64], sample=True, generator=torch.Generator().manual_seed(0)),
            "pixel": t10k[:64]}
    step_s = _step_seconds(runs, data, S["timing_steps"])
    res = {"command": command, "size": size, "metric": ref.fid_name,
           "reference": {"split": "t10k", "n": ref.num_images}, "samples_per_row": S["n"], "sampler": "ddim",
           "sampler_steps": S["steps"],
           "classifier": {"path": classifier, "test_accuracy": clf.meta.get("test_accuracy")},
           "runs": {name: _run_facts(run) for name, run in runs.items()},
           "floors": floors, "rows": rows,
           "training_step_cpu_s": step_s,
           "encoding_cpu_s_per_1000": 1000 * encode_s / len(held),
           "threads": torch.get_num_threads()}
    atomic_write_text(out_dir / "metrics.json", json.dumps(res, indent=2) + "\n")
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/latent/diffusion", help="folder for metrics.json and the sample grids")
    p.add_argument("--latent-run", help="the trained configs/mnist_latent.yaml (default: tiny runs into OUT/runs)")
    p.add_argument("--pixel-run", help="the trained configs/mnist_latent_pixel.yaml")
    p.add_argument("--classifier", help="an MNIST classifier folder (default: a tiny one into OUT/classifier)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="the MNIST folder (t10k and train5k)")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    args = p.parse_args(argv)
    command = " ".join([COMMAND, *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    res = run_experiment(args.out, args.latent_run, args.pixel_run, args.classifier, args.root, args.size, command)
    for row in res["rows"]:
        print(f"{row['model']:>6} w={row['guidance']:g}: FID {row['fid']:.2f}, accuracy {row.get('accuracy', 0):.4f}, "
              f"{row['sampling_cpu_s_per_1000']:.1f} CPU s / 1000 samples")
    print("floors: " + ", ".join(f"{k} {v['fid']:.2f}" for k, v in res["floors"].items()))
    print(f"training step CPU s: {res['training_step_cpu_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
