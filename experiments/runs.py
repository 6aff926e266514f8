"""Training runs the experiments reuse, and the cache of finished evaluation rows that lets a run
stopped by a time limit continue where it stopped."""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Optional

import yaml

from difflab.files import atomic_write_text
from difflab.training import load as load_run
from difflab.training import train


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_or_reuse(cfg: dict, name: str, out: Path, progress: bool):
    """Train ``cfg`` into out/runs/name (reusing a finished run of the same config, resuming an
    unfinished one); returns (dl.load(run), seconds spent training here)."""
    cfg_path = write_config(out / "configs" / f"{name}.yaml", cfg)
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


def given_mnist_run(path: str, image_size: int, device: str):
    """A trained class-conditional MNIST run at ``image_size``, for --mnist-run."""
    run = load_run(path, device=device)
    size = run.image_shape[-1] if run.image_shape else None
    if run.num_classes != 10 or size != image_size:
        raise ValueError(
            f"--mnist-run {path!r} must be a class-conditional MNIST model (10 classes) on {image_size}x"
            f"{image_size} images for this --size, got num_classes={run.num_classes}, image size {size}; "
            "train one with configs/mnist_cond.yaml (size gpu) or omit --mnist-run to train here"
        )
    return run


def logged_seconds(run_dir: Path) -> Optional[float]:
    """Training time of a run from its log.csv (elapsed_s of the last row, counted across resumes)."""
    try:
        with open(run_dir / "log.csv") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["elapsed_s"]) if rows and "elapsed_s" in rows[-1] else None
    except (OSError, ValueError, KeyError):
        return None


def sd(v) -> float:
    """Sample standard deviation (n - 1); NaN for fewer than two values."""
    return statistics.stdev(v) if len(v) >= 2 else float("nan")


class RowCache:
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
