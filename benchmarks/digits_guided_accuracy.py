"""Are guided samples of the digits model digits of the asked class? A number, not a picture.

    python benchmarks/digits_guided_accuracy.py                      # train (difflab train), then judge
    python benchmarks/digits_guided_accuracy.py --ckpt runs/digits   # judge an existing run

1. Trains ``difflab train --config configs/digits.yaml`` in a subprocess and times it (wall clock,
   with the machine's load average before and after: the machine may be shared).
2. Fits a judge on REAL digits only: scikit-learn's LogisticRegression on the 64 pixels, trained
   on a stratified 75% of the 1,797 images, its accuracy reported on the other 25%.
3. Draws ``--per-class`` guided samples of every class (DDIM, guidance w, fixed seed) and
   reports the share the judge assigns to the requested class, per class and overall, for
   several guidance scales (w = 1 is plain conditional sampling).

Writes docs/digits_guided/results.json and grid.png (a row per class at the headline guidance).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def train(config: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "difflab.cli", "train", "--config", str(config), "--out", str(out), "--quiet"]
    load_before = _load()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    rel = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    return {"command": f"difflab train --config {config.relative_to(REPO)} --out {rel}",
            "wall_seconds": round(wall, 1),
            # CPU time is what the run itself consumed: on a shared machine the wall time also
            # holds the waits for other people's processes; on an idle 2-core machine the wall
            # time lies between cpu_seconds / 2 and cpu_seconds
            "cpu_seconds": round(cpu, 1), "load_average_before": load_before, "load_average_after": _load(),
            "cpu_count": os.cpu_count()}


def judge(seed: int = 0):
    """LogisticRegression on real digits: (classifier, held-out accuracy, test size)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    import difflab as dl

    x, y = dl.data.load("digits")
    X, Y = x.flatten(1).numpy(), y.numpy()
    Xtr, Xte, Ytr, Yte = train_test_split(X, Y, test_size=0.25, stratify=Y, random_state=seed)
    clf = LogisticRegression(max_iter=5000, C=1.0).fit(Xtr, Ytr)
    return clf, float(clf.score(Xte, Yte)), len(Yte)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "digits.yaml"))
    ap.add_argument("--ckpt", help="judge this run instead of training one")
    ap.add_argument("--out-run", default=str(REPO / "runs" / "digits"), help="run folder to train into")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    ap.add_argument("--headline", type=float, default=3.0, help="guidance of the grid and the headline number")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", default=str(REPO / "docs" / "digits_guided"))
    args = ap.parse_args(argv)

    import difflab as dl

    result: dict = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                                "torch": torch.__version__}}
    if args.ckpt:
        run_dir = Path(args.ckpt)
    else:
        run_dir = Path(args.out_run)
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        result["training"] = train(Path(args.config).resolve(), run_dir)
        print(f"trained in {result['training']['wall_seconds']} s "
              f"(load average before {result['training']['load_average_before']}, "
              f"after {result['training']['load_average_after']})")
    run = dl.load(run_dir)
    log = run_dir / "log.csv"
    if log.is_file():
        import csv

        rows = list(csv.DictReader(open(log)))
        result["training_log"] = {"final_loss": float(rows[-1]["loss"]), "steps": int(rows[-1]["step"]),
                                  "train_seconds_in_loop": float(rows[-1]["elapsed_s"])}
    clf, judge_acc, n_test = judge(args.seed)
    result["judge"] = {"model": "sklearn LogisticRegression(C=1) on 64 pixels, trained on real digits",
                       "held_out_accuracy": round(judge_acc, 4), "held_out_images": n_test}
    print(f"judge: held-out accuracy on real digits {judge_acc:.4f} ({n_test} images)")

    K, n = run.num_classes, args.per_class
    labels = torch.arange(K).repeat_interleave(n)
    result["sampling"] = {"sampler": "ddim", "steps": args.steps, "per_class": n, "seed": args.seed,
                          "clip_x0": run.config.sample.clip_x0,
                          "checkpoint": str(run.path.relative_to(REPO) if run.path.is_relative_to(REPO) else run.path),
                          "step": run.step}
    result["accuracy"] = {}
    grid = None
    for w in args.guidance:
        t0 = time.perf_counter()
        x = run.sample(len(labels), "ddim", args.steps, guidance=w, labels=labels, seed=args.seed)
        secs = time.perf_counter() - t0
        pred = clf.predict(x.clamp(-1, 1).flatten(1).numpy())
        hit = pred == labels.numpy()
        per_class = [round(float(hit[labels.numpy() == k].mean()), 3) for k in range(K)]
        result["accuracy"][f"guidance_{w:g}"] = {"overall": round(float(hit.mean()), 4), "per_class": per_class,
                                                 "sampling_seconds": round(secs, 1)}
        print(f"guidance {w:g}: {hit.mean():.4f} of {len(labels)} samples judged the requested class; "
              f"per class {per_class}")
        if w == args.headline:
            grid = x.view(K, n, *x.shape[1:])[:, :10].reshape(-1, *x.shape[1:])
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    if grid is not None:
        big = torch.nn.functional.interpolate(grid.clamp(-1, 1), scale_factor=4, mode="nearest")
        dl.evaluation.save_image_grid(big, docs / "grid.png", nrow=min(10, n))
        result["grid"] = {"file": "grid.png", "guidance": args.headline, "rows": "one per class, 0 to 9",
                          "pixels": "each 8x8 sample drawn 4x larger (nearest neighbour)"}
    cli_args = " ".join(map(shlex.quote, argv or sys.argv[1:]))
    result["command"] = f"python benchmarks/digits_guided_accuracy.py {cli_args}".strip()
    (docs / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {docs / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
