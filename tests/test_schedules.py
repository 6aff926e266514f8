import math

import pytest
import torch

import difflab as dl

NAMES = ["linear", "scaled_linear", "cosine", "sqrt", "sigmoid"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_betas_in_unit_interval_and_abar_strictly_decreasing(name, T):
    s = dl.schedules.get(name, T=T)
    assert s.T == T and s.betas.dtype == torch.float64 and s.betas.shape == (T,)
    assert ((s.betas > 0) & (s.betas < 1)).all()
    assert torch.allclose(s.alphas, 1 - s.betas)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()


def test_linear_endpoints():
    s = dl.schedules.linear(1000)
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    # equal increments
    d = s.betas.diff()
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-9)
    # DDPM's abar_T, a published number (Ho et al. 2020 use L_T ~ 1e-5 bits/dim): abar_T ~ 4.04e-5
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_matches_closed_form_where_unclipped():
    T, s_off = 1000, 0.008
    s = dl.schedules.cosine(T, s=s_off, max_beta=0.999)
    f = lambda u: math.cos((u + s_off) / (1 + s_off) * math.pi / 2) ** 2
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T)], dtype=torch.float64)
    unclipped = s.betas < 0.999
    # the clip only touches the end of the schedule
    first_clip = int((~unclipped).nonzero()[0]) if (~unclipped).any() else T
    assert first_clip > 0.99 * T
    assert torch.allclose(s.alphas_cumprod[:first_clip], expected[:first_clip], rtol=1e-10, atol=1e-14)
    assert s.betas.max() <= 0.999


def test_sqrt_matches_closed_form():
    T, off = 1000, 1e-4
    s = dl.schedules.sqrt(T, s=off)
    f = lambda u: 1 - math.sqrt(u + off)
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T - 1)], dtype=torch.float64)
    assert torch.allclose(s.alphas_cumprod[: T - 1], expected, rtol=1e-9)


def test_sigmoid_and_scaled_linear_definitions():
    s = dl.schedules.sigmoid(1000, 1e-4, 0.02)
    u = torch.sigmoid(torch.linspace(-6, 6, 1000, dtype=torch.float64))
    assert torch.allclose(s.betas, 1e-4 + (0.02 - 1e-4) * u)
    sl = dl.schedules.scaled_linear(1000)
    assert sl.betas[0].item() == pytest.approx(0.00085) and sl.betas[-1].item() == pytest.approx(0.012)
    assert torch.allclose(sl.betas.sqrt().diff(), sl.betas.sqrt().diff().mean().expand(999), rtol=1e-9)


def test_get_aliases_and_kwargs():
    a = dl.schedules.get("squaredcos_cap_v2", T=50)
    b = dl.schedules.cosine(50)
    assert torch.equal(a.betas, b.betas)
    assert torch.equal(dl.schedules.get("linear", T=20, beta_end=0.05).betas, dl.schedules.linear(20, beta_end=0.05).betas)


def test_bad_schedule_input():
    with pytest.raises(ValueError, match="unknown schedule 'foo'.*cosine"):
        dl.schedules.get("foo")
    for T in (0, -5, 2.5):
        with pytest.raises(ValueError, match="T"):
            dl.schedules.linear(T)
    with pytest.raises(ValueError, match="beta_start"):
        dl.schedules.linear(10, beta_start=0.5, beta_end=0.1)
    with pytest.raises(TypeError, match="cosine"):
        dl.schedules.get("cosine", T=10, beta_end=0.1)
    with pytest.raises(ValueError, match="open interval"):
        dl.schedules.NoiseSchedule(torch.tensor([0.1, 1.0]))
