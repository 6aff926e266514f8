"""Progressive distillation (Salimans & Ho 2022, algorithm 2): a student that takes one DDIM step
where its teacher took two, so each round halves the steps (64 -> 32 -> ... -> 4).

On the teacher's levels sigma_0 > sigma_1 > ... > sigma_2M = 0 the student's are every second one,
s_i = sigma_2i. For an interval i, x = x0 + s_i z, and two deterministic DDIM steps of the teacher
(in the VE form, x' = D + (sigma' / sigma)(x - D)) through sigma_{2i+1} land at x''. The student's
target is the x0 estimate whose single DDIM step from (x, s_i) lands there too (eq. 8 in VE form):

    x_tilde = (x'' - r x) / (1 - r),     r = s_{i+1} / s_i        (x_tilde = x'' at the last step, r = 0)

and the loss is the squared error of the student's x0 estimate with the "SNR + 1" weight of
sec. 4, w = 1 + 1 / s_i^2 (the v-prediction loss in x0 terms). The paper's student predicts v or
x0: an eps network cannot express x0 where the signal vanishes (the top level), which a 1- to
4-step student must reach in one step. An eps student (a user's choice) gets its own eps error,
w = 1 / s_i^2 (``distill.x0_error_weight``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..processes import Process
from .distill import bucket, denoised, same_levels, times_of, x0_error_weight
from .loss import TrainBatch

__all__ = ["ProgressiveDistillationLoss", "halve"]


def halve(sigmas) -> Tensor:
    """A teacher's levels (decreasing, ending at 0, an even number of steps) -> the student's, every second one."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    steps = len(sig) - 1
    if steps < 2 or steps % 2:
        raise ValueError(f"progressive distillation halves an even number of steps, got {steps} "
                         f"(start from a power of two, e.g. 64 steps)")
    return sig[::2]


class ProgressiveDistillationLoss:
    """One round: the student (the trainer's model, under ``proc``) matches two deterministic DDIM
    steps of ``teacher`` (under ``teacher_proc``, frozen) on the teacher's levels ``teacher_sigmas``
    (decreasing, ending at 0, 2M steps). ``clip_x0``: the range the teacher's x0 estimates are
    clamped to (its sampler's). A sample's interval is the one holding its trainer-drawn level."""

    def __init__(self, proc: Process, teacher: Callable, teacher_proc: Process, teacher_sigmas,
                 clip_x0: Optional[float] = None) -> None:
        if not same_levels(proc, teacher_proc):
            raise ValueError(f"the student's process {proc!r} must have the teacher's noise levels "
                             f"({teacher_proc!r}): distil under the teacher's process")
        self.teacher_sigmas = torch.as_tensor(teacher_sigmas, dtype=torch.float64)
        self.sigmas = halve(self.teacher_sigmas)
        if float(self.teacher_sigmas[0]) > teacher_proc.sigma_max * (1 + 1e-6):
            raise ValueError(f"the teacher's levels reach {float(self.teacher_sigmas[0]):.4g}, above its process's "
                             f"sigma_max = {teacher_proc.sigma_max:.4g}")
        self.proc, self.teacher, self.teacher_proc, self.clip_x0 = proc, teacher, teacher_proc, clip_x0
        self._increasing = self.sigmas.flip(0)  # 0 = s_n < s_{n-1} < ... < s_0, for the bucket of a drawn level
        for p in getattr(teacher, "parameters", lambda: [])():
            p.requires_grad_(False)

    @property
    def steps(self) -> int:
        """The student's steps."""
        return len(self.sigmas) - 1

    def _ddim(self, x: Tensor, sigma: Tensor, sigma_next: Tensor, cond) -> Tensor:
        d = denoised(self.teacher, self.teacher_proc, x, times_of(self.teacher_proc, sigma), cond,
                     clip_x0=self.clip_x0)
        view = (-1,) + (1,) * (x.ndim - 1)
        ratio = (sigma_next / sigma).to(x.device, x.dtype).view(view)
        return d + ratio * (x - d)

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        n = self.steps
        drawn = self.proc.sigma_of(batch.t.detach().cpu()).double()
        # the interval holding the drawn level, s_{i+1} <= drawn < s_i, counted from the top (draws above
        # s_0 = sigma_max fall in the first): on the DDPM chain, uniform t, each interval alike
        i = (n - 1) - bucket(self._increasing, drawn)
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        s_mid = self.teacher_sigmas[2 * i + 1]
        x0 = batch.x0
        view = (-1,) + (1,) * (x0.ndim - 1)
        x = x0 + s.to(x0.device, x0.dtype).view(view) * batch.noise.to(x0.dtype)
        with torch.no_grad():
            x_mid = self._ddim(x, s, s_mid, batch.cond)
            x_end = self._ddim(x_mid, s_mid, s_next, batch.cond)
            r = (s_next / s).to(x0.device, x0.dtype).view(view)
            target = (x_end - r * x) / (1 - r)
        estimate = denoised(model, self.proc, x, times_of(self.proc, s), batch.cond)
        weight = x0_error_weight(self.proc.prediction, s).to(x0.device)
        return (weight * ((estimate.float() - target.float()) ** 2).flatten(1).mean(1)).mean()

    def __repr__(self) -> str:
        return f"ProgressiveDistillationLoss({self.proc!r}, {2 * self.steps} -> {self.steps} steps)"
