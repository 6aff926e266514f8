"""The autoencoder of latent diffusion on MNIST, judged on held-out digits (not part of the difflab package).

    python experiments/autoencoder.py --out docs/latent              # trains configs/mnist_vae.yaml if needed
    python experiments/autoencoder.py --run runs/mnist_vae --out docs/latent --classifier classifiers/mnist
    python experiments/autoencoder.py --size tiny --out /tmp/ae      # the code path in seconds

The autoencoder trains on t10k (configs/mnist_vae.yaml: the split the diffusion models train on);
train5k is held out. The judge is difflab's evaluation CNN (``difflab train-classifier``: trained on
t10k, tested on train5k), as in experiments/mnist.py: the FID in its features ("FID (mnist-cnn
features)", never to be read as Inception FID) of the held-out train5k digits' reconstructions
against t10k, beside the floor (the real train5k digits against t10k), and the classifier's
accuracy on the reconstructions beside its accuracy on the real digits. Reconstructions decode the
posterior's mean (and, a second row, a sample z ~ q(z | x)), clamped to [-1, 1]. Also: the mean
absolute and squared pixel error, the latent scale factor, and CPU seconds per 1,000 images to
encode and to decode (one thread).

Must show (issue 25): FID of the reconstructions at most 2x the floor, and accuracy on them within
1 point of the accuracy on the real digits. OUT/metrics.json holds every number, with the checks;
OUT/reconstructions.png shows held-out digits (odd rows) over their reconstructions (even rows).
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
import yaml  # noqa: E402

import difflab as dl  # noqa: E402
from difflab.data.grids import save_image_grid  # noqa: E402
from difflab.evaluation import report  # noqa: E402
from difflab.evaluation.classifier import ClassifierFeatures, load_classifier, train_and_save_classifier  # noqa: E402
from difflab.files import atomic_write_text  # noqa: E402
from difflab.training.autoencoder import train_autoencoder  # noqa: E402
from difflab.training.config import TrainConfig  # noqa: E402

COMMAND = "python experiments/autoencoder.py"
REPO = HERE.parent
DEFAULT_ROOT = str(REPO.parent / "shared" / "data" / "mnist")

SIZES = {
    "tiny": dict(steps=4, held_n=100, ref_n=200, clf_epochs=1, clf_limit=200, timing_n=32, latent_n=64),
    "cpu": dict(steps=None, held_n=None, ref_n=None, clf_epochs=8, clf_limit=None, timing_n=1000, latent_n=2000),
}


def _config(root: str, steps: Optional[int]) -> TrainConfig:
    """configs/mnist_vae.yaml on the MNIST folder ``root`` (``steps``: fewer, for the tiny size)."""
    d = yaml.safe_load((REPO / "configs" / "mnist_vae.yaml").read_text())
    d["data"]["kwargs"]["root"] = root
    if steps is not None:
        d.update(steps=steps, ckpt_every=steps, log_every=1, batch_size=8, ema={"decay": 0.0})
    return TrainConfig.from_dict(d)


@torch.no_grad()
def _reconstruct(ae, x: torch.Tensor, sample: bool, seed: int = 0, batch: int = 500) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x), batch):
        q = ae.encode(x[i:i + batch])
        out.append(ae.decode(q.sample(g) if sample else q.mode()).clamp(-1, 1))
    return torch.cat(out)


@torch.no_grad()
def _seconds_per_1000(fn, x: torch.Tensor) -> float:
    fn(x[:8])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), 250):
        fn(x[i:i + 250])
    return (time.perf_counter() - t0) * 1000 / len(x)


def run(out: str, run_dir: Optional[str], classifier: Optional[str], root: str, size: str,
        progress: bool = True, command: str = COMMAND) -> dict:
    S = SIZES[size]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if run_dir is None:
        run_dir = str(out_dir / "runs" / "mnist_vae")
    if not (Path(run_dir) / "checkpoints" / "latest").is_file():
        train_autoencoder(_config(root, S["steps"]), run_dir, progress=progress)
    ae_run = dl.load(run_dir)
    ae = ae_run.ema_model
    if classifier is None:
        classifier = str(out_dir / "classifier")
        if not (Path(classifier) / "classifier.json").is_file():
            train_and_save_classifier("mnist", classifier, root, epochs=S["clf_epochs"], limit=S["clf_limit"],
                                      progress=progress)
    clf = load_classifier(classifier)

    t10k, _ = dl.data.load("mnist", root=root, split="t10k")
    held, held_labels = dl.data.load("mnist", root=root, split="train5k")
    order = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))  # (train5k is sorted by class)
    keep = order[:S["held_n"]] if S["held_n"] else order
    held, held_labels = held[keep], held_labels[keep]
    ref = report.ImageReference(t10k[:S["ref_n"]] if S["ref_n"] else t10k, ClassifierFeatures(clf, name="mnist-cnn"),
                                clf, batch_size=500)
    floor = ref(held, held_labels)
    mean_rec = _reconstruct(ae, held, sample=False)
    sampled_rec = _reconstruct(ae, held, sample=True)
    rows = {"real": floor, "reconstruction_mean": ref(mean_rec, held_labels),
            "reconstruction_sampled": ref(sampled_rec, held_labels)}
    for key, rec in (("reconstruction_mean", mean_rec), ("reconstruction_sampled", sampled_rec)):
        rows[key]["mae"] = float((rec - held).abs().mean())
        rows[key]["mse"] = float((rec - held).square().mean())
        rows[key]["psnr_db"] = float(10 * torch.log10(4 / (rec - held).square().mean()))  # peak-to-peak 2
    timing = held[:S["timing_n"]]
    z = ae.encode(timing).mode()
    speed = {"encode_s_per_1000": _seconds_per_1000(lambda x: ae.encode(x).mode(), timing),
             "decode_s_per_1000": _seconds_per_1000(ae.decode, z), "threads": torch.get_num_threads()}
    with torch.no_grad():
        latents = ae.encode_latents(t10k[:S["latent_n"]], generator=torch.Generator().manual_seed(1))
    m = rows["reconstruction_mean"]
    checks = {
        "fid_at_most_2x_floor": {"fid": m["fid"], "floor": floor["fid"], "ratio": m["fid"] / floor["fid"],
                                 "pass": bool(m["fid"] <= 2 * floor["fid"])},
        "accuracy_within_1_point": {"reconstructions": m["accuracy"], "real": floor["accuracy"],
                                    "difference_points": 100 * (floor["accuracy"] - m["accuracy"]),
                                    "pass": bool(floor["accuracy"] - m["accuracy"] <= 0.01)},
    }
    res = {"command": command, "size": size, "run": run_dir, "step": ae_run.step,
           "model": ae_run.config.model.name, "model_kwargs": ae.config,
           "parameters": sum(p.numel() for p in ae.parameters()),
           "latent_shape": list(ae.latent_shape(held.shape[1:])), "scaling_factor": ae.latent_scale,
           "scaled_latents_std": {"split": "t10k", "n": len(latents), "std": float(latents.std())}, "training_seconds": _training_seconds(run_dir),
           "classifier": {"path": classifier, **{k: clf.meta.get(k) for k in ("train_split", "test_split",
                                                                              "test_accuracy")}},
           "metric": ref.fid_name, "held_out": {"split": "train5k", "n": len(held)},
           "reference": {"split": "t10k", "n": ref.num_images}, "rows": rows, "speed_cpu": speed,
           "must_show": checks}
    atomic_write_text(out_dir / "metrics.json", json.dumps(res, indent=2) + "\n")
    pics = [t for i in range(0, 32, 16) for t in (held[i:i + 16], mean_rec[i:i + 16])]
    save_image_grid(torch.cat(pics), out_dir / "reconstructions.png", nrow=16)
    return res


def _training_seconds(run_dir: str) -> Optional[float]:
    log = Path(run_dir) / "log.csv"
    if not log.is_file():
        return None
    lines = log.read_text().strip().splitlines()
    return float(lines[-1].split(",")[-1]) if len(lines) > 1 else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/latent", help="folder for metrics.json and reconstructions.png")
    p.add_argument("--run", help="a trained autoencoder run (default: train configs/mnist_vae.yaml into OUT/runs)")
    p.add_argument("--classifier", help="an MNIST classifier folder (default: train one into OUT/classifier)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="the MNIST folder (t10k and train5k)")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    command = " ".join([COMMAND, *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    res = run(args.out, args.run, args.classifier, args.root, args.size, progress=not args.quiet, command=command)
    for name, check in res["must_show"].items():
        print(f"{name}: {'pass' if check['pass'] else 'FAIL'} {json.dumps(check)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
