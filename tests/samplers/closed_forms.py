"""Closed forms of what a sampler outputs on Gaussian data N(mu, s^2 I), shared by the sampler
tests: a helper module (``from closed_forms import ...``), as pytest puts a test file's folder on
sys.path.

- ``exact_output_moments``: DDPM and DDIM, each step an affine map of a Gaussian, so the output's
  mean and std follow a recursion (the sampler's own discretisation error, computed exactly);
- ``gain_error``: the probability-flow ODE is solved in closed form (in VE coordinates
  x(sigma) - mu = (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2)), so every
  deterministic sampler is a linear map of x - mu whose gain, against the exact one, is its
  discretisation error; its decay when the steps double is the method's order.
"""

import math

import torch

import difflab as dl
from difflab.samplers import SAMPLERS, Denoiser
from difflab.samplers.timesteps import sampling_sigmas

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)  # the data of gain_error
S = 0.5  # the data's std: the default of exact_output_moments


def exact_output_moments(sigmas, sampler, s=S):
    """Mean shift and std of the sampler's output for data N(mu, s^2), in closed form.

    In VE form x = x0 + sigma eps the denoiser is D(x) = mu + c (x - mu), c = s^2 / (s^2 + sigma^2).
    With y = x - mu each step is y' = g y + n z: DDIM (eta=0): g = c + (sigma'/sigma)(1 - c), n = 0;
    DDPM: g = (1 - r) c + r with r = sigma'^2 / sigma^2, n^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2.
    Start: x = x_T sqrt(1 + sigma_0^2) with x_T ~ N(0, I), so E y = -mu, Var y = 1 + sigma_0^2.
    Returns (G, std) with output mean = mu (1 - G), output variance std^2.
    """
    sig = sigmas.tolist()
    G, var = 1.0, 1 + sig[0] ** 2
    for a, b in zip(sig[:-1], sig[1:]):
        c = s * s / (s * s + a * a)
        if sampler == "ddim":
            g, n2 = c + (b / a) * (1 - c), 0.0
        else:
            r = (b / a) ** 2
            g, n2 = (1 - r) * c + r, b * b * (a * a - b * b) / (a * a)
        G, var = G * g, g * g * var + n2
    return G, math.sqrt(var)


def gain_error(proc, sampler, steps, spacing, **options) -> float:
    """Relative error of the sampler's gain on Gaussian data, solving from sigma_max to sigma_min."""
    model = dl.models.GaussianDenoiser(proc, MU, S)
    sig = sampling_sigmas(proc, steps, spacing)[
        :-1
    ]  # stop at sigma_min: the ODE alone, no final jump
    x_in = torch.tensor([[0.3, -0.7]], dtype=torch.float64) * math.sqrt(1 + float(sig[0]) ** 2)
    x = SAMPLERS[sampler].fn(Denoiser(model, proc), x_in.clone(), sig, **options)
    g = (x - MU) / (x_in - MU)
    assert torch.allclose(g[0, 0], g[0, 1], rtol=1e-9)  # a linear, isotropic map, as it must be
    exact = math.sqrt(S**2 + float(sig[-1]) ** 2) / math.sqrt(S**2 + float(sig[0]) ** 2)
    return float(g[0, 0]) / exact - 1


def assert_convergence_order(proc, sampler: str, spacing: str, order: int, **options) -> None:
    """The gain error's ratio is 2^order (within -15%, +35%) each time the steps double
    (32, 64, 128): the sampler converges at ``order`` on the closed-form ODE solution."""
    errs = [abs(gain_error(proc, sampler, n, spacing, **options)) for n in (32, 64, 128)]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    lo, hi = 2**order * 0.85, 2**order * 1.35
    assert all(lo < r < hi for r in ratios), (errs, ratios)
