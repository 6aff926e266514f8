"""DDPM (difflab.samplers.ddpm) against the exact recursion on Gaussian data: the 'beta' (fixed
large) variance. Its output moments with the posterior variance: test_sampling.py."""

import math

import pytest
import torch
from closed_forms import exact_output_moments
from networks import ConstantVariance

import difflab as dl
from difflab.samplers.timesteps import sampling_sigmas

MU = torch.tensor([1.0, -2.0])
S = 0.5
N = 20_000
# Tolerances: the sample mean has standard error S / sqrt(N) = 0.0035, the sample std
# S / sqrt(2N) = 0.0025. We allow 5 standard errors (a false alarm once in ~2 million per check;
# seeds are fixed, so the outcome is deterministic anyway).
SE_MEAN, SE_STD = S / math.sqrt(N), S / math.sqrt(2 * N)


def test_ddpm_beta_variance_matches_its_recursion(proc):
    """The 'beta' (fixed large) variance: Var y' = g^2 Var y + n^2 with n^2 = beta'_t / abar_s (VE)."""
    model = dl.models.GaussianDenoiser(proc, MU, S)
    steps = 100
    x = dl.sample(model, proc, (N, 2), "ddpm", steps, variance="beta", generator=torch.Generator().manual_seed(2))
    sig = sampling_sigmas(proc, steps, "trailing").tolist()
    var = 1 + sig[0] ** 2
    for a, b in zip(sig[:-1], sig[1:]):
        r = (b / a) ** 2
        g = (1 - r) * S * S / (S * S + a * a) + r
        n2 = (a * a - b * b) * (1 + b * b) / (1 + a * a) if b > 0 else 0.0
        var = g * g * var + n2
    assert torch.allclose(x.std(0), torch.tensor(math.sqrt(var)).float(), atol=5 * SE_STD)
    # larger than the posterior variance's output: the beta variance over-disperses on a coarse grid
    assert math.sqrt(var) > exact_output_moments(torch.tensor(sig), "ddpm")[1]


def test_ddpm_learned_variance_matches_its_recursion(proc):
    """variance = exp((1 + v)/2 log beta' + (1 - v)/2 log beta~') of each respaced step, in VE units:
    the output's spread follows the recursion of the beta test with that variance."""
    base = dl.models.GaussianDenoiser(proc, MU, S)
    steps, v = 25, 0.3
    x = dl.sample(ConstantVariance(base, v), proc, (N, 2), "ddpm", steps, generator=torch.Generator().manual_seed(3))
    sig = sampling_sigmas(proc, steps, "trailing").tolist()
    var = 1 + sig[0] ** 2
    frac = (1 + v) / 2
    for a, b in zip(sig[:-1], sig[1:]):
        r = (b / a) ** 2
        g = (1 - r) * S * S / (S * S + a * a) + r
        if b > 0:
            beta = (a * a - b * b) * (1 + b * b) / (1 + a * a)
            post = b * b * (a * a - b * b) / (a * a)
            n2 = math.exp(frac * math.log(beta) + (1 - frac) * math.log(post))
        else:
            n2 = 0.0
        var = g * g * var + n2
    assert torch.allclose(x.std(0), torch.tensor(math.sqrt(var)).float(), atol=5 * SE_STD)
    assert torch.allclose(x.mean(0), MU, atol=5 * SE_MEAN)


def test_ddpm_learned_variance_at_its_ends_is_the_fixed_variances_exactly(proc):
    """v = -1: beta~ (the default for any other network); v = 1: beta; same noise, same samples."""
    base = dl.models.GaussianDenoiser(proc, MU, S)
    for v, fixed in [(-1.0, "posterior"), (1.0, "beta")]:
        a = dl.sample(ConstantVariance(base, v), proc, (64, 2), "ddpm", 10, generator=torch.Generator().manual_seed(1))
        b = dl.sample(base, proc, (64, 2), "ddpm", 10, variance=fixed, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b)
    # a fixed variance may still be chosen for a network that learns one; DDIM reads only its mean
    c = dl.sample(ConstantVariance(base, 0.5), proc, (64, 2), "ddim", 10, generator=torch.Generator().manual_seed(1))
    d = dl.sample(base, proc, (64, 2), "ddim", 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(c, d)


def test_ddpm_learned_variance_needs_a_network_that_learns_it(proc):
    base = dl.models.GaussianDenoiser(proc, MU, S)
    with pytest.raises(ValueError, match="learns its variance"):
        dl.sample(base, proc, (4, 2), "ddpm", 10, variance="learned")
