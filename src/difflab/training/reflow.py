"""Reflow: straighten a trained flow by training on its own (noise, sample) pairs.

Rectified flow (Liu et al. 2022, "Flow straight and fast", sec. 2.2-2.3). A flow v trained on
independent pairs (Z_0, Z_1) ~ data x N(0, I) moves noise to data along curved paths: its ODE
dZ_t/dt = v(Z_t, t), solved from Z_1 = noise at t = 1 to t = 0, crosses where the straight
interpolations of the independent pairs crossed. Its own pairs (ODE solution Z_0, noise Z_1)
are a deterministic coupling of the same two distributions with no such crossings, and the flow
matching the straight paths between them -- the 2-rectified flow -- is straighter, so fewer
steps integrate it (1-step samples become usable). Repeating gives the k-rectified flow.

    generate_pairs    noise Z_1 and the sample Z_0 = ODE(Z_1) of a trained flow
    ReflowLoss        the flow-matching loss with each sample's own noise, E_t ||v(x_t, t) - (Z_1 - Z_0)||^2,
                      x_t = (1 - t) Z_0 + t Z_1, for the trainer (``Trainer(data=(Z_0, labels), loss_fn=...)``)
    straightness      S(Z) = int_0^1 E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt along the flow's ODE (Liu et al., sec. 2.3)

The whole step on a run folder (``difflab reflow``) is :func:`difflab.training.reflow_run.reflow`.

In this library's time (:class:`~difflab.processes.FlowMatching`): x_t = (1 - t) x0 + t eps, t = 1
is noise, and the network's velocity is u = eps - x0 = dx_t/dt. The samplers run in the VE form
x = x_t / (1 - t) with sigma = t / (1 - t) on the denoised estimate D(x_t, t) ~ E[x0 | x_t]; the
velocity at a step follows from the state and D as u = (x_t - D) / t (from x_t = (1 - t) D + t eps_hat),
whatever the network's prediction type.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..processes import FlowMatching, Process, check_weighting
from ..samplers import sample as dl_sample
from ..validation import NOISE_FIX, check_finite, check_labels, float_input, is_int, is_real, positive_int
from .loss import TrainBatch

__all__ = ["generate_pairs", "straightness", "ReflowLoss", "check_flow"]



def check_flow(proc: Process, what: str) -> FlowMatching:
    """``proc`` if it is a flow (FlowMatching), else a TypeError naming the process."""
    if not isinstance(proc, FlowMatching):
        raise TypeError(f"{what} needs a flow (a FlowMatching process, config diffusion.process: flow), "
                        f"got {proc!r}: reflow straightens the ODE paths of a flow-matching model")
    return proc


def _check_noise(noise: Tensor, model: Callable) -> Tensor:
    if not isinstance(noise, Tensor) or noise.ndim < 2 or noise.shape[0] < 1:
        raise ValueError(f"noise must be a float tensor [n, ...] of standard normal draws, got "
                         f"{getattr(noise, 'shape', type(noise).__name__)}; {NOISE_FIX}")
    noise = float_input(noise, "noise", model, NOISE_FIX)
    return check_finite(noise, "noise", NOISE_FIX)


def _chunks(n: int, batch_size: int) -> Sequence[slice]:
    return [slice(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]


@torch.no_grad()
def generate_pairs(
    model: Callable,
    proc: Process,
    n: int,
    shape: Sequence[int],
    *,
    sampler: str = "euler",
    steps: int = 100,
    cond=None,
    guidance: float = 1.0,
    generator: Optional[torch.Generator] = None,
    batch_size: int = 500,
    device=None,
    **options,
) -> tuple[Tensor, Tensor]:
    """n pairs (Z_1, Z_0) of a trained flow: noise Z_1 ~ N(0, I) of shape [n, *shape] and the
    sample Z_0 its ODE gives, ``dl.sample(model, proc, ..., sampler, steps, noise=Z_1)``.

    The noise is drawn on the CPU from ``generator`` (float32; the same pairs on every device),
    the samples computed ``batch_size`` at a time on ``device`` (default: the model's) and
    returned on the CPU. ``cond``: None, one label or n labels of a class-conditional model; the
    pairs belong to those labels (train the next flow with the same labels, ``guidance`` as the
    pairs were drawn). ``options`` go to ``dl.sample`` (e.g. ``clip_x0``); the noise levels are
    the flow's own spacing, equal steps in t (Euler's method on dx/dt = v in t), unless ``spacing``,
    ``sigmas`` or ``timesteps`` say otherwise. Liu et al. solve the ODE accurately (RK45); Euler's
    default 100 steps is the cheap version.
    """
    check_flow(proc, "generate_pairs")
    n = positive_int("n (the number of pairs)", n)
    batch_size = positive_int("batch_size", batch_size)
    entries = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else ()
    if not entries or not all(is_int(s) and s >= 1 for s in entries):
        raise ValueError(f"shape must be one sample's shape (without the batch), e.g. (2,) or (1, 28, 28), "
                         f"got {shape!r}")
    cond = check_labels(model, cond, n)
    if not {"spacing", "sigmas", "timesteps"} & set(options):
        options["spacing"] = proc.default_spacing
    noise = torch.randn((n, *map(int, entries)), generator=generator, dtype=torch.float32)
    samples = torch.empty_like(noise)
    for part in _chunks(n, batch_size):
        x = dl_sample(model, proc, noise[part].shape, sampler, steps, cond=None if cond is None else cond[part],
                      guidance=guidance, noise=noise[part], device=device, **options)
        samples[part] = x.float().cpu()
    return noise, samples


@torch.no_grad()
def straightness(
    model: Callable,
    proc: Process,
    noise: Tensor,
    steps: int = 100,
    cond=None,
    guidance: float = 1.0,
    *,
    batch_size: int = 500,
    device=None,
    **options,
) -> float:
    """Liu et al. (2022)'s straightness of the flow's ODE paths from ``noise``,

        S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ_t/dt ||^2 dt,

    0 exactly when every path is a straight line run at constant speed (then dZ_t/dt = Z_1 - Z_0).
    Estimated on the Euler solution with ``steps`` equal steps in t (the "uniform" spacing, from
    t_max to t_min, then to 0): with t_0 > t_1 > ... > t_N = 0, the velocity u_i = (x_i - D_i) / t_i
    at step i (state x_i, denoised estimate D_i) and the path's mean velocity
    Delta = (x_0 - x_N) / t_0 (from its first state to its sample),

        S_hat = (1 / t_0) sum_i (t_i - t_{i+1}) E || Delta - u_i ||^2,

    the time average of the squared deviation from the straight path -- the exact straightness of
    the Euler polyline (whose velocity is u_i on [t_{i+1}, t_i]), which tends to S(Z) as steps grow.
    The norm is the total over a sample's dimensions (Liu et al.'s ||.||^2), the mean over the noise
    draws. ``noise`` [n, ...] are standard normal draws as ``dl.sample(noise=...)`` takes them;
    ``cond``: None, one label or n labels; ``options`` go to ``dl.sample`` (e.g. ``clip_x0``).
    """
    check_flow(proc, "straightness")
    noise = _check_noise(noise, model)
    batch_size = positive_int("batch_size", batch_size)
    if not is_real(guidance):
        raise TypeError(f"guidance must be a number (1: no guidance), got {type(guidance).__name__}")
    for name in ("sampler", "spacing", "sigmas", "timesteps"):
        if name in options:
            raise ValueError(f"straightness runs Euler steps equally spaced in t; it takes no {name!r}")
    cond = check_labels(model, cond, noise.shape[0])
    total = 0.0
    for part in _chunks(noise.shape[0], batch_size):
        part_cond = None if cond is None else cond[part]
        total += float(_straightness_sum(model, proc, noise[part], steps, part_cond, guidance, device, options))
    return total / noise.shape[0]


def _straightness_sum(model, proc: FlowMatching, noise: Tensor, steps: int, cond: Optional[Tensor],
                      guidance: float, device, options: dict) -> Tensor:
    """sum over the batch of S_hat (see :func:`straightness`), float64."""
    times: list[float] = []
    velocities: list[Tensor] = []
    first: list[Tensor] = []

    def record(step: dict) -> None:  # dl.sample's callback: the flow's state x_t, its D, sigma
        t = float(proc.t_of(torch.tensor(float(step["sigma"]), dtype=torch.float64)))
        x_t = step["x"].double()
        if not first:
            first.append(x_t)
        times.append(t)
        velocities.append((x_t - step["denoised"].double()) / t)

    end = dl_sample(model, proc, noise.shape, "euler", steps, cond=cond, guidance=guidance, noise=noise,
                    device=device, spacing="uniform", callback=record, **options).double()
    times.append(0.0)
    t0 = times[0]
    delta = (first[0] - end) / t0
    out = torch.zeros((), dtype=torch.float64, device=end.device)
    for i, u in enumerate(velocities):
        out += (times[i] - times[i + 1]) * ((delta - u) ** 2).flatten(1).sum(1).sum()
    return out / t0


class ReflowLoss:
    """The flow-matching loss on fixed pairs: each sample Z_0 (the trainer's ``batch.x0``) with
    its own noise Z_1 = ``noise[batch.index]`` instead of a fresh draw,

        E_t w(t) || v(x_t, t) - (Z_1 - Z_0) ||^2,     x_t = (1 - t) Z_0 + t Z_1

    (Liu et al. 2022, eq. 1 on the coupling (Z_0, Z_1) of :func:`generate_pairs`), through
    ``proc.training_loss`` with the trainer's times t and labels. ``noise`` [N, ...] is indexed by
    the dataset index: train with ``Trainer(cfg, out, data=(samples, labels), loss_fn=ReflowLoss(proc,
    noise))``, the samples in the order ``generate_pairs`` returned them. The pairs are the coupling,
    so the process must pair as given (``coupling="independent"``): minibatch OT would re-pair them.
    """

    def __init__(self, proc: Process, noise: Tensor, weighting=None) -> None:
        check_flow(proc, "ReflowLoss")
        if proc.coupling != "independent":
            raise ValueError(f"ReflowLoss trains on the pairs as given, but the process re-pairs noise and data "
                             f"(coupling={proc.coupling!r}); build the flow with coupling='independent' "
                             "(config diffusion.process_kwargs.coupling: independent): the pairs are the coupling")
        if not isinstance(noise, Tensor) or noise.ndim < 2 or not noise.is_floating_point():
            raise ValueError(f"noise must be a float tensor [N, ...], the pairs' noise from generate_pairs, got "
                             f"{getattr(noise, 'shape', type(noise).__name__)}")
        check_weighting(weighting)
        self.proc, self.weighting = proc, weighting
        self.noise = check_finite(noise.detach(), "noise", NOISE_FIX)
        self._on: dict = {}  # noise per device, copied once

    def _noise_on(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._on:
            self._on[key] = self.noise.to(device)
        return self._on[key]

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        index = batch.index
        # (values read on the CPU only, and not under torch.compile: no host-device sync, no graph break)
        if index.device.type == "cpu" and not torch.compiler.is_compiling() and index.numel() \
                and int(index.max()) >= len(self.noise):
            raise ValueError(f"ReflowLoss holds {len(self.noise)} noise draws but the batch has dataset index "
                             f"{int(index.max())}: train on the pairs' samples (as many, in generate_pairs' order)")
        noise = self._noise_on(index.device)[index].to(batch.x0.device)
        if noise.shape != batch.x0.shape:
            raise ValueError(f"the pairs' noise has shape {tuple(noise.shape[1:])} per sample, the data "
                             f"{tuple(batch.x0.shape[1:])}: train on the pairs' samples as generate_pairs returned them")
        return self.proc.training_loss(model, batch.x0, batch.cond, t=batch.t, noise=noise,
                                       weighting=self.weighting)

    def __repr__(self) -> str:
        return f"ReflowLoss({self.proc!r}, {len(self.noise)} pairs, weighting={self.weighting!r})"


# ----------------------------------------------------------------------------- a run folder
