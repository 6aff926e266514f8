"""The web tests' model: a class-conditional MLP on scikit-learn's 8x8 digits, trained for 400
steps (about 2 s on one core), enough that its samples of a class look like that class (their
correlation with the class's mean digit is about 0.6, against about 0.4 with the other classes'
means and 0 for noise), so the page's images can be told from blank or noisy ones."""

import pytest

import difflab as dl
from difflab.training.config import TrainConfig
from difflab.training.trainer import Trainer


@pytest.fixture(scope="session")
def digits_run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("web") / "digits"
    cfg = TrainConfig.from_dict({
        "model": {"name": "mlp", "kwargs": {"dim": 64, "width": 128, "depth": 2, "num_classes": 10}},
        "diffusion": {"schedule": "cosine", "T": 100}, "data": {"name": "digits", "flatten": True},
        "optim": {"lr": 2e-3, "warmup_steps": 20}, "ema": {"decay": 0.95, "warmup": 2},
        "sample": {"every": -1, "clip_x0": 1.0}, "batch_size": 64, "steps": 400, "device": "cpu",
        "cond_drop_prob": 0.1, "log_every": 400, "ckpt_every": 400, "tensorboard": False, "seed": 0,
    })
    Trainer(cfg, out, progress=False).train()
    return out


@pytest.fixture(scope="session")
def digits_run(digits_run_dir):
    return dl.load(digits_run_dir)


@pytest.fixture(scope="session")
def clip_run_dir(tmp_path_factory):
    """A class-conditional video network (video_unet_tiny: clips of 8 frames of 16x16) after two
    steps on moving digits: the clips' pixels don't matter, their shape and path through the page do."""
    out = tmp_path_factory.mktemp("web") / "moving"
    cfg = TrainConfig.from_dict({
        "model": {"name": "video_unet_tiny", "kwargs": {"num_classes": 10}},
        "diffusion": {"schedule": "cosine", "T": 100},
        "data": {"name": "moving_digits", "kwargs": {"n": 16, "frames": 8, "canvas": 16, "source": "digits"}},
        "sample": {"every": -1}, "batch_size": 4, "steps": 2, "ckpt_every": 2, "device": "cpu", "tensorboard": False,
    })
    Trainer(cfg, out, progress=False).train()
    return out
