"""The log-likelihood of data under the probability-flow ODE of any process.

Every process is, in the samplers' VE coordinates x = x0 + sigma eps, one family of marginals
p_sigma = p_0 * N(0, sigma^2 I), and the deterministic flow

    dx / dsigma = (x - D(x, sigma)) / sigma,   i.e.   dx / ds = f(x, s) = x - D(x, e^s),  s = log sigma,

with the denoiser D(x, sigma) = E[x0 | x] carries p_sigma into p_sigma' (Song et al. 2021,
eq. 13; Karras et al. 2022, eq. 3). Along a solution the log-density changes by the
instantaneous change of variables (Chen et al. 2018, thm. 1):

    d log p_s(x(s)) / ds = -div f = -(D - tr dD/dx),          D = number of values in one x0,

so, integrating from the data up to the top noise level,

    log p_0(x0) ~ log p_{sigma_min}(x0) = log pi(x(sigma_max)) + int_{log sigma_min}^{log sigma_max} div f ds.

Decisions, each measured on exact mixture denoisers (components of std 0.3; 2-D means +-(1, 0.5),
8-D three centred random means; nats per dimension, the largest over 64 draws; the numbers come
from tests/evaluation/test_likelihood.py's cases):

- **Lower end.** x0 is data at sigma = 0, where the flow is singular in log sigma and where no
  network was trained. The solve starts at the process's lowest sampling level ``proc.sigma_min``
  with x0 as the state there (as Song et al.'s code starts at t = eps), so it computes
  log p_{sigma_min}(x0) = log (p_0 * N(0, sigma_min^2 I))(x0) = log p_0(x0) + (sigma_min^2 / 2)
  (Laplacian p_0 / p_0)(x0) + O(sigma_min^4): an error of at most 2.2e-3 for the VP and VE SDEs
  and the linear DDPM schedule (sigma_min = 0.01), 8e-4 for the cosine one (0.0064), 8e-5 for
  EDM (0.002) and 2e-5 for flow matching (0.001); largest in the data's tails.
- **Prior.** pi = N(0, (1 + sigma_max^2) I), the distribution ``dl.sample`` draws its starting
  noise from (the standard normal scaled to the spread of unit-variance data), so this is the
  likelihood of the model the ODE samplers draw from. The true p_{sigma_max} is the data
  smoothed by N(0, sigma_max^2 I); per sample the two differ by about
  (E x0 . x(sigma_max)) / sigma_max^2 + O(1 / sigma_max^2), and on average by O(|E x0|^2 / sigma_max^2):
  at most 8e-4 for centred data (VE, sigma_max = 50) but 1.1e-2 for the 8-D mixture uncentred
  (|E x0| = 1.6). Centre the data, or use a process with a larger sigma_max, where this matters.
- **Solver.** The classical fourth-order Runge-Kutta method on the augmented state
  (x, int div f), ``steps`` equal steps in log sigma (better here than steps equal in
  sigma^(1/rho), rho = 3 or 7, at equal cost): fixed steps, so Hutchinson's estimate below is
  exactly unbiased for the same discretisation (an adaptive solver would choose its steps from
  the noisy divergence). 4 network evaluations per step. Its own error (against the exact
  log p_{sigma_min}, prior error aside) falls as steps^-4: at most 1.3e-2 at 32 steps, 2.9e-3 at
  48 and 9.6e-4 at 64 (the default), the worst being the cosine DDPM, whose range of log sigma
  (6e-3 to 2e4) is widest.
- **Divergence.** ``"exact"``: tr dD/dx by D vector-Jacobian products with the basis vectors,
  done as one forward and one backward pass on the batch repeated D times (any model whose
  samples do not interact, i.e. no batch statistics). ``"hutchinson"``: tr dD/dx ~
  (1/M) sum_m v_m^T (dD/dx) v_m with M = ``hutchinson_samples`` probes per sample, drawn once
  and fixed over the solve (FFJORD, Grathwohl et al. 2019): E[v v^T] = I, so the estimate of
  log p is unbiased; Rademacher probes (the default) have the lower variance. The identity's
  trace D is exact in both.
- **Precision.** The ODE state and the log-density accumulate in float64; the model sees its
  own parameters' dtype.

Bits per dimension follow the convention of the variational bound
(:meth:`difflab.GaussianDiffusion.vlb_bits_per_dim`): data in [-1, 1] on a grid of ``bins``
levels (x = k / 127.5 - 1 for 8-bit images), each level owning a bin of width 2 / (bins - 1), so
a density p becomes the probability of a bin by p times the bin's volume:

    bits/dim = -log p(x0) / (D ln 2) + log2((bins - 1) / 2)         (+ log2(127.5) = 6.994 for 256 levels)

(Song et al.'s code adds log2(128) = 7, for [0, 1] data of bins 1/256 scaled to [-1, 1]: 0.006
bits/dim more). With ``dequantize=True`` each x0 moves by uniform noise within its bin first
(Theis et al. 2016; Ho et al. 2019): the expectation over that noise is then a lower bound on
the log-probability of the grid point, comparable with discrete models; without it, the density
at the grid point is read as the bin's probability (exact as the bin width goes to 0).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..processes import Process
from ..samplers import Denoiser
from ..validation import X0_FIX, check_finite, check_labels, float_input, is_int, is_real, model_dtype, positive_int

__all__ = ["log_likelihood", "bits_per_dim", "DIVERGENCES", "PROBES", "MAX_EXACT_DIM"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
# The exact divergence runs the batch D times per network evaluation: beyond this many
# dimensions (a 32 x 32 grey image) Hutchinson's estimate is the tool.
MAX_EXACT_DIM = 1024
DEFAULT_STEPS = 64  # RK4 steps in log sigma: solve error below 1e-3 nats/dim on the test mixtures


def log_likelihood(
    model: Callable,
    proc: Process,
    x0: Tensor,
    cond: Optional[Tensor] = None,
    *,
    steps: int = DEFAULT_STEPS,
    divergence: str = "exact",
    hutchinson_samples: int = 1,
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
) -> Tensor:
    """log p(x0) in nats per sample [B] (float64) under the probability-flow ODE of ``model`` and ``proc``.

    ``model`` is a network of the process's prediction type (any process: its denoiser handles
    time and scale); ``cond`` optional class labels [B]. The ODE runs from ``sigma_min`` to
    ``sigma_max`` (default: the process's sampling range; a narrower one inside it may be
    given) by ``steps`` RK4 steps in log sigma, 4 * steps network evaluations; see the module
    docstring for the equations, the prior and the errors of each choice. ``divergence``:
    ``"exact"`` (for D up to :data:`MAX_EXACT_DIM`; D times the batch per evaluation) or
    ``"hutchinson"`` with ``hutchinson_samples`` probes of kind ``probe`` ("rademacher" or
    "gaussian") per sample, drawn from ``generator`` on x0's device. The model must be
    differentiable in its input and should be in eval mode.
    """
    x0 = _check_data(model, x0)
    B = x0.shape[0]
    steps = positive_int("steps (RK4 steps of the ODE solve)", steps)
    probes = _probes(x0, divergence, hutchinson_samples, probe, generator)
    lo, hi = _sigma_range(proc, sigma_min, sigma_max)
    if cond is not None:
        cond = check_labels(model, cond, B, x0.device)
    exact = probes is None
    vectors = _basis_blocks(x0) if exact else probes  # [reps * B, ...]
    reps = vectors.shape[0] // B
    # the condition of each probe's copy of the batch: labels [B] or token ids [B, L], repeated along the batch
    cond = None if cond is None else cond.repeat(reps, *([1] * (cond.ndim - 1)))
    denoiser = Denoiser(model, proc, cond, clip_x0=None)
    dtype = model_dtype(model) or x0.dtype
    vectors = vectors.to(dtype)

    def flow(x: Tensor, s: float) -> tuple[Tensor, Tensor]:
        return _drift_and_divergence(denoiser, x, math.exp(s), vectors, exact)

    s0, s1 = math.log(lo), math.log(hi)
    x, delta = _rk4(flow, x0.to(torch.float64), [s0 + (s1 - s0) * i / steps for i in range(steps + 1)])
    return _prior_log_prob(x, hi) + delta


def bits_per_dim(
    model: Callable,
    proc: Process,
    x0: Tensor,
    cond: Optional[Tensor] = None,
    *,
    bins: int = 256,
    dequantize: bool = False,
    generator: Optional[torch.Generator] = None,
    **kwargs,
) -> Tensor:
    """-log p(x0) of :func:`log_likelihood` in bits per dimension [B], for data in [-1, 1] on a grid
    of ``bins`` levels (256 for 8-bit images):

        bits/dim = -log p(x0) / (D ln 2) + log2((bins - 1) / 2)

    the convention of the variational bound (see the module docstring). ``dequantize=True``
    first adds uniform noise over each value's bin, of width 2 / (bins - 1), from ``generator``.
    Other keyword arguments go to :func:`log_likelihood`.
    """
    x0 = _check_data(model, x0)
    if not is_int(bins) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2 (256 for 8-bit images), got {bins!r}")
    lo, hi = float(x0.min()), float(x0.max())
    if lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"x0 must lie in [-1, 1] (images scaled from 0..255 by x / 127.5 - 1) for bits/dim, "
                         f"got values in [{lo:.3g}, {hi:.3g}]; use log_likelihood for other data")
    if not isinstance(dequantize, bool):
        raise TypeError(f"dequantize must be True or False, got {dequantize!r}")
    half_bin = 1.0 / (bins - 1)
    if dequantize:
        u = torch.rand(x0.shape, dtype=x0.dtype, device=x0.device, generator=generator)
        x0 = x0 + (2 * u - 1) * half_bin
    nats = log_likelihood(model, proc, x0, cond, generator=generator, **kwargs)
    D = x0[0].numel()
    return -nats / (D * math.log(2.0)) + math.log2((bins - 1) / 2)


# ----------------------------------------------------------------------------- the solve
def _rk4(flow: Callable, x: Tensor, grid) -> tuple[Tensor, Tensor]:
    """Integrate dx/ds = f and d(delta)/ds = div f over the increasing ``grid`` of s by RK4 steps
    between its nodes; returns x(grid[-1]) and delta = int div f ds [B]."""
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for s, s_next in zip(grid[:-1], grid[1:]):
        h = s_next - s
        f1, g1 = flow(x, s)
        f2, g2 = flow(x + 0.5 * h * f1, s + 0.5 * h)
        f3, g3 = flow(x + 0.5 * h * f2, s + 0.5 * h)
        f4, g4 = flow(x + h * f3, s + h)
        x = x + h / 6 * (f1 + 2 * f2 + 2 * f3 + f4)
        delta = delta + h / 6 * (g1 + 2 * g2 + 2 * g3 + g4)
    return x, delta


def _drift_and_divergence(denoiser: Denoiser, x: Tensor, sigma: float, vectors: Tensor,
                          exact: bool) -> tuple[Tensor, Tensor]:
    """f = x - D(x, sigma) [B, ...] and div f = D - tr dD/dx [B], both float64.

    The batch is repeated reps = len(vectors) / B times and row block r is contracted with its
    vectors v_r (the basis vector e_r for the exact trace, probe r for Hutchinson's): one
    backward pass gives every v_r^T (dD/dx) v_r. The trace is their sum (exact) or mean."""
    B, D = x.shape[0], x[0].numel()
    reps = vectors.shape[0] // B
    with torch.enable_grad():
        xr = x.detach().to(vectors.dtype).repeat(reps, *([1] * (x.ndim - 1))).requires_grad_(True)
        d = denoiser(xr, sigma)
        if not d.requires_grad:
            raise ValueError("the model's output does not depend differentiably on its input (was it run under "
                             "torch.no_grad, or does it detach?): the divergence needs autograd through the model")
        (vjp,) = torch.autograd.grad((d * vectors).sum(), xr)
    quad = (vjp * vectors).flatten(1).sum(1).to(torch.float64).view(reps, B)  # v_r^T (dD/dx) v_r
    trace = quad.sum(0) if exact else quad.mean(0)
    return x - d[:B].detach().to(torch.float64), D - trace


def _basis_blocks(x0: Tensor) -> Tensor:
    """The basis vectors of the exact trace: row block i (B rows of x0's shape) is e_i, [D * B, ...]."""
    B, D = x0.shape[0], x0[0].numel()
    eye = torch.eye(D, dtype=torch.float64, device=x0.device)
    return eye.repeat_interleave(B, dim=0).view(D * B, *x0.shape[1:])


def _prior_log_prob(x: Tensor, sigma_max: float) -> Tensor:
    """log N(x; 0, (1 + sigma_max^2) I) per sample: ``dl.sample``'s starting distribution."""
    var = 1.0 + sigma_max**2
    D = x[0].numel()
    return -0.5 * (x.flatten(1) ** 2).sum(1) / var - 0.5 * D * math.log(2 * math.pi * var)


# ---------------------------------------------------------------------------- checks
def _check_data(model: Callable, x0) -> Tensor:
    """x0 as a finite float batch [B, ...]."""
    if not isinstance(x0, Tensor) or x0.ndim < 2 or x0.shape[0] == 0:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a batch tensor of shape [B, ...] with B >= 1, got {got}")
    x0 = float_input(x0, "x0", model, X0_FIX)
    return check_finite(x0, "x0", "the log-likelihood of NaN or infinite data is undefined")


def _probes(x0: Tensor, divergence: str, samples, probe: str,
            generator: Optional[torch.Generator]) -> Optional[Tensor]:
    """None for the exact divergence, else ``samples`` Hutchinson probes per sample [samples * B, ...]."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose 'exact' (small D) or 'hutchinson' "
                         "(an unbiased estimate, for images)")
    samples = positive_int("hutchinson_samples (probes per sample)", samples)
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose 'rademacher' (lower variance) or 'gaussian'")
    D = x0[0].numel()
    if divergence == "exact":
        if D > MAX_EXACT_DIM:
            raise ValueError(
                f"the exact divergence runs the batch D = {D} times per network evaluation (limit "
                f"{MAX_EXACT_DIM}); use divergence='hutchinson' (an unbiased estimate, hutchinson_samples "
                "probes per sample)"
            )
        return None
    shape = (samples * x0.shape[0], *x0.shape[1:])
    v = torch.randn(shape, dtype=torch.float64, device=x0.device, generator=generator)
    return v.sign() if probe == "rademacher" else v


def _sigma_range(proc: Process, sigma_min, sigma_max) -> tuple[float, float]:
    """The ODE's noise-level range: the process's sampling range, or a narrower one inside it."""
    if not isinstance(proc, Process):
        raise TypeError(f"proc must be a process of dl.processes (e.g. dl.GaussianDiffusion), got "
                        f"{type(proc).__name__}")
    p_lo, p_hi = proc.sigma_min, proc.sigma_max
    lo = p_lo if sigma_min is None else sigma_min
    hi = p_hi if sigma_max is None else sigma_max
    for name, value in (("sigma_min", lo), ("sigma_max", hi)):
        if not (is_real(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0 (or None for the process's), got {value!r}")
    lo, hi = float(lo), float(hi)
    tol = 1e-9 * p_hi
    if not (p_lo * (1 - 1e-9) <= lo < hi <= p_hi + tol):
        raise ValueError(
            f"need {p_lo:.4g} <= sigma_min < sigma_max <= {p_hi:.4g} (the noise levels {type(proc).__name__} "
            f"samples, where its network is trained), got sigma_min={lo:.4g}, sigma_max={hi:.4g}"
        )
    return lo, hi
