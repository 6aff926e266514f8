"""Does torch.compile speed up training on a CPU? The trainer's step, eager against compiled.

    python benchmarks/cpu_compile.py                  # 1 thread, then 2; eager, compile: step, channels_last
    python benchmarks/cpu_compile.py --threads 2 --steps 10

The network is the CPU experiments' MNIST U-Net (experiments/classic.py --size cpu: 14x14,
32-64 channels, attention at 7x7, class-conditional, 0.76M parameters), batch 128, on random
images (speed does not depend on the pixels). Prints the compile time (the first step) and
seconds per step (median of three timed runs); docs/benchmarks.md quotes the result, which is
why the trainer compiles on a CPU only when ``compile_options`` asks for it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from difflab.training import Trainer, TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: experiments/
from experiments.settings import UNET_CPU  # noqa: E402


def seconds_per_step(threads: int, compile_mode: str, channels_last: bool, steps: int) -> tuple[float, float]:
    """(first step's seconds, median seconds per step after warm-up)."""
    cfg = TrainConfig.from_dict({
        "model": {"name": "unet", "kwargs": {**UNET_CPU["kwargs"], "image_size": 14}},
        "diffusion": {"schedule": "linear", "T": 1000}, "sample": {"every": -1},
        "batch_size": 128, "steps": 10**9, "device": "cpu", "tensorboard": False, "cpu_threads": threads,
        "compile": compile_mode, "compile_options": {"backend": "inductor"} if compile_mode != "none" else {},
        "channels_last": channels_last,
    })
    data = (torch.rand(2048, 1, 14, 14) * 2 - 1, torch.randint(0, 10, (2048,)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", data=data, progress=False)
        t0 = time.perf_counter()
        trainer.train_step(0)
        first = time.perf_counter() - t0
        for s in range(1, 4):
            trainer.train_step(s)
        runs = []
        for r in range(3):
            t0 = time.perf_counter()
            for s in range(steps):
                loss, _ = trainer.train_step(4 + r * steps + s)
            float(loss)
            runs.append((time.perf_counter() - t0) / steps)
        trainer.close()
    return first, statistics.median(runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10, help="steps per timed run")
    args = ap.parse_args(argv)
    print(f"{'threads':>7}  {'setting':<22} {'first step s':>12} {'s/step':>8} {'vs eager':>8}")
    for threads in args.threads:
        eager = None
        for name, mode, cl in (("eager", "none", False), ("compile: step", "step", False),
                               ("eager + channels_last", "none", True)):
            first, per = seconds_per_step(threads, mode, cl, args.steps)
            eager = eager or per
            print(f"{threads:>7}  {name:<22} {first:>12.1f} {per:>8.3f} {eager / per:>7.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
