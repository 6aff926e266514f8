"""Optimised noise levels: the few steps of a higher-order sampler placed where a given model needs them.

A deterministic sampler with n steps maps starting noise z to a sample x_n(z; sigmas). The
exact probability-flow ODE maps z to x_ref(z), and its samples have the model's own
distribution. So choose the interior noise levels to minimise the mean squared distance to
a reference solution of the ODE from the same noise (the idea of "Align Your Steps",
Sabour et al. 2024, and "Optimal Stepsize for Diffusion Sampling", Pei et al. 2025, in its
simplest form):

    J(sigma_1 .. sigma_{n-1}) = E_z || x_n(z; sigma_max, sigma_1, .., sigma_{n-1}, 0) - x_ref(z) ||^2 / dim

with sigma_0 = sigma_max (where sampling starts from x_T ~ N(0, I)) and the final 0 fixed,
and sigma_max > sigma_1 > ... > sigma_{n-1} >= sigma_min kept in order by writing the log
gaps as a softmax. x_ref is DPM-Solver++(3M) with many log-SNR-uniform steps. J is
minimised by Nelder-Mead (scipy): it needs no gradients, so any network works, and each
evaluation costs n network calls on a batch of noise. The result is specific to the model
(and its data): optimise once, then sample with ``dl.sample(..., sigmas=result)``.
Evaluate the schedule on noise it was not fitted on (the benchmark does).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..processes import Process
from ..validation import is_int
from .base import randn
from .registry import SAMPLERS
from .sampling import sample

__all__ = ["optimize_sigmas"]

DETERMINISTIC = ("ddim", "dpmpp_2m", "dpmpp_3m", "euler", "heun")
_OPTIONS = {
    "Nelder-Mead": lambda n: dict(maxfev=n, xatol=1e-4, fatol=1e-10, adaptive=True),
    "Powell": lambda n: dict(maxfev=n, xtol=1e-3, ftol=1e-8),
}


def _gap_sigmas(q: np.ndarray, log_hi: float, log_lo: float) -> Tensor:
    """n + 1 noise levels from n gap logits: log sigma_i = log_hi - (log_hi - log_lo) cumsum(softmax(q))_i, then 0."""
    w = torch.softmax(torch.as_tensor(q, dtype=torch.float64), 0)
    log_sig = log_hi - (log_hi - log_lo) * torch.cumsum(w, 0)[:-1]
    head = torch.tensor([math.exp(log_hi)], dtype=torch.float64)
    return torch.cat([head, log_sig.exp(), torch.zeros(1, dtype=torch.float64)])


def optimize_sigmas(
    model: Callable,
    proc: Process,
    shape: Sequence[int],
    steps: int,
    sampler: str = "dpmpp_3m",
    *,
    cond: Optional[Tensor] = None,
    guidance: float = 1.0,
    noise: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device=None,
    reference_steps: int = 500,
    max_evals: Optional[int] = None,
    method: str = "Powell",
    **options,
) -> Tensor:
    """``steps + 1`` noise levels (decreasing, ending in 0) that minimise ``sampler``'s error J.

    ``shape`` is the batch of noise J averages over (e.g. (512, C, H, W)); pass ``noise`` to
    fix it. ``max_evals`` bounds the evaluations of J (default 50 * steps), each ``steps``
    network calls (Heun: 2 * steps - 1); the reference costs ``reference_steps`` calls once.
    The search starts from equal steps in log sigma; ``method`` is scipy's "Powell" (default:
    fewest evaluations here) or "Nelder-Mead". Returns float64 sigmas on the CPU.
    """
    from scipy.optimize import minimize  # scipy comes with scikit-learn, a core dependency

    if sampler not in SAMPLERS:
        raise ValueError(
            f"unknown sampler {sampler!r}; choose one of {', '.join(sorted(SAMPLERS))}"
        )
    if sampler not in DETERMINISTIC or options.get("eta", 0.0) or options.get("s_churn", 0.0):
        raise ValueError(
            f"optimize_sigmas needs a deterministic sampler (one of {', '.join(DETERMINISTIC)}, "
            f"without eta or s_churn): its error is measured against the exact ODE from the same noise; got {sampler!r}"
        )
    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not is_int(reference_steps) or reference_steps < 4 * steps:
        raise ValueError(
            f"reference_steps must be an integer >= 4 * steps = {4 * steps}, got {reference_steps!r}"
        )
    if method not in _OPTIONS:
        raise ValueError(f"method must be one of {', '.join(_OPTIONS)}, got {method!r}")
    if max_evals is None:
        max_evals = 50 * steps
    if not is_int(max_evals) or max_evals < 1:
        raise ValueError(f"max_evals must be a positive integer (evaluations of J; default 50 * steps), "
                         f"got {max_evals!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
                        f"got {type(generator).__name__}")
    log_hi, log_lo = math.log(proc.sigma_max), math.log(proc.sigma_min)
    if steps == 1:
        return _gap_sigmas(np.zeros(1), log_hi, log_lo)
    if noise is None:
        noise = randn(tuple(shape), generator, device)
    kw = dict(cond=cond, guidance=guidance, noise=noise, device=device)
    x_ref = sample(
        model, proc, noise.shape, "dpmpp_3m", steps=reference_steps, spacing="logsnr", **kw
    )
    dim = x_ref[0].numel()

    def objective(q: np.ndarray) -> float:
        sig = _gap_sigmas(q, log_hi, log_lo)
        if not (sig[1:] < sig[:-1]).all():  # a gap underflowed: two equal levels
            return math.inf
        x = sample(model, proc, noise.shape, sampler, sigmas=sig, **kw, **options)
        err = float(((x - x_ref).double() ** 2).sum() / (x.shape[0] * dim))
        return err if math.isfinite(err) else math.inf

    # Start from equal steps in log sigma, the last level one step above sigma_min.
    q0 = np.zeros(steps)
    result = minimize(objective, q0, method=method, options=_OPTIONS[method](max_evals))
    best = result.x if result.fun <= objective(q0) else q0
    return _gap_sigmas(best, log_hi, log_lo)
