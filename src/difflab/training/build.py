"""From a config to objects: the network and the diffusion process it is trained under."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .. import models, schedules
from ..data.registry import DATA_RANGE
from ..diffusion import GaussianDiffusion
from .config import TrainConfig

__all__ = ["build_model", "build_process", "data_range"]


def build_model(cfg: TrainConfig) -> nn.Module:
    """``dl.models.build(cfg.model.name, **cfg.model.kwargs)``, checked against the config.

    A constructor that rejects its arguments (a wrong type, a value out of range) becomes a
    ValueError naming ``model.kwargs``, the model and the kwargs, with the constructor's message."""
    try:
        model = models.build(cfg.model.name, **cfg.model.kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"config field 'model.kwargs': model {cfg.model.name!r} cannot be built from "
            f"{cfg.model.kwargs!r}: {err}. Check the names, types (integers where sizes are meant) "
            "and ranges of its arguments"
        ) from None
    nc = cfg.model.kwargs.get("num_classes")
    if nc is not None and getattr(model, "num_classes", None) != nc:
        raise ValueError(f"model {cfg.model.name!r} was given num_classes={nc} but has "
                         f"num_classes={getattr(model, 'num_classes', None)}")
    return model


def build_process(cfg: TrainConfig) -> GaussianDiffusion:
    d = cfg.diffusion
    try:
        schedule = schedules.get(d.schedule, d.T, **d.schedule_kwargs)
    except TypeError as err:
        raise TypeError(f"config field diffusion.schedule_kwargs: {err}") from None
    return GaussianDiffusion(schedule, prediction=d.prediction, clip_x0=data_range(cfg))


def data_range(cfg: TrainConfig) -> Optional[float]:
    """The range |x0| <= c the run's samplers clip their x0 estimates to by default: the config's
    ``sample.clip_x0`` where set, else the range of its data (every image data set: [-1, 1]; the
    2D toy sets: unbounded)."""
    if cfg.sample.clip_x0 is not None:
        return cfg.sample.clip_x0
    return None if cfg.data.name == "toy2d" else DATA_RANGE
