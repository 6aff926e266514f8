"""Per-model noise levels (difflab.samplers.optimize.optimize_sigmas): fewer steps, lower error."""

import math

import pytest
import torch

import difflab as dl
from difflab.samplers import optimize_sigmas

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = 0.5


def test_optimize_sigmas_lowers_the_error(proc):
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    model = dl.models.GaussianMixtureDenoiser(proc, torch.stack([ang.cos(), ang.sin()], 1), 0.1)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(7))
    sig = optimize_sigmas(
        model, proc, (64, 2), 4, "dpmpp_2m", noise=noise, max_evals=80, reference_steps=100
    )
    assert len(sig) == 5 and sig[-1] == 0 and (sig[1:] < sig[:-1]).all()
    assert math.isclose(float(sig[0]), proc.sigma_max) and float(sig[-2]) >= proc.sigma_min

    ref = dl.sample(model, proc, (64, 2), "dpmpp_3m", steps=100, noise=noise)

    def err(**kw):
        return float(
            ((dl.sample(model, proc, (64, 2), "dpmpp_2m", noise=noise, **kw) - ref) ** 2).mean()
        )

    assert err(sigmas=sig) < 0.5 * err(steps=4, spacing="logsnr")


def test_optimize_sigmas_rejects_stochastic_samplers(proc):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    with pytest.raises(ValueError, match="deterministic"):
        optimize_sigmas(model, proc, (8, 2), 4, "ddpm")
    with pytest.raises(ValueError, match="deterministic"):
        optimize_sigmas(model, proc, (8, 2), 4, "heun", s_churn=1.0)
