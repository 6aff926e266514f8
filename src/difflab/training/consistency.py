"""Consistency losses (Song et al. 2023; Song & Dhariwal 2023): a model f (a ``models.ConsistencyModel``,
f(x, sigma_min) = x) made to give the same x0 at neighbouring levels of one ODE trajectory.

With the discretisation sigma_0 = sigma_min < sigma_1 < ... < sigma_N (:func:`.distill.consistency_times`,
N from the doubling curriculum :func:`.distill.discretisation_steps`), an interval n and z ~ N(0, I):

    distillation (CD):  x = x0 + sigma_{n+1} z,   x_hat = one teacher ODE step from (x, sigma_{n+1}) to sigma_n
                        L = d(f_theta(x, sigma_{n+1}), f_theta-(x_hat, sigma_n))                   (Song et al. eq. 7)
    training (CT):      L = lambda(sigma_n) d(f_theta(x0 + sigma_{n+1} z, sigma_{n+1}), sg f_theta(x0 + sigma_n z, sigma_n))
                        lambda = 1 / (sigma_{n+1} - sigma_n)                    (Song & Dhariwal 2023, eq. 5)

d is the pseudo-Huber distance (:func:`.distill.pseudo_huber`). CD's target network theta- is the
trainer's EMA of the student (``ema.decay`` is the target's mu; ``TrainBatch.ema``); CT's is the
student itself without gradient (improved CT drops the EMA target). The interval n of a sample is
the bucket of the noise level its trainer drew, sigma(batch.t) (:func:`.distill.bucket`): under
EDM with P_mean = -1.1, P_std = 2.0 that is improved CT's discrete log-normal; on the DDPM chain
(t uniform) about uniform.

Guided distillation (latent consistency models, Luo et al. 2023): the teacher's step is guided at a
scale w drawn uniformly from [w_min, w_max] per sample (from the trainer's uniform draw
``batch.u``; labels are never dropped then), and the student and its target take w as an input.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..processes import Process
from .distill import (bucket, consistency_times, denoised, discretisation_steps, huber_c, pseudo_huber, same_levels,
                      teacher_step)
from .loss import TrainBatch, register_loss

__all__ = ["ConsistencyTrainingLoss", "ConsistencyDistillationLoss"]


class _Grid:
    """The discretisation at step k: its times and levels, cached per N."""

    def __init__(self, proc: Process, s0: int, s1: int, total_steps: int, start_step: int = 0) -> None:
        if proc.discrete:
            s1, s0 = min(s1, proc.T), min(s0, proc.T)
        self.proc, self.s0, self.s1 = proc, s0, s1
        self.start, self.total = start_step, max(1, total_steps - start_step)  # the curriculum's own steps
        self._cache: dict = {}

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        n = discretisation_steps(max(0, step - self.start), self.total, self.s0, self.s1)
        if n not in self._cache:
            times = consistency_times(self.proc, n)
            self._cache[n] = (times, self.proc.sigma_of(times).double())
        return self._cache[n]

    def intervals(self, batch: TrainBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(t_n, t_{n+1}, sigma_n, sigma_{n+1}) per sample of the batch, on the CPU."""
        times, levels = self(batch.step)
        drawn = self.proc.sigma_of(batch.t.detach().cpu()).double()
        i = bucket(levels, drawn)
        return times[i], times[i + 1], levels[i], levels[i + 1]


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # (DDP keeps the network as .module)


class ConsistencyTrainingLoss:
    """Improved consistency training from data alone (no teacher): ``loss: consistency``.

    ``proc``: the run's process; ``s0``, ``s1``, ``total_steps``: the curriculum; ``c``: the
    pseudo-Huber constant (None: 0.00054 sqrt(d))."""

    def __init__(self, proc: Process, *, s0: int = 10, s1: int = 1280, total_steps: int, c: Optional[float] = None) -> None:
        self.proc, self.c = proc, c
        self.grid = _Grid(proc, s0, s1, total_steps)

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        t_lo, t_hi, s_lo, s_hi = self.grid.intervals(batch)
        x0, z = batch.x0, batch.noise.to(batch.x0.dtype)
        view = (-1,) + (1,) * (x0.ndim - 1)
        x_hi = x0 + s_hi.to(x0.device, x0.dtype).view(view) * z
        x_lo = x0 + s_lo.to(x0.device, x0.dtype).view(view) * z
        f_hi = denoised(model, self.proc, x_hi, t_hi, batch.cond)
        with torch.no_grad():
            f_lo = denoised(model, self.proc, x_lo, t_lo, batch.cond)
        weight = (1.0 / (s_hi - s_lo)).to(x0.device, torch.float32)
        return (weight * pseudo_huber(f_hi, f_lo, huber_c(x0[0].numel(), self.c))).mean()

    def __repr__(self) -> str:
        return f"ConsistencyTrainingLoss({self.proc!r}, s0={self.grid.s0}, s1={self.grid.s1}, c={self.c})"


class ConsistencyDistillationLoss:
    """Consistency distillation of ``teacher`` (a network under ``teacher_proc``, frozen) into the
    trainer's student under ``proc`` (the same noise levels; the student predicts x0, its network
    wrapped in ``models.ConsistencyModel``).

    ``solver``: the teacher's ODE step (:func:`.distill.teacher_step`: "euler" = DDIM, "dpm_solver",
    "heun"); ``guidance``: None (the teacher conditioned on the batch's labels, dropped ones on the
    null label, as the student sees them) or [w_min, w_max] (guided distillation: w per sample, the
    student's network takes it as an input, the teacher is guided). ``clip_x0``: the range the teacher's x0 estimates are clamped to (its
    sampler's, the data's). The target network is ``batch.ema`` (the trainer's EMA), else the student.
    """

    def __init__(self, proc: Process, teacher: Callable, teacher_proc: Process, *, total_steps: int,
                 s0: int = 10, s1: int = 1280, solver: str = "dpm_solver", guidance: Optional[tuple] = None,
                 c: Optional[float] = None, clip_x0: Optional[float] = None, start_step: int = 0) -> None:
        if not same_levels(proc, teacher_proc):
            raise ValueError(f"the student's process {proc!r} must have the teacher's noise levels "
                             f"({teacher_proc!r}): distill under the teacher's process")
        if guidance is not None:
            lo, hi = (float(w) for w in guidance)
            if not 0 <= lo <= hi or not math.isfinite(hi):
                raise ValueError(f"guidance must be [w_min, w_max] with 0 <= w_min <= w_max, got {guidance!r}")
            if getattr(teacher, "num_classes", None) is None:
                raise ValueError("guided distillation needs a class-conditional teacher (trained with labels and "
                                 "label dropout): this teacher has no labels to guide towards")
            guidance = (lo, hi)
        self.proc, self.teacher, self.teacher_proc = proc, teacher, teacher_proc
        self.solver, self.guidance, self.c, self.clip_x0 = solver, guidance, c, clip_x0
        self.grid = _Grid(proc, s0, s1, total_steps, start_step)
        for p in getattr(teacher, "parameters", lambda: [])():
            p.requires_grad_(False)

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        t_lo, t_hi, s_lo, s_hi = self.grid.intervals(batch)
        x0 = batch.x0
        view = (-1,) + (1,) * (x0.ndim - 1)
        x = x0 + s_hi.to(x0.device, x0.dtype).view(view) * batch.noise.to(x0.dtype)
        w, cond = None, batch.cond
        if self.guidance is not None:
            lo, hi = self.guidance
            w, cond = lo + (hi - lo) * batch.u.to(x0.device, torch.float32), batch.labels
        with torch.no_grad():
            x_hat = teacher_step(self.teacher, self.teacher_proc, x, s_hi, s_lo, self.solver, cond, w, self.clip_x0)
        f = denoised(model, self.proc, x, t_hi, cond, w)
        target = batch.ema if batch.ema is not None else _unwrapped(model)
        was_training = target.training
        target.eval()
        try:
            with torch.no_grad():
                f_target = denoised(target, self.proc, x_hat, t_lo, cond, w)
        finally:
            target.train(was_training)
        return pseudo_huber(f, f_target, huber_c(x0[0].numel(), self.c)).mean()

    def __repr__(self) -> str:
        return (f"ConsistencyDistillationLoss({self.proc!r}, solver={self.solver!r}, guidance={self.guidance}, "
                f"s0={self.grid.s0}, s1={self.grid.s1})")


def _consistency_training(proc: Process, cfg) -> ConsistencyTrainingLoss:
    c = cfg.consistency
    return ConsistencyTrainingLoss(proc, s0=c.s0, s1=c.s1, total_steps=cfg.steps, c=c.huber_c)


register_loss("consistency", _consistency_training)
