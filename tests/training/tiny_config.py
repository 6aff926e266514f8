"""The tiny run the trainer's tests share: a small MLP on a 2D toy set with labels (a few steps,
well under a second). A helper module, imported by name (``from tiny_config import tiny``), as
pytest puts a test file's folder on sys.path."""

import json

from difflab.training import TrainConfig, apply_overrides


def tiny(**changes) -> TrainConfig:
    d = {
        "model": {"name": "mlp", "kwargs": {"dim": 2, "width": 32, "depth": 2, "num_classes": 2, "dropout": 0.1}},
        "diffusion": {"schedule": "linear", "T": 100},
        "data": {"name": "toy2d", "kwargs": {"dataset": "swiss_roll", "n": 100}},
        "optim": {"lr": 1e-3, "warmup_steps": 3, "decay": "cosine"},
        "ema": {"decay": 0.9, "warmup": 2},
        "sample": {"every": -1},
        "batch_size": 16, "steps": 8, "log_every": 2, "ckpt_every": 4, "device": "cpu", "seed": 3,
    }
    cfg = TrainConfig.from_dict(d)
    return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in changes.items()])


def tiny_under(process: str, process_kwargs: dict = None, **changes) -> TrainConfig:
    """:func:`tiny` under another process (``difflab.processes.PROCESSES``) with its options; the
    DDPM schedule fields go back to their defaults, which the other processes require."""
    if process == "ddpm":
        return tiny(**changes)
    return tiny(**{"diffusion.process": process, "diffusion.process_kwargs": process_kwargs or {},
                   "diffusion.T": 1000, **changes})


# The two-process runs' config (torchrun, gloo): 10 steps of a small MLP, global batch 32 in 2
# accumulation steps, a checkpoint at 5 (tests/training/test_training_ddp.py, test_sharding.py).
TORCHRUN_YAML = """\
model: {name: mlp, kwargs: {dim: 2, width: 32, depth: 2, num_classes: 2}}
diffusion: {schedule: linear, T: 100}
data: {name: toy2d, kwargs: {dataset: swiss_roll, n: 200}}
optim: {lr: 1.0e-3, warmup_steps: 2}
sample: {every: -1}
batch_size: 32
grad_accum: 2
steps: 10
cond_drop_prob: 0.25
log_every: 1
ckpt_every: 5
device: cpu
"""
