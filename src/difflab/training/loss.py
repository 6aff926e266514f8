"""What the trainer minimises: any ``loss_fn(model, batch) -> scalar``.

The trainer draws every random quantity of a step itself (timesteps, noise, label dropout) as a
function of (seed, step, global sample index) and hands them over in a :class:`TrainBatch`; a
loss uses the draws it needs. The default, :class:`DiffusionLoss`, is the process's regression
loss (``Process.training_loss``; for DDPM L_simple or a weighting, Ho et al. 2020 eq. 14):

    E_{x0, t, eps} w(t) || model(a(t) x0 + s(t) eps, t, c) - target ||^2

for any process of :mod:`difflab.processes` (x_t = a(t) x0 + s(t) eps in its own time t; flow
matching with ``coupling="ot"`` re-pairs the batch's noise to its data inside the loss).

with c the class label, replaced by the null label with probability ``cond_drop_prob`` (the
trainer applies this dropout -- the same Bernoulli(p) as ``training_loss(cond_drop_prob=p)``,
but drawn per global sample index so that multi-process and resumed runs agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from torch import Tensor, nn

from ..processes import Process, check_weighting
from ..models.superres import WithLowRes, downsample
from ..validation import is_int

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["TrainBatch", "DiffusionLoss", "SuperResLoss", "LossFn", "register_loss", "loss_names", "build_loss"]


@dataclass
class TrainBatch:
    """One micro-batch and its random draws.

    ``x0``: data [B, ...]; ``labels``: the true labels (or None); ``cond``: the labels after
    label dropout (null label = num_classes), what the model should see; ``t``: [B] the process's
    own training times (``proc.training_times``: long, uniform on 0..T-1, for the DDPM chain;
    float otherwise, e.g. EDM's sigma); ``noise``: standard normal, x0's shape; ``u``: uniform [B] on [0, 1)
    (the draw that decided label dropout, u < p); ``step``: the optimizer step (0-based);
    ``index``: the samples' dataset indices; ``ema``: the trainer's EMA of the model (a target
    network for the losses that use one, e.g. consistency distillation).
    """

    x0: Tensor
    cond: Optional[Tensor]
    labels: Optional[Tensor]
    t: Tensor
    noise: Tensor
    u: Tensor
    step: int
    index: Tensor
    ema: Optional[nn.Module] = None


LossFn = Callable[[nn.Module, TrainBatch], Tensor]


class DiffusionLoss:
    """``proc.training_loss`` on the trainer's draws: mean of w(t) ||model(x_t, t, c) - target||^2."""

    def __init__(self, proc: Process, weighting=None) -> None:
        check_weighting(weighting)  # a bad weighting (e.g. 'min_snr_-5') fails here, before training starts
        self.proc, self.weighting = proc, weighting

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        return self.proc.training_loss(model, batch.x0, batch.cond, t=batch.t, noise=batch.noise,
                                       weighting=self.weighting)

    def __repr__(self) -> str:
        return f"DiffusionLoss({self.proc!r}, weighting={self.weighting!r})"


class SuperResLoss:
    """The trainer's loss for a super-resolution model (:mod:`difflab.models.superres`):
    ``proc.training_loss`` on x0 = the batch's images with ``lowres = downsample(x0, scale)``,

        E_{x0, t, eps} || model(a(t) x0 + s(t) eps, t, lowres=down(x0)) - target ||^2."""

    def __init__(self, proc: Process, scale: int = 2, weighting=None) -> None:
        if not is_int(scale) or scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale!r}")
        check_weighting(weighting)  # now, not at the first call after a forward pass
        self.proc, self.scale, self.weighting = proc, int(scale), weighting

    def __call__(self, model: nn.Module, batch) -> Tensor:
        lowres = downsample(batch.x0, self.scale)
        return self.proc.training_loss(WithLowRes(model, lowres), batch.x0, batch.cond, t=batch.t,
                                       noise=batch.noise, weighting=self.weighting)

    def __repr__(self) -> str:
        return f"SuperResLoss({self.proc!r}, scale={self.scale}, weighting={self.weighting!r})"


def _superres_loss(proc: Process, cfg) -> SuperResLoss:
    if cfg.model.name != "superres":
        raise ValueError(f"config field 'loss' is 'superres' but model.name is {cfg.model.name!r}: "
                         "the super-resolution loss needs model 'superres'")
    return SuperResLoss(proc, cfg.model.kwargs.get("scale", 2), weighting=cfg.diffusion.weighting)


# A config's ``loss`` field names one of these: factory(proc, cfg) -> loss_fn.
_LOSSES: dict[str, Callable[[Process, "TrainConfig"], LossFn]] = {
    "diffusion": lambda proc, cfg: DiffusionLoss(proc, cfg.diffusion.weighting),
    "superres": _superres_loss,
}


def register_loss(name: str, factory: Callable[[Process, "TrainConfig"], LossFn]) -> None:
    """Make ``loss: name`` in a config build ``factory(proc, cfg)``."""
    _LOSSES[name] = factory


def loss_names() -> list[str]:
    return sorted(_LOSSES)


def build_loss(proc: Process, cfg: "TrainConfig") -> LossFn:
    """The loss a config asks for (its ``loss`` field)."""
    if cfg.loss not in _LOSSES:
        raise ValueError(f"config field 'loss': got {cfg.loss!r}; choose one of {', '.join(loss_names())}")
    return _LOSSES[cfg.loss](proc, cfg)
