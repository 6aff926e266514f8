"""difflab's flow matching against independent implementations.

- Meta's ``flow_matching`` (``CondOTProbPath``, Lipman et al. 2023/2024): the path x_t, its
  velocity target, the conversions between velocity, x0 and eps, and its ODE solvers. Their
  time runs the other way: s = 0 is noise, s = 1 data, x_s = s x1 + (1 - s) x0 with x0 the noise;
  difflab's t = 1 - s is the noise level (SD3's convention), and difflab's velocity eps - x0 is
  minus theirs.
- POT (``ot.emd``, the exact network-simplex solver behind torchcfm's OT-CFM ``OTPlanSampler``;
  torchcfm itself needs torchvision, which difflab does not install): the minibatch optimal
  transport pairing and its cost.
- diffusers: ``FlowMatchEulerDiscreteScheduler`` (SD3's sampler: t = 1 noise, the network
  receiving 1000 t) and ``training_utils.compute_density_for_timestep_sampling`` (SD3's
  logit-normal training times).

Sampling starts at t_max = 0.999 from x_t = x_T sqrt(1 + sigma_0^2) / (1 + sigma_0) (difflab's
start in the samplers' VE coordinates, mapped to the flow's state); each peer starts there.
"""

import math

import numpy as np
import pytest
import torch
from ode_reference import heun_errors, second_order

import difflab as dl
from difflab.processes import ot_coupling

fm_path = pytest.importorskip("flow_matching.path")  # the test extra: pip install -e ".[test]"

N, D = 64, 8


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = 0.7 * torch.randn(N, D, generator=g, dtype=torch.float64) + 0.3
    noise = torch.randn(N, D, generator=g, dtype=torch.float64)
    t = torch.rand(N, generator=g, dtype=torch.float64)
    return x0, noise, t


@pytest.fixture(scope="module")
def mixture():
    proc = dl.processes.FlowMatching()
    means = 0.8 * torch.randn(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return proc, dl.models.GaussianMixtureDenoiser(proc, means, 0.3)


def start_state(proc, noise, sigma_0: float):
    """x_t at the top level from difflab's starting noise x_T (module docstring)."""
    return noise * math.sqrt(1 + sigma_0**2) * proc.scale(sigma_0)


# ------------------------------------------------------------------------ path and targets
def test_path_and_velocity_target_are_flow_matching(batch):
    x0, noise, t = batch
    proc = dl.processes.FlowMatching()
    theirs = fm_path.CondOTProbPath().sample(x_0=noise, x_1=x0, t=1 - t)
    assert max_diff(proc.q_sample(x0, t, noise), theirs.x_t) < 1e-15
    assert max_diff(proc.target(x0, noise, t), -theirs.dx_t) < 1e-15


def test_training_loss_is_the_flow_matching_loss(batch):
    """difflab's loss with given t and noise is their conditional flow matching loss
    ||u_theta(x_s, s) - dx_s/ds||^2, for any network."""
    x0, noise, t = batch
    proc = dl.processes.FlowMatching()

    def net(x, time):  # any function of (x, t): the network sees 1000 t
        return torch.sin(x + time[:, None] / 1000.0) * (1 + x.flip(1))

    ours = proc.training_loss(net, x0, t=t, noise=noise, reduction="none")
    path = fm_path.CondOTProbPath().sample(x_0=noise, x_1=x0, t=1 - t)
    u = -net(path.x_t, 1000.0 * t)  # their velocity is minus difflab's
    theirs = ((u - path.dx_t) ** 2).mean(1)
    assert torch.allclose(ours.double(), theirs, rtol=1e-5, atol=1e-7)  # float32 loss arithmetic


@pytest.mark.parametrize("prediction", ["velocity", "eps", "x0"])
def test_prediction_conversions_are_flow_matching(batch, prediction):
    x0, noise, t = batch
    t = t.clamp(0.01, 0.99)  # away from the ends, where some conversions divide by 0
    proc = dl.processes.FlowMatching(prediction=prediction)
    path = fm_path.CondOTProbPath()
    x_t = proc.q_sample(x0, t, noise)
    out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)  # any output
    s = (1 - t)[:, None]
    if prediction == "velocity":
        x0_theirs, eps_theirs, vel_theirs = path.velocity_to_target(-out, x_t, s), \
            path.velocity_to_epsilon(-out, x_t, s), out
    elif prediction == "eps":
        x0_theirs, eps_theirs, vel_theirs = path.epsilon_to_target(out, x_t, s), out, \
            -path.epsilon_to_velocity(out, x_t, s)
    else:
        x0_theirs, eps_theirs, vel_theirs = out, path.target_to_epsilon(out, x_t, s), \
            -path.target_to_velocity(out, x_t, s)
    for target, theirs in (("x0", x0_theirs), ("eps", eps_theirs), ("velocity", vel_theirs)):
        assert max_diff(proc.convert(x_t, t, out, target), theirs) < 1e-11, target


# ------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("steps", [4, 10, 25])
def test_euler_is_flow_matching_euler(mixture, steps):
    """Euler in the samplers' VE coordinates is Euler in t (DDIM on the straight path): the same
    samples as flow_matching's ODESolver(method="euler") on the same times, final step to t = 0
    included."""
    solver = pytest.importorskip("flow_matching.solver")
    proc, model = mixture

    def velocity(x, t):  # theirs at their time t: minus difflab's velocity at 1 - t
        return -model(x, proc.timestep_scale * (1 - t).expand(len(x)).double())

    sigmas = dl.samplers.sampling_sigmas(proc, steps, "uniform")
    noise = torch.randn(N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    theirs = solver.ODESolver(velocity_model=velocity).sample(
        start_state(proc, noise, float(sigmas[0])), step_size=None, method="euler", time_grid=1 - proc.t_of(sigmas))
    ours = dl.sample(model, proc, noise.shape, "euler", steps=steps, spacing="uniform", noise=noise)
    assert max_diff(ours, theirs) < 1e-7  # the network's float32 time input on difflab's side


def test_probability_flow_is_flow_matching(mixture):
    """The same ODE: difflab's Heun in the samplers' VE coordinates (equal steps in t) converges at
    second order to flow_matching's dopri5 solution (tolerance 1e-10) from t = 0.99 to t_min.
    (From t_max = 0.999, sigma = 999, Heun's error is not yet in its asymptotic regime at 400 steps.)"""
    solver = pytest.importorskip("flow_matching.solver")
    proc, model = mixture

    def velocity(x, t):
        return -model(x, proc.timestep_scale * (1 - t).expand(len(x)).double())

    t_max = 0.99
    x_start = torch.randn(N, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    theirs = solver.ODESolver(velocity_model=velocity).sample(
        x_start, step_size=None, method="dopri5", atol=1e-10, rtol=1e-10,
        time_grid=torch.tensor([1 - t_max, 1 - proc.t_min], dtype=torch.float64))
    errors = heun_errors(model, proc, x_start, theirs, t_max)
    assert errors[-1] < 1e-4
    assert second_order(errors), errors  # 4 per halving


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("steps", [5, 20])
def test_euler_is_sd3_scheduler(mixture, steps):
    """diffusers' FlowMatchEulerDiscreteScheduler on difflab's times: the network gets diffusers'
    own timestep (1000 t, SD3's convention) and the samples agree to its float32 state."""
    diffusers = pytest.importorskip("diffusers")
    proc, model = mixture
    sigmas = dl.samplers.sampling_sigmas(proc, steps, "uniform")
    sched = diffusers.FlowMatchEulerDiscreteScheduler()  # shift 1
    sched.set_timesteps(sigmas=proc.t_of(sigmas[:-1]).tolist())
    assert torch.allclose(sched.sigmas.double(), proc.t_of(sigmas), rtol=1e-6, atol=0)
    noise = torch.randn(N, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = start_state(proc, noise, float(sigmas[0]))
    for t in sched.timesteps:
        x = sched.step(model(x, t.double().expand(len(x))), t, x).prev_sample
    ours = dl.sample(model, proc, noise.shape, "euler", steps=steps, spacing="uniform", noise=noise)
    assert max_diff(ours, x) < 1e-5


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 0.8), (-1.0, 1.5)])
def test_logit_normal_times_are_sd3(mean, std):
    """SD3's logit-normal density for t (t = 1 noise), diffusers' training helper: the same draws
    from the same generator (torch.normal(m, s) is m + s randn, to float32 rounding). Its u is the
    paper's t; diffusers' SD3 training scripts then index their descending timestep list with u,
    so their noise level is 1 - u: the same law for logit_mean = 0 only."""
    training_utils = pytest.importorskip("diffusers.training_utils")
    proc = dl.processes.FlowMatching(time_sampling="logit_normal", logit_mean=mean, logit_std=std)
    ours = proc.training_times(4096, torch.Generator().manual_seed(4))
    theirs = training_utils.compute_density_for_timestep_sampling(
        "logit_normal", 4096, logit_mean=mean, logit_std=std, generator=torch.Generator().manual_seed(4))
    assert max_diff(ours, theirs) < 1e-6
    uniform = dl.processes.FlowMatching().training_times(4096, torch.Generator().manual_seed(4))
    assert max_diff(uniform, theirs) > 0.1


# ------------------------------------------------------------------------ minibatch OT
@pytest.mark.parametrize("batch_size,shape", [(8, (2,)), (64, (8,)), (200, (1, 4, 4))])
def test_ot_coupling_is_pot(batch_size, shape):
    """ot_coupling's permutation is the exact OT plan of POT's network simplex (uniform weights
    on the batch: an optimal plan is a permutation, unique for data in general position) and its
    cost is the Wasserstein-2 cost ot.emd2 finds."""
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(batch_size)
    x0 = torch.randn(batch_size, *shape, generator=g, dtype=torch.float64) + 1.0
    noise = torch.randn(batch_size, *shape, generator=g, dtype=torch.float64)
    perm = ot_coupling(x0, noise)
    a = b = np.full(batch_size, 1.0 / batch_size)
    cost = ot.dist(x0.flatten(1).numpy(), noise.flatten(1).numpy())  # squared Euclidean
    plan = ot.emd(a, b, cost)
    ours = float(((x0 - noise[perm]) ** 2).flatten(1).sum(1).mean())
    assert math.isclose(ours, float(ot.emd2(a, b, cost)), rel_tol=1e-12)
    assert np.array_equal(plan.argmax(1), perm.numpy()) and np.allclose(plan.max(1), 1.0 / batch_size)
    independent = float(((x0 - noise) ** 2).flatten(1).sum(1).mean())
    assert ours < independent  # the pairing does something


def test_ot_cfm_loss_pairs_by_the_pot_plan(batch):
    """FlowMatching(coupling="ot") trains on the noise re-paired by the exact OT plan."""
    ot = pytest.importorskip("ot")
    x0, noise, t = batch
    a = b = np.full(N, 1.0 / N)
    plan = ot.emd(a, b, ot.dist(x0.numpy(), noise.numpy()))
    paired = noise[torch.from_numpy(plan.argmax(1))]

    def net(x, time):
        return torch.tanh(x) * (time[:, None] / 1000.0)

    ours = dl.processes.FlowMatching(coupling="ot").training_loss(net, x0, t=t, noise=noise, reduction="none")
    path = fm_path.CondOTProbPath().sample(x_0=paired, x_1=x0, t=1 - t)
    theirs = ((-net(path.x_t, 1000.0 * t) - path.dx_t) ** 2).mean(1)
    assert torch.allclose(ours.double(), theirs, rtol=1e-5, atol=1e-7)
    independent = dl.processes.FlowMatching().training_loss(net, x0, t=t, noise=noise, reduction="none")
    assert not torch.allclose(independent.double(), theirs, rtol=1e-3)
