"""difflab's score SDEs (Song et al. 2021) against independent implementations.

VE SDE, against diffusers' ``ScoreSdeVeScheduler`` (a port of their code's VE predictor and
Langevin corrector):

- the noise levels sigma(t) = sigma_min (sigma_max / sigma_min)^t at the scheduler's times, and
  its grid of sampling levels (geometric, N levels from sigma_max down to sigma_min);
- Euler-Maruyama (their "reverse diffusion" predictor) and predictor-corrector sampling on that
  grid, with the same generator: the same samples to float32 rounding.

Conventions that differ, made equal here:

- Order. Their code (and ``ScoreSdeVePipeline``) runs corrector then predictor at each level;
  their paper's Algorithms 2-3 (and difflab, as the issue asks) run the predictor first, then
  correct at the new level. The two orders give the same sequence of updates but for one
  corrector pass at sigma_max before the first predictor step, which the diffusers loop below
  leaves out.
- Level of the network. The pipeline evaluates the score at sigma(t_i) of its continuous times
  (t_i down to sampling_eps) and steps with its geometric levels: they differ by a factor
  (sigma_max / sigma_min)^(i eps / (N - 1)) (1e-4 for eps = 1e-5). The loop gives the score the
  level the step integrates at.
- The last level: diffusers' grid ends at sigma_min and its last predictor step goes to 0 (its
  mean, the denoised x, is the pipeline's output: difflab's final D). difflab's ``"uniform"``
  spacing with the same number of network evaluations does not visit t = 0 (sigma_min): its
  levels are t = 1, 1 - 1/N, ..., 1/N, then 0 (see ``test_ve_levels``).

VP SDE, against Meta's ``flow_matching`` (``VPScheduler``, Song et al.'s VP path with
beta_min, beta_max, in its time s = 1 - t with s = 1 data): the marginal coefficients a(t) and
s(t), x_t, the inverse of the noise level (its ``snr_inverse``) and the x0 of an eps-prediction
(``AffineProbPath.epsilon_to_target``); and the probability-flow ODE: difflab's Heun in the
samplers' VE coordinates ends where flow_matching's adaptive solver, integrating its VP
velocity field in x_t, ends.
"""

import math

import pytest
import torch
from ode_reference import heun_errors, second_order

import difflab as dl

N, D = 64, 8


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.fixture(scope="module")
def means():
    return 0.8 * torch.randn(3, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ------------------------------------------------------------------------------------- VE SDE
def ve_scheduler(levels: int, sigma_min: float, sigma_max: float, snr: float = 0.16):
    diffusers = pytest.importorskip("diffusers")  # the test extra: pip install -e ".[test]"
    sched = diffusers.ScoreSdeVeScheduler(sigma_min=sigma_min, sigma_max=sigma_max, snr=snr)
    sched.set_timesteps(levels)
    sched.set_sigmas(levels)
    return sched


@pytest.mark.parametrize("sigma_min,sigma_max,levels", [(0.01, 50.0, 11), (0.002, 378.0, 40)])
def test_ve_levels(sigma_min, sigma_max, levels):
    proc = dl.processes.VESDE(sigma_min, sigma_max)
    sched = ve_scheduler(levels, sigma_min, sigma_max)
    assert torch.allclose(proc.sigma_of(sched.timesteps.double()), sched.sigmas.double(), rtol=2e-6, atol=0)
    grid = sched.discrete_sigmas.double().flip(0)  # sigma_max ... sigma_min
    ours = dl.samplers.sampling_sigmas(proc, levels - 1, "uniform")
    assert torch.allclose(ours[:-1], grid[:-1], rtol=1e-6, atol=0) and ours[-1] == 0  # all but sigma_min


def run_score_sde_ve(model, proc, sched, x, corrector_steps, generator):
    """diffusers' VE predictor-corrector loop, predictor first (see the module docstring)."""
    den = dl.samplers.Denoiser(model, proc)
    levels = sched.discrete_sigmas.flip(0).tolist()

    def score(x, sigma):  # the model's output in their convention
        return (den(x, sigma) - x) / sigma**2

    for i, t in enumerate(sched.timesteps):
        if i > 0:
            for _ in range(corrector_steps):
                x = sched.step_correct(score(x, levels[i]), x, generator=generator).prev_sample
        out = sched.step_pred(score(x, levels[i]), t, x, generator=generator)
        x = out.prev_sample
    return out.prev_sample_mean


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("sampler,corrector_steps,levels", [("euler_maruyama", 0, 30), ("pc", 1, 30),
                                                            ("pc", 2, 12)])
def test_ve_samplers_are_diffusers(means, sampler, corrector_steps, levels):
    """Float32 states: diffusers draws its corrector noise in float32 whatever the state."""
    proc = dl.processes.VESDE(0.01, 20.0)
    model = dl.models.GaussianMixtureDenoiser(proc, means, 0.3)
    sched = ve_scheduler(levels, 0.01, 20.0)
    sigmas = torch.cat([sched.discrete_sigmas.double().flip(0), torch.zeros(1, dtype=torch.float64)])
    noise = torch.randn(N, D, generator=torch.Generator().manual_seed(1))
    start = noise * math.sqrt(1 + float(sigmas[0]) ** 2)
    theirs = run_score_sde_ve(model, proc, sched, start, corrector_steps, torch.Generator().manual_seed(2))
    opts = {"snr": 0.16, "corrector_steps": corrector_steps} if sampler == "pc" else {}
    ours = dl.sample(model, proc, noise.shape, sampler, sigmas=sigmas, noise=noise,
                     generator=torch.Generator().manual_seed(2), **opts)
    assert ours.dtype == theirs.dtype == torch.float32
    assert max_diff(ours, theirs) < 1e-4
    other = dl.sample(model, proc, noise.shape, sampler, sigmas=sigmas, noise=noise,
                      generator=torch.Generator().manual_seed(3), **opts)
    assert max_diff(other, theirs) > 1e-2  # the noise matters: the agreement is draw for draw


# ------------------------------------------------------------------------------------- VP SDE
@pytest.mark.parametrize("beta_min,beta_max", [(0.1, 20.0), (0.5, 8.0)])
def test_vp_marginals_are_flow_matching(beta_min, beta_max):
    fm = pytest.importorskip("flow_matching.path")  # the test extra: pip install -e ".[test]"
    proc = dl.processes.VPSDE(beta_min, beta_max)
    path = fm.AffineProbPath(fm.scheduler.VPScheduler(beta_min, beta_max))
    t = torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    coef = path.scheduler(1 - t)  # their time runs from noise (0) to data (1)
    a, s = proc.alpha_sigma(t)
    assert torch.allclose(a, coef.alpha_t, rtol=1e-12) and torch.allclose(s, coef.sigma_t, rtol=1e-10)
    sigma = proc.sigma_of(t)
    assert torch.allclose(proc.scale(sigma), coef.alpha_t, rtol=1e-12)  # the samplers' a = 1 / sqrt(1 + sigma^2)
    assert torch.allclose(proc.t_of(sigma), 1 - path.scheduler.snr_inverse(1 / sigma), rtol=1e-9, atol=1e-12)

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(50, D, generator=g, dtype=torch.float64), torch.randn(50, D, generator=g, dtype=torch.float64)
    x_t = proc.q_sample(x0, t, eps)
    assert torch.allclose(x_t, path.sample(x_0=eps, x_1=x0, t=1 - t).x_t, rtol=0, atol=1e-12)
    eps_hat = torch.randn(50, D, generator=g, dtype=torch.float64)  # any network output
    theirs = path.epsilon_to_target(eps_hat, x_t, (1 - t)[:, None])
    assert torch.allclose(proc.predict_x0(x_t, t, eps_hat), theirs, rtol=1e-9, atol=1e-9)


def test_vp_probability_flow_is_flow_matching(means):
    """The same ODE: difflab's Heun in the samplers' VE coordinates (equal steps in t, stopped at
    t_min) converges at second order to where flow_matching's dopri5 (tolerance 1e-10), on its VP
    velocity field dx_t/dt from the same eps-network, ends."""
    fm_path = pytest.importorskip("flow_matching.path")  # the test extra: pip install -e ".[test]"
    fm_solver = pytest.importorskip("flow_matching.solver")
    proc = dl.processes.VPSDE()
    model = dl.models.GaussianMixtureDenoiser(proc, means, 0.3)
    path = fm_path.AffineProbPath(fm_path.scheduler.VPScheduler(proc.beta_min, proc.beta_max))
    t_max = 0.99  # below 1, where the VP marginal is not yet pure noise: the start matters

    def velocity(x, t):  # their time s = 1 - t; the network receives difflab's 999 t
        t_ours = (1 - t).expand(len(x)).double()
        return path.epsilon_to_velocity(model(x, proc.timestep_scale * t_ours), x, t)

    x_start = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solver = fm_solver.ODESolver(velocity_model=velocity)
    theirs = solver.sample(x_start, step_size=None, method="dopri5", atol=1e-10, rtol=1e-10,
                           time_grid=torch.tensor([1 - t_max, 1 - proc.t_min], dtype=torch.float64))
    errors = heun_errors(model, proc, x_start, theirs, t_max)
    assert errors[-1] < 2e-4
    assert second_order(errors), errors  # 4 per halving: Heun's order
