"""EDM (difflab.processes.edm, and its preconditioning dl.models.EDMPrecond) against Karras et al.
2022, table 1: the log-normal training noise levels, the loss weight lambda(sigma), c_skip / c_out /
c_in / c_noise, and the properties they are chosen for (eq. 7-8 and appendix B.6): unit-variance
network inputs and training targets for data of standard deviation sigma_data."""

import math

import pytest
import torch
from scipy import stats

import difflab as dl
from difflab.processes import EDM

F64 = torch.float64
SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0], dtype=F64)


class Zero(torch.nn.Module):
    def forward(self, x, t, cond=None):
        return torch.zeros_like(x)


def test_training_noise_levels_are_log_normal():
    proc = EDM(P_mean=-1.2, P_std=1.2)
    sigma = proc.training_times(50_000, torch.Generator().manual_seed(0))
    log_sigma = sigma.double().log()
    n = len(log_sigma)
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=5 * 1.2 / math.sqrt(n))
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=5 * 1.2 / math.sqrt(2 * n))
    assert stats.kstest(log_sigma.numpy(), stats.norm(-1.2, 1.2).cdf).pvalue > 1e-3
    other = EDM(P_mean=0.5, P_std=0.3).training_times(50_000, torch.Generator().manual_seed(0))
    assert stats.kstest(other.double().log().numpy(), stats.norm(0.5, 0.3).cdf).pvalue > 1e-3


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_loss_weight_is_lambda_and_the_inverse_square_of_c_out(sigma_data):
    proc = EDM(sigma_data=sigma_data)
    w = proc.loss_weight(SIGMAS)
    lam = (SIGMAS**2 + sigma_data**2) / (SIGMAS * sigma_data) ** 2  # eq. 8 with table 1's lambda
    assert torch.allclose(w.double(), lam, rtol=1e-6)
    c_out = dl.models.EDMPrecond(Zero(), sigma_data).coefficients(SIGMAS)[1]
    assert torch.allclose(w.double(), c_out**-2, rtol=1e-6)
    assert torch.equal(proc.loss_weight(SIGMAS, "uniform"), torch.ones(len(SIGMAS)))


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_preconditioning_is_table_1(sigma_data):
    pre = dl.models.EDMPrecond(Zero(), sigma_data)
    c_skip, c_out, c_in, c_noise = pre.coefficients(SIGMAS)
    sd2, s2 = sigma_data**2, SIGMAS**2
    assert torch.allclose(c_skip, sd2 / (s2 + sd2), rtol=1e-12)
    assert torch.allclose(c_out, SIGMAS * sigma_data / (s2 + sd2).sqrt(), rtol=1e-12)
    assert torch.allclose(c_in, 1 / (s2 + sd2).sqrt(), rtol=1e-12)
    assert torch.allclose(c_noise, SIGMAS.log() / 4, rtol=1e-12)


def test_a_zero_network_gives_the_skip_connection_alone():
    pre = dl.models.EDMPrecond(Zero(), 0.5)
    x = torch.randn(len(SIGMAS), 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    c_skip = 0.25 / (SIGMAS**2 + 0.25)
    assert torch.allclose(pre(x, SIGMAS), c_skip[:, None] * x, rtol=1e-12)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_network_input_and_training_target_have_unit_variance(sigma_data):
    """For data of std sigma_data, x = x0 + sigma n has variance sigma^2 + sigma_data^2, so c_in x
    has unit variance; the network's effective target F = (x0 - c_skip x) / c_out has variance
    (c_skip^2 sigma^2 + (1 - c_skip)^2 sigma_data^2) / c_out^2 = 1 (appendix B.6): in closed form,
    and over draws."""
    c_skip, c_out, c_in, _ = dl.models.EDMPrecond(Zero(), sigma_data).coefficients(SIGMAS)
    var_x = SIGMAS**2 + sigma_data**2
    assert torch.allclose(c_in**2 * var_x, torch.ones_like(SIGMAS), rtol=1e-12)
    var_f = (c_skip**2 * SIGMAS**2 + (1 - c_skip) ** 2 * sigma_data**2) / c_out**2
    assert torch.allclose(var_f, torch.ones_like(SIGMAS), rtol=1e-12)
    n = 100_000
    gen = torch.Generator().manual_seed(1)
    # data with std sigma_data but not Gaussian: a two-point mixture, +-sigma_data
    x0 = sigma_data * (2 * torch.randint(0, 2, (n, 1), generator=gen, dtype=F64) - 1)
    for i, sigma in enumerate(SIGMAS.tolist()):
        x = x0 + sigma * torch.randn(n, 1, generator=gen, dtype=F64)
        target = (x0 - c_skip[i] * x) / c_out[i]
        assert float(target.var()) == pytest.approx(1.0, abs=0.03)
        assert float((c_in[i] * x).var()) == pytest.approx(1.0, abs=0.03)


def test_training_loss_of_the_preconditioned_model_is_lambda_weighted_denoising(gen):
    """With t = sigma and a = 1, EDM's loss is lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2, here
    for the zero network: D = c_skip x."""
    proc = EDM(sigma_data=0.5)
    model = dl.models.EDMPrecond(Zero(), 0.5)
    x0 = torch.randn(len(SIGMAS), 4, dtype=F64, generator=gen)
    noise = torch.randn(len(SIGMAS), 4, dtype=F64, generator=gen)
    per = proc.training_loss(model, x0, t=SIGMAS, noise=noise, reduction="none")
    x = x0 + SIGMAS[:, None] * noise
    d = 0.25 / (SIGMAS[:, None] ** 2 + 0.25) * x
    lam = (SIGMAS**2 + 0.25) / (SIGMAS**2 * 0.25)
    assert torch.allclose(per.double(), lam * ((d - x0) ** 2).mean(1), rtol=1e-5)


def test_time_is_the_noise_level():
    proc = EDM()
    s = torch.tensor([0.002, 1.0, 80.0], dtype=F64)
    assert torch.equal(proc.sigma_of(s), s) and torch.equal(proc.t_of(s), s)
    assert proc.scale(2.0) == 1.0 and (proc.sigma_min, proc.sigma_max) == (0.002, 80.0)
    assert torch.allclose(proc.timestep(7.0, 2), torch.full((2,), 7.0))  # the model (EDMPrecond) receives sigma


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma_min": 0.0}, r"sigma_min must be a finite number > 0"),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, r"need sigma_min < sigma_max"),
        ({"sigma_data": -0.5}, r"sigma_data must be a finite number > 0 .*standard deviation"),
        ({"P_mean": float("nan")}, r"P_mean .* must be a finite number"),
        ({"P_std": 0.0}, r"P_std must be a finite number > 0"),
        ({"prediction": "eps"}, r"EDM's network is a denoiser D\(x, sigma\) .*EDMPrecond"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EDM(**kwargs)
