"""The score SDEs (difflab.processes.sde): VPSDE and VESDE against Song et al. 2021's definitions.

VP's scale is checked against the SDE itself: for dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw the
mean of x_t is a(t) x0 with a(t) = exp(-1/2 int_0^t beta), integrated here numerically
(scipy.integrate.quad), independently of the closed form the process uses.
"""

import math

import pytest
import torch
from scipy import integrate, stats

from difflab.processes import VESDE, VPSDE

F64 = torch.float64


@pytest.mark.parametrize("proc", [VPSDE(), VPSDE(beta_min=1.0, beta_max=1.0), VPSDE(0.05, 12.0, t_min=1e-4),
                                  VESDE(), VESDE(sigma_min=0.002, sigma_max=80.0)], ids=repr)
def test_sigma_of_and_t_of_are_inverse_and_increasing(proc):
    t = torch.linspace(proc.t_min, 1.0, 2001, dtype=F64)
    sigma = proc.sigma_of(t)
    assert sigma.dtype == F64 and (sigma.diff() > 0).all()
    assert torch.allclose(proc.t_of(sigma), t, rtol=1e-12, atol=1e-12)
    assert proc.sigma_min == pytest.approx(float(sigma[0]), rel=1e-12)
    assert proc.sigma_max == pytest.approx(float(sigma[-1]), rel=1e-12)


@pytest.mark.parametrize("beta_min, beta_max", [(0.1, 20.0), (1.0, 1.0), (0.5, 3.0)])
def test_vp_scale_is_the_sdes_mean_decay_by_quadrature(beta_min, beta_max):
    proc = VPSDE(beta_min, beta_max)
    for t in (1e-3, 0.05, 0.3, 0.7, 1.0):
        integral, _ = integrate.quad(lambda u: beta_min + u * (beta_max - beta_min), 0.0, t)
        a = math.exp(-0.5 * integral)
        sigma = float(proc.sigma_of(torch.tensor(t, dtype=F64)))
        assert proc.scale(sigma) == pytest.approx(a, rel=1e-12)  # float in, float out
        assert isinstance(proc.scale(sigma), float)
        # ... and variance preserving: s^2 = 1 - a^2, so sigma = s / a
        assert sigma == pytest.approx(math.sqrt(1 - a * a) / a, rel=1e-9)
    tensor_scale = proc.scale(torch.tensor([0.5, 2.0]))
    assert tensor_scale.dtype == F64 and torch.allclose(tensor_scale, torch.tensor([0.5, 2.0], dtype=F64).pow(2).add(1).rsqrt())


def test_ve_sigma_is_geometric_and_unscaled():
    proc = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = torch.linspace(0, 1, 11, dtype=F64)
    sigma = proc.sigma_of(t)
    assert float(sigma[0]) == pytest.approx(0.01, rel=1e-12) and float(sigma[-1]) == pytest.approx(50.0, rel=1e-12)
    ratios = sigma[1:] / sigma[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 5000.0**0.1), rtol=1e-12)
    assert proc.scale(3.0) == 1.0 and torch.equal(proc.scale(sigma), torch.ones_like(sigma))


@pytest.mark.parametrize("proc", [VPSDE(), VESDE(sigma_max=50.0)], ids=repr)
def test_q_sample_has_the_marginal_moments(proc):
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((n, 1), 1.5, dtype=F64)
    for t in (0.1, 0.5, 0.9):
        a, s = (float(v) for v in proc.alpha_sigma(torch.tensor(t, dtype=F64)))
        x_t = proc.q_sample(x0, torch.full((n,), t, dtype=F64), torch.randn(n, 1, generator=gen, dtype=F64))
        assert float(x_t.mean()) == pytest.approx(1.5 * a, abs=5 * s / math.sqrt(n))
        assert float(x_t.std()) == pytest.approx(s, abs=5 * s / math.sqrt(2 * n))


def test_training_times_are_uniform_on_the_training_range():
    gen = torch.Generator().manual_seed(0)
    for proc, lo in ((VPSDE(t_min=1e-3), 1e-3), (VESDE(), 0.0)):
        t = proc.training_times(20_000, gen)
        assert t.min() >= lo and t.max() <= 1.0
        assert stats.kstest(t.numpy(), stats.uniform(lo, 1.0 - lo).cdf).pvalue > 1e-3


def test_the_network_sees_999_t_and_the_denoiser_maps_it_back():
    for proc in (VPSDE(), VESDE()):
        sigma = float(proc.sigma_of(torch.tensor(0.25, dtype=F64)))
        ts = proc.timestep(sigma, 3)
        assert ts.dtype == torch.float32 and torch.allclose(ts, torch.full((3,), 0.25 * 999))
        assert float(proc.sigma_of_timestep(ts)[0]) == pytest.approx(sigma, rel=1e-6)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (VPSDE, {"beta_min": 0.0}, r"beta_min must be a finite number > 0"),
        (VPSDE, {"beta_max": float("inf")}, r"beta_max must be a finite number > 0"),
        (VPSDE, {"beta_min": 5.0, "beta_max": 1.0}, r"need beta_min <= beta_max"),
        (VPSDE, {"t_min": 0.0}, r"t_min .* must lie in \(0, 1\)"),
        (VPSDE, {"t_min": 1.0}, r"t_min .* must lie in \(0, 1\)"),
        (VPSDE, {"prediction": "score"}, r"unknown prediction type 'score' for VPSDE"),
        (VPSDE, {"clip_x0": -1.0}, r"clip_x0 .* must be a finite number > 0 or None"),
        (VESDE, {"sigma_min": -0.01}, r"sigma_min must be a finite number > 0"),
        (VESDE, {"sigma_min": 1.0, "sigma_max": 1.0}, r"need sigma_min < sigma_max"),
        (VESDE, {"sigma_max": "50"}, r"sigma_max must be a finite number > 0"),
        (VESDE, {"prediction": "epsilon"}, r"unknown prediction type 'epsilon' for VESDE"),
    ],
)
def test_bad_options_are_named(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
