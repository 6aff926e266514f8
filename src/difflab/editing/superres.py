"""Super-resolution sampling: x0 ~ p(x0 | y) for a low-resolution image y.

The network is :class:`difflab.models.superres.LowResConditioned` (SR3-style: y upsampled and
concatenated to x_t as input channels), trained by the ordinary trainer with
:class:`difflab.training.loss.SuperResLoss` (``loss: superres`` in the config:
``difflab train --config configs/mnist_superres.yaml``). :func:`upscale` binds y to the model
(:class:`~difflab.models.superres.WithLowRes`) and runs any sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..processes import Process
from ..models.superres import UPSAMPLE_MODES, LowResConditioned, WithLowRes, downsample, lowres_model, upsample
from ..samplers import sample
from ..training.config import TrainConfig, load_config
from ..training.loss import SuperResLoss
from ..training.trainer import Trainer
from ._common import check_cond, check_image, model_device

__all__ = ["LowResConditioned", "WithLowRes", "SuperResLoss", "downsample", "upsample", "upscale",
           "train_superres", "lowres_model", "UPSAMPLE_MODES"]


@torch.no_grad()
def upscale(
    model: Callable,
    proc: Process,
    lowres: Tensor,
    sampler: str = "ddim",
    steps: int = 50,
    *,
    eta: float = 0.0,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
    **kwargs,
) -> Tensor:
    """Sample high-resolution images x0 ~ p(x0 | lowres) from a :class:`LowResConditioned` model.

    ``lowres`` [B, C, h, w] in [-1, 1]; returns [B, C, scale h, scale w]. The other arguments
    are those of :func:`difflab.sample` (``noise`` has the output's shape; ``clip_x0=1`` clamps
    the x0 estimates to the image range).
    """
    sr = lowres_model(model)
    if sr is None:
        raise ValueError(
            f"upscale needs a super-resolution model conditioned on low-resolution images; this "
            f"{type(model).__name__} takes x_t alone. Train one with configs/mnist_superres.yaml "
            "(`difflab train --config configs/mnist_superres.yaml --out RUN`)"
        )
    lowres = check_image(lowres, "lowres")
    if lowres.ndim != 4 or lowres.shape[1] != sr.image_channels:
        raise ValueError(f"lowres must be images [B, {sr.image_channels}, h, w], got shape {tuple(lowres.shape)}")
    device = model_device(model, lowres)
    lowres = lowres.to(device)
    B, C, h, w = lowres.shape
    shape = (B, C, h * sr.scale, w * sr.scale)
    cond = check_cond(model, cond, B, device)
    bound = WithLowRes(model, lowres)
    return sample(bound, proc, shape, sampler, steps, eta, cond=cond, guidance=guidance, noise=noise,
                  generator=generator, device=device, progress=progress, **kwargs)


def train_superres(
    config,
    out: Union[str, Path],
    *,
    resume: bool = False,
    data=None,
    progress: bool = True,
) -> dict:
    """Train a super-resolution config (model ``superres``) with the ordinary trainer and
    :class:`SuperResLoss` (``loss: superres``); returns the trainer's summary.
    ``config``: a file or a TrainConfig. Same as ``difflab train`` with ``loss: superres``."""
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    if cfg.model.name != "superres":
        raise ValueError(
            f"config field 'model.name' is {cfg.model.name!r}; a super-resolution run needs model "
            "'superres' (see configs/mnist_superres.yaml)"
        )
    trainer = Trainer(cfg.replace(loss="superres"), out, data=data, resume=resume, progress=progress)
    try:
        return trainer.train()
    finally:
        trainer.close()
