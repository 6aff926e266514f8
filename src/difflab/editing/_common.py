"""What the editing functions share: checking their inputs and running the samplers step by step.

Every editing method works in the samplers' VE parameterisation x = x0 + sigma eps, where every
process is the same process (its own state is x_t = a x, a = ``proc.scale(sigma)``; the VP
state x / sqrt(1 + sigma^2) for the DDPM chain), and reuses the registered sampler functions
``SAMPLERS[name].fn(denoiser, x, sigmas, ...)`` of :mod:`difflab.samplers`. Noise given by the
user (x_T, a latent) is the standard normal draw, x = noise * sqrt(1 + sigma_0^2) at the top
level, as in :func:`difflab.sample`, whatever the process.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..processes import Process
from ..samplers import SAMPLERS
from ..samplers.base import eval_mode, model_device
from ..validation import IMAGE_RANGE_TOL, check_image_range, check_labels, is_int, model_dtype

__all__ = ["check_image", "check_cond", "check_sampler", "eval_mode", "model_device", "to_model"]


def check_image(x, name: str = "image", check_range: bool = True) -> Tensor:
    """A float batch tensor [B, ...]: images [B, C, H, W] scaled to [-1, 1], or vectors [B, D].

    Images (3 or more dimensions) must lie in [-1, 1] (up to ``IMAGE_RANGE_TOL``,
    :func:`difflab.validation.check_image_range`): pixels in
    0..255 or 0..1 floats would be edited as if they were far off the data. Vectors [B, D] are
    data in the model's own scale (e.g. the 2D toy sets, about unit variance) and are not range
    checked; nor is anything with ``check_range=False`` (e.g. latents x_T).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch tensor [B, C, H, W] (or [B, D]), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1 or x.numel() == 0:
        raise ValueError(f"{name} must be a batch [B, C, H, W] (or [B, D]) with B >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor scaled to [-1, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    if check_range:  # the library's one scale rule of images (difflab.validation)
        check_image_range(x, name, 1 + IMAGE_RANGE_TOL)
    return x


def to_model(x: Tensor, model: Callable, device) -> Tensor:
    """``x`` on ``device`` in the dtype of the model's parameters (its own float dtype for a model
    without parameters): float64 or float16 images work with a float32 network."""
    return x.to(device=device, dtype=model_dtype(model) or x.dtype)


# alias for editing/superres.py, which is being rewritten; remove after (use check_labels)
check_cond = check_labels


def check_sampler(sampler: str, options: dict, allowed: Optional[tuple[str, ...]] = None):
    """The registered sampler ``sampler`` (limited to ``allowed``) after checking its options."""
    names = tuple(n for n in allowed if n in SAMPLERS) if allowed is not None else tuple(sorted(SAMPLERS))
    if not isinstance(sampler, str) or sampler not in SAMPLERS or sampler not in names:
        extra = ""
        if isinstance(sampler, str) and sampler in SAMPLERS:
            extra = " (it is a multistep sampler: its history does not survive the edits between steps)"
        raise ValueError(f"sampler {sampler!r} cannot be used here{extra}; choose one of {', '.join(names)}")
    spec = SAMPLERS[sampler]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes no option {', '.join(unknown)}; its options: "
                         f"{', '.join(spec.options) or 'none'}")
    return spec


def check_steps(steps, proc: Process, name: str = "steps") -> int:
    """An integer (Python or numpy): in 1 .. T for the DDPM chain (a spacing picks that many of
    its T timesteps), >= 1 for a continuous-time process (any number of levels in its time)."""
    if not isinstance(proc, Process):
        raise TypeError(f"proc must be a process of dl.processes (e.g. dl.GaussianDiffusion or "
                        f"dl.processes.FlowMatching), got {type(proc).__name__}")
    if proc.discrete:
        if not is_int(steps) or not 1 <= steps <= proc.T:
            raise ValueError(f"{name} must be an integer in 1 .. T = {proc.T}, got {steps!r}")
    elif not is_int(steps) or steps < 1:
        raise ValueError(f"{name} must be an integer >= 1 (the number of noise levels {type(proc).__name__} "
                         f"is sampled at), got {steps!r}")
    return int(steps)

