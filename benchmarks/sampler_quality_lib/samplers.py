"""One sampler run on a problem: difflab's through ``dl.sample``, diffusers' schedulers in their
usual loop (fed the same model through integer timesteps). Each returns the samples and the
number of network evaluations."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

import difflab as dl

from .problems import Problem


def difflab_run(
    p: Problem, sampler: str, nfe: int, spacing: Optional[str] = None, sigmas=None
) -> tuple[Tensor, int]:
    """``sampler`` at ``nfe`` evaluations (Heun: ``(nfe + 1) // 2`` steps) on ``spacing``'s
    levels, or on the noise levels ``sigmas``, from the problem's evaluation noise."""
    steps = (nfe + 1) // 2 if sampler == "heun" else nfe
    p.net.calls = 0
    kw = dict(sigmas=sigmas) if sigmas is not None else dict(steps=steps, spacing=spacing)
    g = torch.Generator().manual_seed(3000 + p.seed)  # DDPM's fresh noise, reproducible
    x = dl.sample(p.net, p.proc, (p.n, p.dim), sampler, noise=p.noise, generator=g, **kw)
    return x, p.net.calls


def diffusers_installed() -> bool:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


SCHEDULERS = {
    "DDIM": ("DDIMScheduler", dict(clip_sample=False)),  # diffusers clips x0 to [-1, 1] by default
    "DDPM": ("DDPMScheduler", dict(clip_sample=False)),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", dict(solver_order=2)),
    "DPM++ 3M": ("DPMSolverMultistepScheduler", dict(solver_order=3)),
    "DEIS 3": ("DEISMultistepScheduler", dict(solver_order=3)),
    "UniPC 2": ("UniPCMultistepScheduler", dict(solver_order=2)),
    "UniPC 3": ("UniPCMultistepScheduler", dict(solver_order=3)),
    "Euler": ("EulerDiscreteScheduler", dict()),
    "Heun": ("HeunDiscreteScheduler", dict()),
}
SPACING_FLAGS = {
    "linspace": dict(timestep_spacing="linspace"),
    "leading": dict(timestep_spacing="leading"),
    "trailing": dict(timestep_spacing="trailing"),
    "karras": dict(use_karras_sigmas=True),
    "lu": dict(use_lu_lambdas=True),
    "exponential": dict(use_exponential_sigmas=True),
}


def diffusers_spacings(name: str) -> list[str]:
    """The spacings a scheduler accepts (DDIM/DDPM: timestep_spacing only; lu: DPM-Solver only)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name][0])
    params = inspect.signature(cls.__init__).parameters
    return [s for s, flags in SPACING_FLAGS.items() if all(k in params for k in flags)]


def _scheduler(proc: dl.GaussianDiffusion, name: str, spacing: str):
    """diffusers' scheduler ``name`` (SCHEDULERS) on ``proc``'s betas, with ``spacing``'s flags."""
    import diffusers

    cls_name, cfg = SCHEDULERS[name]
    return getattr(diffusers, cls_name)(
        trained_betas=proc.betas.numpy(),
        num_train_timesteps=proc.T,
        prediction_type={"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[proc.prediction],
        **cfg,
        **SPACING_FLAGS[spacing],
    )


def diffusers_loop(
    model: Callable,
    proc: dl.GaussianDiffusion,
    noise: Tensor,
    name: str,
    nfe: int,
    spacing: str,
    timesteps=None,
    seed: int = 0,
) -> tuple[Tensor, int]:
    """diffusers' sampling loop: x_T = noise * init_noise_sigma, then scale_model_input / model / step.
    ``model(x_t, t)`` gets diffusers' timesteps (integers, or floats where the scheduler makes them)."""
    sched = _scheduler(proc, name, spacing)
    if timesteps is not None:
        sched.set_timesteps(timesteps=[int(t) for t in timesteps])
    else:
        sched.set_timesteps((nfe + 1) // 2 if name == "Heun" else nfe)
    x = noise * sched.init_noise_sigma
    calls = 0
    step_kw = (
        {"generator": torch.Generator(device=x.device).manual_seed(seed)} if name == "DDPM" else {}
    )
    for t in sched.timesteps:
        tt = t.expand(len(x)).to(x.device)
        if tt.is_floating_point() and bool((tt == tt.round()).all()):
            tt = tt.long()
        out = model(sched.scale_model_input(x, t), tt)
        calls += 1
        x = sched.step(out, t, x, **step_kw).prev_sample
    return x, calls


def diffusers_run(
    p: Problem, name: str, nfe: int, spacing: str, timesteps=None
) -> tuple[Tensor, int]:
    """diffusers' scheduler ``name`` in its loop on the problem, from its evaluation noise."""
    return diffusers_loop(
        p.net, p.proc, p.noise, name, nfe, spacing, timesteps, seed=3000 + p.seed
    )
