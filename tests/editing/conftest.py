"""Fixtures of the editing tests: the process and the two-mode mixture whose exact denoiser is
Bayes-optimal for its data, so what the tests see is the editing method itself (plus the
sampler's discretisation), checked against closed forms.

``proc``/``mixture``: the DDPM chain. ``each_proc``/``each_mixture``: the same data on every
process (the chain, the VP and VE SDEs, EDM, flow matching; parametrized). ``matched_procs``:
the five processes over one range of noise levels, where they are one process in VE form."""

import math

import pytest

import difflab as dl

PROCESS_NAMES = ("ddpm", "vp", "ve", "edm", "flow")
MEANS, STD = [[-1.5, -1.5], [1.5, 1.5]], 0.5


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear(1000))


@pytest.fixture(scope="module")
def mixture(proc):
    """Two modes separated along both coordinates: knowing x1 decides the mode of x2."""
    return dl.models.GaussianMixtureDenoiser(proc, MEANS, STD)


@pytest.fixture(scope="module", params=PROCESS_NAMES)
def each_proc(request):
    """The DDPM chain of ``proc`` or a continuous-time process with its published defaults."""
    if request.param == "ddpm":
        return dl.GaussianDiffusion(dl.schedules.linear(1000))
    return dl.processes.build(request.param)


@pytest.fixture(scope="module")
def each_mixture(each_proc):
    """``mixture``'s data, its exact denoiser in ``each_proc``'s parameterisation."""
    return dl.models.GaussianMixtureDenoiser(each_proc, MEANS, STD)


@pytest.fixture(scope="module")
def matched_procs():
    """{name: process} for the five processes, each sampled over the DDPM chain's noise levels
    [sigma_min, sigma_max] = [0.0100, 157.4]: with the same spacing ("karras", which reads only
    that range) the samplers see the same levels on each, and in VE form x = x_t / a they are the
    same process. An editing method written in VE form then gives the same output on each."""
    ddpm = dl.GaussianDiffusion(dl.schedules.linear(1000))
    lo, hi = ddpm.sigma_min, ddpm.sigma_max
    # VP SDE: sigma(t)^2 = exp(beta_min t + (beta_max - beta_min) t^2 / 2) - 1, so sigma(1) = hi
    # for beta_max = 2 log(1 + hi^2) - beta_min; t_min where sigma = lo
    beta_max = 2 * math.log1p(hi * hi) - 0.1
    b = beta_max - 0.1
    t_min = (-0.1 + math.sqrt(0.01 + 2 * b * math.log1p(lo * lo))) / b
    return {
        "ddpm": ddpm,
        "vp": dl.processes.VPSDE(beta_min=0.1, beta_max=beta_max, t_min=t_min),
        "ve": dl.processes.VESDE(sigma_min=lo, sigma_max=hi),
        "edm": dl.processes.EDM(sigma_min=lo, sigma_max=hi),
        "flow": dl.processes.FlowMatching(t_min=lo / (1 + lo), t_max=hi / (1 + hi)),  # sigma = t / (1 - t)
    }
