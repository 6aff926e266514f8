"""difflab's EDM (Karras et al. 2022) against diffusers' implementations of the same paper.

k-diffusion cannot be the peer: its package imports torchvision on import (k_diffusion/utils.py,
reached from k_diffusion/sampling.py), which difflab does not install. diffusers, already the
test extra, has the pieces of EDM that difflab implements:

1. ``EDMEulerScheduler.precondition_inputs / precondition_noise / precondition_outputs``: c_in,
   c_noise = ln(sigma) / 4, c_skip and c_out of eq. 7 and table 1. ``EDMPrecond(net,
   time_scale=1)`` gives the network EDM's own time input c_noise, so both wrap the same
   network into the same denoiser. The EDM loss weight lambda = 1 / c_out^2 makes difflab's
   loss on D the loss on the network's own target (x0 - c_skip x) / c_out (k-diffusion's
   ``Denoiser.loss``), built here from diffusers' coefficients.
2. ``EDMEulerScheduler.set_timesteps``: the rho = 7 noise levels; its Euler loop; its churn
   (Algorithm 2, lines 4-6) with the same generator.
3. ``HeunDiscreteScheduler`` with Karras sigmas: the deterministic Heun sampler (Algorithm 1).

Heun with churn as one piece has no installable peer (diffusers' KarrasVeScheduler, EDM's
Algorithm 2, is gone from diffusers 0.42: a dummy object). difflab's Heun churns by the function
its Euler sampler uses, so the two checks above cover it in parts.

Conventions that differ, made equal here (each run starts from the same state):

- Start: difflab starts from x = x_T sqrt(1 + sigma_0^2), the spread of unit-variance data at
  sigma_0; diffusers' Karras-sigma schedulers from sigma_0 x_T. The diffusers loops get
  difflab's state.
- EDMEulerScheduler.step adds the churn noise after the network has seen the sample: it is
  Algorithm 2 only for a network that ignores its inputs, which the churn test uses (the exact
  denoisers are compared without churn).
- difflab caps sigma_hat at sigma_0 (the network is never asked above its top level); EDM's
  S_tmax (50 < sigma_max = 80) keeps the cap from acting, and so do the cases here.

Precision: diffusers keeps its sigmas and c_noise in float32 (EDMEulerScheduler also casts the
state to float32 in ``step``): the samples agree to float32 rounding, 1e-5 and below.
"""

import math

import pytest
import torch
from torch import nn

import difflab as dl

diffusers = pytest.importorskip("diffusers")  # the test extra: pip install -e ".[test]"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

N, D = 64, 8


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


class TinyNet(nn.Module):
    """F(x, c_noise): a fixed random float64 network whose output depends on its time input."""

    def __init__(self, dim: int = D, width: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w_in = nn.Parameter(torch.randn(dim, width, generator=g, dtype=torch.float64) / math.sqrt(dim))
        self.w_t = nn.Parameter(torch.randn(width, generator=g, dtype=torch.float64))
        self.w_out = nn.Parameter(torch.randn(width, dim, generator=g, dtype=torch.float64) / math.sqrt(width))
        self.requires_grad_(False)

    def forward(self, x, t):
        return torch.tanh(x @ self.w_in + t.to(x.dtype)[:, None] * self.w_t) @ self.w_out


def diffusers_denoiser(sched, net, x, sigma):
    """D(x, sigma) by diffusers' EDM preconditioning around ``net``."""
    s = sigma[:, None]
    f = net(sched.precondition_inputs(x, s), sched.precondition_noise(sigma))
    return sched.precondition_outputs(x, f, s)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)
    noise = torch.randn(N, D, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.empty(N, dtype=torch.float64).uniform_(math.log(0.002), math.log(80.0), generator=g))
    return x0, noise, sigma


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_preconditioning_is_diffusers(data, sigma_data):
    x0, noise, sigma = data
    net = TinyNet()
    sched = diffusers.EDMEulerScheduler(sigma_data=sigma_data)
    x = x0 + sigma[:, None] * noise
    ours = dl.models.EDMPrecond(net, sigma_data=sigma_data, time_scale=1.0)(x, sigma)
    assert max_diff(ours, diffusers_denoiser(sched, net, x, sigma)) < 1e-12
    # the network's own time input is EDM's c_noise = ln(sigma) / 4, diffusers' timestep
    assert torch.allclose(dl.models.EDMPrecond(net, sigma_data).coefficients(sigma)[3],
                          sched.precondition_noise(sigma), rtol=0, atol=1e-15)


@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_loss_is_the_loss_on_the_network_target(data, sigma_data):
    """lambda(sigma) ||D - x0||^2 = ||F - (x0 - c_skip x) / c_out||^2 (k-diffusion's Denoiser.loss),
    with c_skip and c_out read off diffusers' precondition_outputs (affine in the network output)."""
    x0, noise, sigma = data
    net = TinyNet()
    sched = diffusers.EDMEulerScheduler(sigma_data=sigma_data)
    proc = dl.processes.EDM(sigma_data=sigma_data)
    precond = dl.models.EDMPrecond(net, sigma_data, time_scale=1.0)
    ours = proc.training_loss(precond, x0, t=sigma, noise=noise, reduction="none")
    s = sigma[:, None]
    c_skip = sched.precondition_outputs(torch.ones_like(s), torch.zeros_like(s), s)
    c_out = sched.precondition_outputs(torch.zeros_like(s), torch.ones_like(s), s)
    x = x0 + s * noise
    f = net(sched.precondition_inputs(x, s), sched.precondition_noise(sigma))
    theirs = ((f - (x0 - c_skip * x) / c_out) ** 2).mean(1)
    # lambda ||D - x0||^2 in float64: equal up to the float32 weight
    weighted = proc.loss_weight(sigma).double() * ((precond(x, sigma) - x0) ** 2).mean(1)
    assert torch.allclose(weighted, theirs, rtol=1e-6, atol=0)
    # training_loss subtracts D and x0 in float32: at sigma = 0.002, D - x0 is 1e-3 of x0, so 1e-4
    assert torch.allclose(ours.double(), theirs, rtol=1e-4, atol=0)
    unweighted = proc.training_loss(precond, x0, t=sigma, noise=noise, weighting="uniform", reduction="none")
    assert not torch.allclose(unweighted.double(), theirs, rtol=1e-2)  # the weight is what makes them equal


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(1)
    proc = dl.processes.EDM()
    means = 0.8 * torch.randn(3, D, generator=g, dtype=torch.float64)
    model = dl.models.GaussianMixtureDenoiser(proc, means, 0.3)
    return proc, model


class ExactNetwork(nn.Module):
    """The network F(c_in x, c_noise) whose preconditioned output is the mixture's exact denoiser:
    F = (D(x, sigma) - c_skip x) / c_out (eq. 7 solved for F), sigma = exp(4 c_noise)."""

    def __init__(self, model: dl.models.GaussianMixtureDenoiser, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.model, self.sigma_data = model, sigma_data

    def forward(self, x_in, c_noise):
        sigma = torch.exp(4 * c_noise.double())[:, None]
        total = sigma**2 + self.sigma_data**2
        x = x_in.double() * total.sqrt()
        denoised = self.model(x, sigma[:, 0])
        c_skip, c_out = self.sigma_data**2 / total, sigma * self.sigma_data / total.sqrt()
        return ((denoised - c_skip * x) / c_out).to(x_in.dtype)


@pytest.mark.parametrize("steps", [6, 18])
def test_karras_levels_and_euler_are_diffusers(mixture, steps):
    proc, model = mixture
    sched = diffusers.EDMEulerScheduler()  # sigma_min 0.002, sigma_max 80, rho 7: EDM's
    sched.set_timesteps(steps)
    ours = dl.samplers.sampling_sigmas(proc, steps, "karras")
    assert torch.allclose(sched.sigmas.double(), ours, rtol=1e-6, atol=0)  # float32 levels in diffusers
    noise = torch.randn(N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = noise * math.sqrt(1 + float(ours[0]) ** 2)
    net = ExactNetwork(model)
    for t in sched.timesteps:
        x = sched.step(net(sched.scale_model_input(x, t), t.expand(N)), t, x).prev_sample
    sample = dl.sample(dl.models.EDMPrecond(net, time_scale=1.0), proc, noise.shape, "euler", steps=steps,
                       spacing="karras", noise=noise)
    assert max_diff(sample, x) < 1e-5


def run_diffusers_heun(model, x, steps):
    """diffusers' HeunDiscreteScheduler loop on its Karras levels; the network gets the scheduler's
    own sigma (its float32 value) and returns the eps-prediction diffusers expects."""
    sched = diffusers.HeunDiscreteScheduler(use_karras_sigmas=True)
    sched.set_timesteps(steps)
    levels = torch.cat([sched.sigmas[:1], sched.sigmas[1::2]]).double()  # each level once, then 0
    x = x * math.sqrt(1 + float(levels[0]) ** 2)  # difflab's start (see the module docstring)
    for t in sched.timesteps:
        sigma = sched.sigmas[sched.step_index if sched.step_index is not None else 0].double()
        x_ve = sched.scale_model_input(x, t) * (1 + sigma**2).sqrt()
        eps = (x_ve - model(x_ve, sigma.expand(len(x)))) / sigma
        x = sched.step(eps, t, x).prev_sample
    return x, levels


@pytest.mark.parametrize("steps", [5, 12])
def test_heun_is_diffusers(mixture, steps):
    """The deterministic Heun (EDM's Algorithm 1: 2 steps - 1 calls, Euler into sigma = 0) on the
    levels of diffusers' HeunDiscreteScheduler with Karras sigmas (its range, from its DDPM
    schedule: sigma in [0.029, 25.1])."""
    proc, model = mixture
    noise = torch.randn(N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    theirs, levels = run_diffusers_heun(model, noise, steps)
    ours = dl.sample(model, proc, noise.shape, "heun", sigmas=levels, noise=noise)
    assert max_diff(ours, theirs) < 1e-5
    # the same levels from difflab's own rho = 7 spacing over diffusers' range
    edm_range = dl.processes.EDM(sigma_min=float(levels[-2]), sigma_max=float(levels[0]))
    karras = dl.sample(model, edm_range, noise.shape, "heun", steps=steps, spacing="karras", noise=noise)
    assert max_diff(karras, theirs) < 1e-5
    euler = dl.sample(model, proc, noise.shape, "euler", sigmas=levels, noise=noise)
    assert max_diff(euler, theirs) > 1e-3  # a second-order difference, not an Euler run


class ConstantNetwork(nn.Module):
    """F(x, c_noise) = c, whatever its inputs: EDMEulerScheduler evaluates the network before it
    adds the churn noise, which makes no difference only for a network that ignores its inputs."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x_in, c_noise):
        return self.c.to(x_in.dtype)


@pytest.mark.parametrize("s_churn,steps,s_tmin,s_tmax", [(40.0, 18, 0.05, 50.0), (80.0, 10, 0.0, 79.0),
                                                         (5.0, 12, 0.3, 10.0)])
def test_churn_is_diffusers(s_churn, steps, s_tmin, s_tmax):
    """EDM's churn (Algorithm 2, lines 4-6: gamma = min(S_churn / N, sqrt(2) - 1) inside [S_tmin,
    S_tmax], x_hat = x + S_noise sqrt(sigma_hat^2 - sigma^2) z) and the Euler step from sigma_hat,
    against EDMEulerScheduler.step with the same generator. difflab's Heun churns by the same
    function (samplers/euler.py ``churn``) and is checked without churn above."""
    proc = dl.processes.EDM()
    g = torch.Generator().manual_seed(4)
    net = ConstantNetwork(torch.randn(N, D, generator=g, dtype=torch.float64))
    noise = torch.randn(N, D, generator=g, dtype=torch.float64)
    opts = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": 1.007}
    sched = diffusers.EDMEulerScheduler()
    sched.set_timesteps(steps)
    x = noise * math.sqrt(1 + float(sched.sigmas[0]) ** 2)
    gen = torch.Generator().manual_seed(5)
    for t in sched.timesteps:
        x = sched.step(net(sched.scale_model_input(x, t), t), t, x, generator=gen, **opts).prev_sample
    assert sched.sigmas[0] > s_tmax  # difflab's cap of sigma_hat at sigma_0 never acts (module docstring)
    precond = dl.models.EDMPrecond(net, time_scale=1.0)
    ours = dl.sample(precond, proc, noise.shape, "euler", sigmas=sched.sigmas.double(), noise=noise,
                     generator=torch.Generator().manual_seed(5), **opts)
    assert max_diff(ours, x) < 1e-5
    ode = dl.sample(precond, proc, noise.shape, "euler", sigmas=sched.sigmas.double(), noise=noise)
    assert max_diff(ode, x) > 1e-2  # the churn is really there
