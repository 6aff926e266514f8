"""Class-conditional MNIST on one GPU: train, then write the docs artefacts. One command:

    python benchmarks/mnist_cond_gpu.py                     # difflab train --config configs/mnist_cond.yaml
    python benchmarks/mnist_cond_gpu.py --ckpt runs/mnist_cond    # artefacts of an existing run
    python benchmarks/mnist_cond_gpu.py --out-run /tmp/mnist_smoke_run --docs /tmp/mnist_smoke \\
        --judge-epochs 1 --per-class 4 --sample-steps 5 \\
        --train-args --steps 6 --batch-size 8 --sample-every -1 --set cpu_threads=1   # CPU smoke run

Writes to docs/mnist_cond/: grid.png (a row per class, guided), loss.png (the logged loss per
step), results.json: wall time of the training command, training throughput in images/s
(median over log windows after the first, which holds torch.compile's warm-up), the final loss,
the device, and the share of guided samples that a small CNN trained on the held-out train5k
split (never seen by the diffusion model) assigns to the requested class, at several guidance
scales.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from difflab.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/mnist_cond.yaml")
    ap.add_argument("--out-run", default=None, help="run folder (default: runs/<config name>)")
    ap.add_argument("--ckpt", help="skip training: use this run folder")
    ap.add_argument("--docs", default=None, help="artefact folder (default: docs/<config name>)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--headline", type=float, default=3.0)
    ap.add_argument("--per-class", type=int, default=100, help="samples per class for the accuracy")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--judge-epochs", type=int, default=8)
    ap.add_argument("--mnist", default=str(REPO.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                    help="extra arguments for difflab train (overrides), e.g. --steps 20")
    args = ap.parse_args(argv)

    import difflab as dl

    name = Path(args.config).stem
    run_dir = Path(args.ckpt or args.out_run or REPO / "runs" / name)
    docs = Path(args.docs or REPO / "docs" / name)
    docs.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    result: dict = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else f"cpu ({os.cpu_count()} cores)",
                    "torch": torch.__version__, "platform": platform.platform()}

    if not args.ckpt:
        if (run_dir / "checkpoints").exists():
            raise SystemExit(f"{run_dir} already holds a run; pass --ckpt {run_dir} or remove it")
        cmd = [sys.executable, "-m", "difflab.cli", "train", "--config", args.config, "--out", str(run_dir),
               *args.train_args]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO)
        result["train_command"] = "difflab " + " ".join(map(shlex.quote, cmd[3:]))
        result["train_wall_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"training command took {result['train_wall_seconds']} s")

    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    ips = [float(r["images_per_sec"]) for r in rows]
    result["final_loss"] = losses[-1]
    result["steps"] = steps[-1]
    result["train_loop_seconds"] = float(rows[-1]["elapsed_s"])
    steady = ips[1:] or ips
    result["throughput_images_per_sec"] = {"median_after_first_window": round(statistics.median(steady), 1),
                                           "first_window": round(ips[0], 1), "max": round(max(ips), 1)}
    _loss_plot(steps, losses, docs / "loss.png")

    run = dl.load(run_dir, device=dev)
    result["checkpoint"] = str(run.path)
    result["config"] = run.config.to_dict()
    result["steps_configured"] = run.config.steps
    result["stopped_by_max_time"] = steps[-1] < run.config.steps  # max_time ended the run early

    # judge: a small CNN trained on train5k (held out from the diffusion model's t10k)
    from difflab.evaluation import classifier

    x5, y5 = dl.data.mnist.load(args.mnist, "train5k")
    xt, yt = dl.data.mnist.load(args.mnist, "t10k")
    clf, rec = classifier.train_classifier(x5, y5, test_images=xt[:2000], test_labels=yt[:2000],
                                           epochs=args.judge_epochs, device=dev)
    result["judge"] = {"model": "difflab.evaluation.classifier.SmallCNN trained on train5k",
                       "accuracy_on_real_t10k_2000": round(rec["test_accuracy"], 4)}
    clf = clf.to(dev)
    result["guided_accuracy"] = {}
    K = run.num_classes
    if K is None:
        x = run.sample(64, "ddim", args.sample_steps, seed=0, device=dev)
        dl.evaluation.save_image_grid(x, docs / "grid.png", nrow=8)
    else:
        labels = torch.arange(K).repeat_interleave(args.per_class)
        for w in args.guidance:
            t0 = time.perf_counter()
            x = torch.cat([run.sample(len(chunk), "ddim", args.sample_steps, guidance=w, labels=chunk,
                                      seed=i, device=dev) for i, chunk in enumerate(labels.split(1000))])
            acc = classifier.accuracy(clf, x.clamp(-1, 1), labels)
            result["guided_accuracy"][f"guidance_{w:g}"] = {"accuracy": round(acc, 4), "n": len(labels),
                                                            "seconds": round(time.perf_counter() - t0, 1)}
            print(f"guidance {w:g}: {acc:.4f} of {len(labels)} samples judged the requested class")
            if w == args.headline:
                n = min(10, args.per_class)
                grid = x.view(K, args.per_class, *x.shape[1:])[:, :n].reshape(-1, *x.shape[1:])
                dl.evaluation.save_image_grid(grid, docs / "grid.png", nrow=n)
    result["command"] = "python benchmarks/mnist_cond_gpu.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
    atomic_write_text(docs / "results.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    return 0


def _loss_plot(steps, losses, path) -> None:
    from difflab.evaluation.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over each log window)")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
