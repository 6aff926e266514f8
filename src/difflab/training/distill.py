"""What the few-step losses share: a network as a denoiser at per-sample noise levels, a teacher's
ODE step, the discretisation grids and the pseudo-Huber distance.

Everything runs in the VE form x = x0 + sigma eps (the samplers' form, :mod:`difflab.samplers.denoiser`):
the process's state is x_t = a(sigma) x and its network sees its time t = t_of(sigma). The losses
are :mod:`.consistency` (consistency distillation and training) and :mod:`.progressive`; the run
that trains a student from a teacher is :mod:`.distill_run`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..models.consistency import consistency_coefficients
from ..processes import Process, call_model, convert_prediction
from ..samplers.timesteps import karras_sigmas, timesteps
from ..validation import is_int

TEACHER_SOLVERS = ("euler", "dpm_solver", "heun")  # the teacher's ODE steps of consistency distillation

__all__ = ["TEACHER_SOLVERS", "TeacherDenoiserLoss", "Phased", "same_levels", "denoised", "guided_denoised", "teacher_step",
           "consistency_times", "discretisation_steps", "bucket", "pseudo_huber", "huber_c", "times_of",
           "x0_error_weight"]


def _view(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))


def same_levels(proc: Process, other: Process) -> bool:
    """Whether two processes map times to the same noise levels (a student's and its teacher's:
    their kind and what their networks' time inputs mean; the prediction types may differ)."""
    return (type(proc) is type(other) and proc.network_signature()[2:] == other.network_signature()[2:]
            and proc.sigma_min == other.sigma_min)


def x0_error_weight(prediction: str, sigma: Tensor) -> Tensor:
    """The weight of a student's squared x0 error at level sigma (x = x0 + sigma z): SNR = 1 / sigma^2
    for an eps network, which is its own eps error, ||eps_hat - eps||^2 = ||D_hat - x0||^2 / sigma^2; for v
    and x0 networks SNR + 1 (Salimans & Ho 2022, sec. 4), the v error in x0 terms. An eps network's x0
    error at the DDPM chain's top level is its output's times 1 / a = 2e4, which SNR + 1 would take in full."""
    snr = sigma.double() ** -2
    return (snr if prediction == "eps" else 1 + snr).float()


def times_of(proc: Process, sigma: Tensor) -> Tensor:
    """The process's times at noise levels sigma > 0 [B]: the DDPM chain's integer timesteps where
    the levels lie on its grid (its tables, exactly), else fractional times."""
    t = proc.t_of(sigma.detach().double().cpu())
    if proc.discrete and bool(((t - t.round()).abs() < 1e-6).all()):
        return t.round().long()
    return t


def denoised(model: Callable, proc: Process, x: Tensor, t: Tensor, cond: Optional[Tensor] = None,
             guidance: Optional[Tensor] = None, clip_x0: Optional[float] = None) -> Tensor:
    """D(x, sigma(t)): the network's estimate of x0 at the VE state x and per-sample times t [B] of
    ``proc`` (``model(a x, t)`` read as x0 by the process's prediction type), clamped to [-clip_x0,
    clip_x0] where given. ``guidance`` [B] goes to a network that takes the scale as an input."""
    a, s = (_view(c, x) for c in proc.alpha_sigma(t))  # (where t is: the losses' times live on the CPU)
    t = t.to(x.device)
    x_t = a * x
    inputs = {} if guidance is None else {"guidance": guidance}
    out = call_model(model, x_t, proc.model_time(t), cond, **inputs)
    x0 = convert_prediction(out.to(x.dtype), x_t, a, s, proc.prediction, "x0")
    return x0.clamp(-clip_x0, clip_x0) if clip_x0 is not None else x0


def guided_denoised(model: Callable, proc: Process, x: Tensor, t: Tensor, cond: Optional[Tensor],
                    guidance: Optional[Tensor], clip_x0: Optional[float] = None) -> Tensor:
    """D_w = D(x | null) + w (D(x | c) - D(x | null)) per sample (classifier-free guidance, Ho & Salimans
    2022), one batched call of 2B; ``guidance`` None (or a model without labels): D(x | c) alone."""
    if guidance is None or cond is None:
        return denoised(model, proc, x, t, cond, clip_x0=clip_x0)
    null = torch.full_like(cond, model.num_classes)
    both = denoised(model, proc, torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
    d_cond, d_null = both.chunk(2)
    out = d_null + _view(guidance, x) * (d_cond - d_null)
    return out.clamp(-clip_x0, clip_x0) if clip_x0 is not None else out


def teacher_step(teacher: Callable, proc: Process, x: Tensor, sigma: Tensor, sigma_next: Tensor, solver: str,
                 cond: Optional[Tensor] = None, guidance: Optional[Tensor] = None,
                 clip_x0: Optional[float] = None) -> Tensor:
    """One step of the teacher's probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from
    sigma to sigma_next > 0 (per sample [B]), r = sigma_next / sigma:

        euler       x' = r x + (1 - r) D(x, sigma)                            (DDIM)
        dpm_solver  r x + (1 - r) (D(x, sigma) + D(x', sigma_next)) / 2      (DPM-Solver++(2S) with its
                    second point at the step's end, Lu et al. 2022: second order, and a convex mix
                    of estimates however long the step)
        heun        x + (sigma_next - sigma) (d(x, sigma) + d(x', sigma_next)) / 2, d = (x - D) / sigma
                    (Karras et al. 2022, alg. 1: for short steps; across the DDPM chain's top
                    interval, sigma 2e4 -> 2, its second slope is multiplied by 1e4)

    The last two call the teacher twice. ``guidance`` [B]: the teacher guided at those scales."""
    if solver not in TEACHER_SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(TEACHER_SOLVERS)}, got {solver!r}")
    s, s_next = _view(sigma, x), _view(sigma_next, x)
    r = s_next / s
    d = guided_denoised(teacher, proc, x, times_of(proc, sigma), cond, guidance, clip_x0)
    x_next = r * x + (1 - r) * d
    if solver == "euler":
        return x_next
    d_next = guided_denoised(teacher, proc, x_next, times_of(proc, sigma_next), cond, guidance, clip_x0)
    if solver == "dpm_solver":
        return r * x + (1 - r) * (d + d_next) / 2
    return x + (s_next - s) * ((x - d) / s + (x_next - d_next) / s_next) / 2


def consistency_times(proc: Process, n: int) -> Tensor:
    """The increasing times t_0 < t_1 < ... of a discretisation into n intervals, t_0 at sigma_min
    (the boundary f(x, sigma_min) = x): on the DDPM chain timestep 0 and the trailing timesteps of
    n steps (latent consistency models' skipping-step grid; n intervals, or n - 1 when the grid
    reaches 0); on a continuous process the times of n + 1 rho-7 levels from sigma_min to sigma_max
    (Karras et al. 2022, eq. 5; Song et al. 2023's discretisation)."""
    if not is_int(n) or n < 1:
        raise ValueError(f"the discretisation needs n >= 1 intervals, got {n!r}")
    if proc.discrete:
        ts = timesteps(proc.T, min(int(n), proc.T), "trailing").flip(0)
        return ts if int(ts[0]) == 0 else torch.cat([ts.new_zeros(1), ts])
    sig = karras_sigmas(int(n) + 1, proc.sigma_min, proc.sigma_max).flip(0)
    return proc.t_of(sig)


def discretisation_steps(step: int, total_steps: int, s0: int, s1: int) -> int:
    """N(k) = min(s0 2^floor(k / K'), s1), K' = floor(K / (log2 floor(s1 / s0) + 1)): improved
    consistency training's doubling curriculum (Song & Dhariwal 2023, sec. 3.4; N counts intervals)."""
    per_stage = max(1, math.floor(total_steps / (math.log2(max(1, s1 // s0)) + 1)))
    return int(min(s0 * 2 ** (step // per_stage), s1))


def bucket(levels: Tensor, sigma: Tensor) -> Tensor:
    """The interval i of increasing ``levels`` (sigma_0 < ... < sigma_n) holding each sigma [B],
    sigma_i <= sigma < sigma_{i+1}, clamped to 0 .. n-1. Drawn sigma ~ p gives P(i) = p's mass on
    [sigma_i, sigma_{i+1}): improved consistency training's discrete log-normal for a log-normal p,
    except that p's tails beyond the grid fall in its end intervals (iCT renormalises over the grid
    instead; under EDM with P_mean = -1.1, P_std = 2 the tails hold 0.8% of the mass)."""
    i = torch.searchsorted(levels.to(sigma.device, sigma.dtype), sigma.contiguous(), right=True) - 1
    return i.clamp(0, len(levels) - 2)


def huber_c(dim: int, c: Optional[float] = None) -> float:
    """The pseudo-Huber constant: ``c`` where given, else 0.00054 sqrt(d) (Song & Dhariwal 2023, sec. 3.3)."""
    return float(c) if c is not None else 0.00054 * math.sqrt(dim)


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """d(a, b) = sqrt(||a - b||^2 + c^2) - c per sample [B], the norm over all of a sample's
    dimensions (improved consistency training, sec. 3.3); c = 0: the squared distance ||a - b||^2."""
    sq = ((a.float() - b.float()) ** 2).flatten(1).sum(1)
    if c == 0:
        return sq
    return sq / ((sq + c * c).sqrt() + c)  # = sqrt(sq + c^2) - c, without the cancellation where sq << c^2


class TeacherDenoiserLoss:
    """The student's x0 estimate made the teacher's: E w(sigma) ||D_S(x, sigma) - D_T(x, sigma)||^2 at
    the trainer's levels, x = x0 + sigma z, w = :func:`x0_error_weight` of the student's prediction
    (1 + 1 / sigma^2, the v-prediction loss in x0 terms, for a v or x0 student).

    The first steps of a student whose network predicts v where its teacher's predicted eps
    (``distill.reparam_steps``): the teacher's weights read as v give another denoiser, so the
    student first learns its teacher's in the new parameterisation, then the distillation loss.
    ``boundary`` = (sigma_min, sigma_b) for a consistency student, whose output is
    f = c_skip x + c_out D_S: the target is then c_skip x + c_out D_T, the same function of D."""

    def __init__(self, proc: Process, teacher: Callable, teacher_proc: Process, clip_x0: Optional[float] = None,
                 boundary: Optional[tuple[float, float]] = None) -> None:
        self.proc, self.teacher, self.teacher_proc = proc, teacher, teacher_proc
        self.clip_x0, self.boundary = clip_x0, boundary

    def __call__(self, model: Callable, batch) -> Tensor:
        x0 = batch.x0
        t = batch.t.detach().cpu()
        sigma = self.proc.sigma_of(t).double()
        s = _view(sigma, x0)
        x = x0 + s * batch.noise.to(x0.dtype)
        with torch.no_grad():
            target = denoised(self.teacher, self.teacher_proc, x, times_of(self.teacher_proc, sigma), batch.cond,
                              clip_x0=self.clip_x0)
            if self.boundary is not None:
                c_skip, c_out = consistency_coefficients(s, *self.boundary)
                target = c_skip * x + c_out * target
        estimate = denoised(model, self.proc, x, times_of(self.proc, sigma), batch.cond)
        weight = x0_error_weight(self.proc.prediction, sigma).to(x0.device)
        return (weight * ((estimate.float() - target.float()) ** 2).flatten(1).mean(1)).mean()


class Phased:
    """``first(model, batch)`` for the optimizer steps before ``steps``, then ``then``."""

    def __init__(self, first: Callable, steps: int, then: Callable) -> None:
        self.first, self.steps, self.then = first, int(steps), then

    def __call__(self, model, batch) -> Tensor:
        return (self.first if batch.step < self.steps else self.then)(model, batch)

    def __repr__(self) -> str:
        return f"Phased({self.first!r} for {self.steps} steps, then {self.then!r})"
