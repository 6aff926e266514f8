"""From a config to objects: the network and the diffusion process it is trained under."""

from __future__ import annotations

from torch import nn

from .. import models, schedules
from ..diffusion import GaussianDiffusion
from .config import TrainConfig

__all__ = ["build_model", "build_process"]


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
    return GaussianDiffusion(schedule, prediction=d.prediction)
