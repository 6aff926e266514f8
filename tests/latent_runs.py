"""Tiny latent-diffusion runs for the tests of training/latent*.py, editing/latent.py and the CLI
(a helper module, imported by name: ``from latent_runs import ...``). The autoencoder is
``autoencoder_kl_tiny`` (f = 2, 2 latent channels: 8x8 digits -> 4x4x2 latents) trained for two
steps on scikit-learn's digits, which measures its latent scale; the diffusion model is
``unet_tiny`` taking its 2 channels. Nothing here needs MNIST or ../shared."""

from __future__ import annotations

import json
from pathlib import Path

from difflab.training import TrainConfig, apply_overrides
from difflab.training.autoencoder import train_autoencoder


def autoencoder_config(**changes) -> TrainConfig:
    d = {"model": {"name": "autoencoder_kl_tiny", "kwargs": {}}, "data": {"name": "digits"}, "loss": "autoencoder",
         "autoencoder": {"reconstruction": "l1", "kl_weight": 1e-3}, "optim": {"lr": 2e-3},
         "ema": {"decay": 0.5, "warmup": 0}, "sample": {"every": -1}, "batch_size": 16, "steps": 2, "log_every": 1,
         "ckpt_every": 2, "device": "cpu", "seed": 4}
    return apply_overrides(TrainConfig.from_dict(d), [f"{k}={json.dumps(v)}" for k, v in changes.items()])


def autoencoder_run(path: Path, **changes) -> Path:
    """A trained (two steps) tiny autoencoder run folder with its latent scale measured."""
    train_autoencoder(autoencoder_config(**changes), path, progress=False)
    return Path(path)


def latent_config(autoencoder: Path, **changes) -> TrainConfig:
    """Class-conditional DDPM (cosine, T = 100) on the autoencoder's latents of the digits; 4 steps,
    a checkpoint every 2, constant learning rate (so a resume with more steps is exact)."""
    d = {"model": {"name": "unet_tiny", "kwargs": {"num_classes": 10, "in_channels": 2}},
         "diffusion": {"schedule": "cosine", "T": 100}, "data": {"name": "digits"},
         "latent": {"autoencoder": str(autoencoder)}, "optim": {"lr": 1e-3, "warmup_steps": 1},
         "ema": {"decay": 0.9, "warmup": 1}, "sample": {"every": -1, "steps": 3, "per_class": 1},
         "batch_size": 16, "steps": 4, "log_every": 2, "ckpt_every": 2, "device": "cpu", "seed": 1}
    return apply_overrides(TrainConfig.from_dict(d), [f"{k}={json.dumps(v)}" for k, v in changes.items()])
