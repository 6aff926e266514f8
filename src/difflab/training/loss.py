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

import torch
from torch import Tensor, nn

from ..models.masked import WithKnown
from ..models.superres import WithLowRes, downsample
from ..processes import Process, call_model, check_weighting
from ..validation import is_int, is_real
from .data import mix_seed

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["TrainBatch", "DiffusionLoss", "SuperResLoss", "MaskedLoss", "MASK_TASKS", "task_mask", "LossFn", "register_loss", "loss_names", "build_loss"]


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


# ---------------------------------------------------------------------------- mask-conditioned models
MASK_TASKS = ("prediction", "interpolation", "box", "nothing")
_MASK_STREAM = 0x3A5C  # the masks' own stream of draws, apart from the trainer's (t, u, noise)


def task_mask(frames: int, height: int, width: int, generator: torch.Generator,
              probs: tuple = (0.35, 0.3, 0.2, 0.15)) -> tuple[str, Tensor]:
    """(task, m [frames, 1, height, width]): one clip's training mask, 1 = generate, 0 = given.

    The task is drawn with ``probs`` over :data:`MASK_TASKS`, then its mask:

    - prediction: the first k frames given, k uniform on 1 .. T-1;
    - interpolation: with probability 1/2 the first and last frames given, else a random subset
      of g frames, g uniform on 1 .. T-1 (at least one frame generated, at least one given);
    - box: a rectangle of h x w pixels (each uniform on size/4 .. 3 size/4, placed uniformly)
      generated in every frame (video inpainting);
    - nothing: nothing given (unconditional generation, so the network still samples alone).

    Every draw comes from ``generator``, so the mask is a function of its seed.
    """
    T, H, W = frames, height, width
    c = torch.tensor(probs, dtype=torch.float64).cumsum(0)
    task = MASK_TASKS[min(int((torch.rand((), generator=generator, dtype=torch.float64) * c[-1] >= c).sum()),
                          len(MASK_TASKS) - 1)]
    m = torch.ones(T, 1, H, W)
    if task == "prediction":
        k = int(torch.randint(1, T, (), generator=generator))
        m[:k] = 0
    elif task == "interpolation":
        if float(torch.rand((), generator=generator)) < 0.5:
            m[0], m[T - 1] = 0, 0
        else:
            g = int(torch.randint(1, T, (), generator=generator))
            m[torch.randperm(T, generator=generator)[:g]] = 0
    elif task == "box":
        h = int(torch.randint(max(1, H // 4), max(1, 3 * H // 4) + 1, (), generator=generator))
        w = int(torch.randint(max(1, W // 4), max(1, 3 * W // 4) + 1, (), generator=generator))
        top = int(torch.randint(0, H - h + 1, (), generator=generator))
        left = int(torch.randint(0, W - w + 1, (), generator=generator))
        m.zero_()
        m[:, :, top:top + h, left:left + w] = 1
    return task, m


class MaskedLoss:
    """The trainer's loss for a mask-conditioned model (:mod:`difflab.models.masked`): each clip
    gets a mask m of a task drawn from a mix (:func:`task_mask`), the network sees x_t, the given
    data (1 - m) x0 and m, and regresses the process's target on the generated part only:

        L = E_{x0, m, t, eps} w(t) sum(m * (model(x_t, t, c; (1 - m) x0, m) - target)^2) / sum(m)

    Each clip's squared error is averaged over its generated pixels (m = 1) alone, so the given
    part carries no loss (the network is not asked to reproduce what it is handed) and every clip
    counts as one draw of its task whatever its share of given pixels: a prediction of 1 frame from
    7 weighs as much as an unconditional clip, the mix's probabilities are the tasks' weights. With
    nothing given (m = 1) it is the process's own loss (``Process.training_loss``).

    The masks are drawn per clip from a generator seeded by (``seed``, step, the clip's dataset
    index), as the trainer draws the rest of a step (:mod:`difflab.training.trainer`): a resumed
    or multi-process run draws the same masks.
    """

    def __init__(self, proc: Process, seed: int = 0, probs: tuple = (0.35, 0.3, 0.2, 0.15), weighting=None) -> None:
        if not is_int(seed):
            raise ValueError(f"seed must be an integer (the config's seed), got {seed!r}")
        probs = tuple(probs)
        if len(probs) != len(MASK_TASKS) or not all(is_real(p) and p >= 0 for p in probs) or sum(probs) <= 0:
            raise ValueError(f"probs must be {len(MASK_TASKS)} non-negative numbers, the weights of the tasks "
                             f"{', '.join(MASK_TASKS)}, not all zero; got {probs!r}")
        check_weighting(weighting)  # now, not at the first call after a forward pass
        self.proc, self.seed, self.weighting = proc, int(seed), weighting
        self.probs = tuple(float(p) / sum(probs) for p in probs)

    def masks(self, x0: Tensor, step: int, index: Tensor) -> Tensor:
        """[B, T, 1, H, W]: the masks of clips ``x0`` [B, T, C, H, W] at optimizer step ``step``,
        clip i's from (seed, step, index[i])."""
        if not isinstance(x0, Tensor) or x0.ndim != 5 or x0.shape[1] < 2:
            raise ValueError(f"the masked loss draws space-time masks for clips [B, T, C, H, W] of 2 or more "
                             f"frames (prediction, interpolation, a box in every frame), got data of shape "
                             f"{tuple(getattr(x0, 'shape', ()))}")
        T, H, W = x0.shape[1], x0.shape[3], x0.shape[4]
        g = torch.Generator()
        out = [task_mask(T, H, W, g.manual_seed(mix_seed(self.seed, _MASK_STREAM, int(step), int(i))), self.probs)[1]
               for i in index.tolist()]
        return torch.stack(out).to(x0.device, x0.dtype)

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        x0, t, noise = batch.x0, batch.t, batch.noise
        m = self.masks(x0, batch.step, batch.index)
        x_t = self.proc.q_sample(x0, t, noise)
        out = call_model(WithKnown(model, x0, m), x_t, self.proc.model_time(t), batch.cond)
        err = (out.float() - self.proc.target(x0, noise, t).float()) ** 2
        m = m.float().expand_as(err).flatten(1)
        per_sample = (m * err.flatten(1)).sum(1) / m.sum(1) * self.proc.loss_weight(t, self.weighting)
        return per_sample.mean()

    def __repr__(self) -> str:
        return (f"MaskedLoss({self.proc!r}, seed={self.seed}, probs={self.probs!r}, "
                f"weighting={self.weighting!r})")


def _masked_loss(proc: Process, cfg) -> MaskedLoss:
    if cfg.model.name != "masked":
        raise ValueError(f"config field 'loss' is 'masked' but model.name is {cfg.model.name!r}: the masked loss "
                         "needs model 'masked' (configs/moving_digits_masked.yaml)")
    if cfg.diffusion.process == "edm":
        raise ValueError("config field 'loss' is 'masked' under diffusion.process 'edm': EDM's preconditioning "
                         "(models.EDMPrecond) does not pass the model its known data and mask; use ddpm, vp, ve "
                         "or flow")
    if cfg.diffusion.process_kwargs.get("coupling") == "ot":
        raise ValueError("config field 'loss' is 'masked' with diffusion.process_kwargs.coupling 'ot': the "
                         "optimal-transport pairing would re-pair the noise of clips whose masks are drawn per "
                         "clip; use coupling 'independent'")
    if cfg.cuda_graph:
        raise ValueError("config field 'loss' is 'masked' with cuda_graph: true: its masks are drawn on the host "
                         "every step from the step and the clips' indices, which a captured step cannot replay; "
                         "use cuda_graph: false")
    return MaskedLoss(proc, cfg.seed, weighting=cfg.diffusion.weighting)


# A config's ``loss`` field names one of these: factory(proc, cfg) -> loss_fn.
_LOSSES: dict[str, Callable[[Process, "TrainConfig"], LossFn]] = {
    "diffusion": lambda proc, cfg: DiffusionLoss(proc, cfg.diffusion.weighting),
    "superres": _superres_loss,
    "masked": _masked_loss,
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
