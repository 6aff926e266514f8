"""What the few-step losses share (difflab.training.distill): the network as a denoiser at
per-sample levels, classifier-free guidance of a teacher, the teacher's ODE step, the
discretisation grids and curriculum, buckets, the pseudo-Huber distance, the teacher-denoiser loss.

Gaussian data N(mu, s^2 I) gives the closed forms: the exact denoiser D(x, sigma) = mu + c (x - mu),
c = s^2 / (s^2 + sigma^2), and the probability-flow ODE's solution x(sigma') - mu = (x(sigma) - mu)
sqrt(s^2 + sigma'^2) / sqrt(s^2 + sigma^2)."""

import math

import pytest
import torch

import difflab as dl
from difflab.samplers import Denoiser, sample_ddim
from difflab.samplers.timesteps import logsnr_sigmas
from difflab.training.distill import (
    Phased,
    TeacherDenoiserLoss,
    bucket,
    consistency_times,
    denoised,
    discretisation_steps,
    guided_denoised,
    huber_c,
    pseudo_huber,
    teacher_step,
    times_of,
)
from difflab.training.loss import TrainBatch

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = 0.5
MEANS = [[1.0, 0.0], [-1.0, 1.0], [0.0, -2.0]]  # a three-class mixture
STDS = [0.3, 0.5, 0.4]
WEIGHTS = [0.2, 0.3, 0.5]


def chain(prediction="eps"):
    return dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction=prediction)


def mixture(proc, conditional=False):
    return dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS, WEIGHTS, conditional=conditional)


def mixture_denoised(x, sigma, cond=None):
    """E[x0 | x] of the mixture at VE levels sigma [B] (cond: one component per sample), by hand."""
    means, stds, w = (torch.tensor(v, dtype=torch.float64) for v in (MEANS, STDS, WEIGHTS))
    s2 = sigma.view(-1, 1) ** 2
    var = stds[None] ** 2 + s2  # [B, K]
    diff2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)  # [B, K]
    log_r = w.log()[None] - diff2 / (2 * var) - x.shape[1] / 2 * var.log()
    resp = torch.softmax(log_r, 1)
    per_k = means[None] + (stds[None, :, None] ** 2 / var[..., None]) * (x[:, None, :] - means[None])  # [B, K, D]
    if cond is not None:
        return per_k[torch.arange(len(x)), cond]
    return (resp[..., None] * per_k).sum(1)


# ------------------------------------------------------------------ denoised, guidance, times

def test_times_of_gives_grid_timesteps_where_it_can():
    proc = chain()
    on = times_of(proc, proc.sigmas[[0, 10, 999]])
    assert on.dtype == torch.long and on.tolist() == [0, 10, 999]
    off = times_of(proc, torch.tensor([2.0], dtype=torch.float64))
    assert off.is_floating_point() and float(proc.sigma_of(off)) == pytest.approx(2.0, rel=1e-12)
    edm = dl.processes.EDM()
    assert times_of(edm, torch.tensor([0.5, 3.0], dtype=torch.float64)).tolist() == [0.5, 3.0]


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_denoised_is_the_exact_posterior_mean_at_per_sample_levels(prediction):
    proc = chain(prediction)
    t = torch.tensor([0, 100, 500, 900, 999])
    sigma = proc.sigmas[t]
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * (1 + sigma[:, None])
    torch.testing.assert_close(denoised(mixture(proc), proc, x, t), mixture_denoised(x, sigma), rtol=1e-9, atol=1e-9)
    clipped = denoised(mixture(proc), proc, x, t, clip_x0=0.5)
    torch.testing.assert_close(clipped, mixture_denoised(x, sigma).clamp(-0.5, 0.5), rtol=1e-9, atol=1e-9)


def test_guided_denoised_is_d_u_plus_w_times_d_c_minus_d_u():
    proc = chain()
    model = mixture(proc, conditional=True)
    t = torch.tensor([5, 100, 300, 500, 700, 999])
    sigma = proc.sigmas[t]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64) * (1 + sigma[:, None])
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 0.5, 7.5], dtype=torch.float64)
    d_c, d_u = mixture_denoised(x, sigma, cond), mixture_denoised(x, sigma)
    want = d_u + w[:, None] * (d_c - d_u)
    torch.testing.assert_close(guided_denoised(model, proc, x, t, cond, w), want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(guided_denoised(model, proc, x, t, cond, w, clip_x0=1.0), want.clamp(-1, 1),
                               rtol=1e-9, atol=1e-9)
    # no scale: the conditional estimate; no labels: the unconditional one
    torch.testing.assert_close(guided_denoised(model, proc, x, t, cond, None), d_c, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(guided_denoised(model, proc, x, t, None, w), d_u, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ the teacher's ODE step

@pytest.mark.parametrize("proc", [chain(), dl.processes.VPSDE()], ids=["ddpm", "vp"])
def test_euler_teacher_step_is_one_ddim_step(proc):
    teacher = mixture(proc)
    if proc.discrete:
        sigma, sigma_next = proc.sigmas[[900, 500, 200, 50]], proc.sigmas[[700, 400, 100, 0]]
    else:
        sigma = torch.tensor([80.0, 5.0, 1.0, 0.1], dtype=torch.float64)
        sigma_next = torch.tensor([20.0, 1.3, 0.2, 0.02], dtype=torch.float64)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * (1 + sigma[:, None])
    out = teacher_step(teacher, proc, x, sigma, sigma_next, "euler")
    for i in range(4):  # one sample at a time: DDIM on the two-level grid, with the same denoiser
        want = sample_ddim(Denoiser(teacher, proc), x[i:i + 1], torch.stack([sigma[i], sigma_next[i]]))
        torch.testing.assert_close(out[i:i + 1], want, rtol=1e-10, atol=1e-10)


def ode_error(proc, solver, steps, hi=10.0, lo=0.05):
    """|x(lo) - exact| after ``steps`` teacher steps on log-SNR levels from hi to lo, Gaussian data."""
    teacher = dl.models.GaussianDenoiser(proc, MU, S)
    x = torch.tensor([[0.3, -0.7], [2.0, 1.0]], dtype=torch.float64) * math.sqrt(S**2 + hi**2) + MU
    exact = MU + (x - MU) * math.sqrt(S**2 + lo**2) / math.sqrt(S**2 + hi**2)
    levels = logsnr_sigmas(steps + 1, lo, hi)
    for s, s_next in zip(levels[:-1], levels[1:]):
        x = teacher_step(teacher, proc, x, s.expand(2), s_next.expand(2), solver)
    return float((x - exact).abs().max() / (exact - MU).abs().max())


@pytest.mark.parametrize("solver, order", [("dpm_solver", 2), ("heun", 2), ("euler", 1)])
@pytest.mark.parametrize("proc", [dl.processes.EDM(), dl.processes.VPSDE(prediction="v")], ids=["edm", "vp"])
def test_teacher_step_converges_at_its_order(proc, solver, order):
    errs = [ode_error(proc, solver, n) for n in (8, 16, 32)]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(2**order * 0.8 < r < 2**order * 1.3 for r in ratios), (errs, ratios)
    assert errs[-1] < (0.01 if order == 2 else 0.05)


def test_dpm_solver_step_stays_bounded_across_the_chains_top_interval():
    """sigma 2e4 -> 2 on the cosine chain, in one step: DPM-Solver++(2S) is a convex mix of r x
    (r = 1e-4) and denoised estimates, and lands on the exact solution to 1% of its spread (Heun,
    whose second slope is multiplied by (sigma - sigma') / sigma' = 1e4, is not held to this)."""
    proc = chain()
    teacher = dl.models.GaussianDenoiser(proc, MU, S)
    hi, lo = proc.sigma_max, 2.0
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = MU + math.sqrt(S**2 + hi**2) * z
    out = teacher_step(teacher, proc, x, torch.full((256,), hi, dtype=torch.float64),
                       torch.full((256,), lo, dtype=torch.float64), "dpm_solver")
    exact = MU + (x - MU) * math.sqrt(S**2 + lo**2) / math.sqrt(S**2 + hi**2)
    spread = math.sqrt(S**2 + lo**2)  # the exact solution's std at sigma = 2
    assert torch.isfinite(out).all() and (out - exact).abs().max() < 0.01 * spread  # (Euler's: 0.09 spread)
    assert float((out - MU).std() / spread) == pytest.approx(float((exact - MU).std() / spread), rel=0.02)


def test_teacher_step_refuses_an_unknown_solver():
    proc = dl.processes.EDM()
    with pytest.raises(ValueError, match="euler, dpm_solver, heun"):
        teacher_step(mixture(proc), proc, torch.zeros(1, 2), torch.ones(1), torch.full((1,), 0.5), "rk4")


# ------------------------------------------------------------------ discretisation

def trailing(T, n):
    """diffusers' trailing timesteps, increasing: round(T - i T / n) - 1 for i = n-1 .. 0."""
    return [round(T - i * T / n) - 1 for i in reversed(range(n))]


@pytest.mark.parametrize("n", [1, 7, 10, 250])
def test_consistency_times_on_the_chain_start_at_zero_then_the_trailing_grid(n):
    proc = chain()
    times = consistency_times(proc, n)
    assert times.dtype == torch.long and times.tolist() == [0] + trailing(1000, n)
    assert (times[1:] > times[:-1]).all()


def test_consistency_times_on_the_chain_at_its_full_resolution():
    proc = chain()
    assert consistency_times(proc, 1000).tolist() == list(range(1000))  # the grid reaches 0: n - 1 intervals
    assert consistency_times(proc, 5000).tolist() == list(range(1000))  # capped at T


@pytest.mark.parametrize("proc", [dl.processes.EDM(), dl.processes.VPSDE(), dl.processes.FlowMatching()],
                         ids=["edm", "vp", "flow"])
@pytest.mark.parametrize("n", [1, 4, 40])
def test_continuous_consistency_times_are_rho_7_levels(proc, n):
    """Karras et al.'s eq. 5 (Song et al. 2023's discretisation), increasing from sigma_min to sigma_max."""
    times = consistency_times(proc, n)
    lo, hi = proc.sigma_min ** (1 / 7), proc.sigma_max ** (1 / 7)
    want = torch.tensor([(lo + i / n * (hi - lo)) ** 7 for i in range(n + 1)], dtype=torch.float64)
    assert len(times) == n + 1 and (times[1:] > times[:-1]).all()
    torch.testing.assert_close(proc.sigma_of(times), want, rtol=1e-9, atol=0)
    assert float(times[0]) == pytest.approx(proc.t_min, rel=1e-9)


@pytest.mark.parametrize("n", [0, -3, 2.5, "4", None])
def test_consistency_times_refuse_bad_counts(n):
    with pytest.raises(ValueError, match="n >= 1"):
        consistency_times(dl.processes.EDM(), n)


def paper_curriculum(k, K, s0, s1):
    """Improved consistency training's N(k) (Song & Dhariwal 2023, sec. 3.4), in intervals:
    min(s0 2^floor(k / K'), s1), K' = floor(K / (log2 floor(s1 / s0) + 1)); the paper's N(k) is this + 1 levels."""
    K_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(k / K_prime), s1)


@pytest.mark.parametrize("K, s0, s1",
                         [(400_000, 10, 1280), (4000, 10, 1280), (1000, 20, 160), (900, 5, 5),
                          (10_000, 10, 1000), (3000, 10, 150)])  # (the last two: s1 / s0 not a power of two)
def test_discretisation_steps_double_as_in_improved_consistency_training(K, s0, s1):
    ks = sorted({0, 1, K // 8 - 1, K // 8, K // 4, K // 2, 3 * K // 4, K - 1, K} | set(range(0, K + 1, K // 37)))
    assert [discretisation_steps(k, K, s0, s1) for k in ks] == [paper_curriculum(k, K, s0, s1) for k in ks]


def test_discretisation_steps_of_the_papers_cifar_run():
    """K = 400,000, s0 = 10, s1 = 1280: 8 stages of K' = 50,000 steps, 10, 20, ..., 1280 intervals."""
    stages = [discretisation_steps(k, 400_000, 10, 1280) for k in range(0, 400_000, 50_000)]
    assert stages == [10, 20, 40, 80, 160, 320, 640, 1280]
    assert discretisation_steps(49_999, 400_000, 10, 1280) == 10
    assert discretisation_steps(400_000, 400_000, 10, 1280) == 1280


def test_bucket_finds_the_interval_of_each_level():
    levels = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.99, 1.0, 1.99, 2.0, 50.0], dtype=torch.float64)
    assert bucket(levels, sigma).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]  # clamped to 0 .. n-1 at both ends
    # drawn log-normal levels fall in interval i with the distribution's mass on [sigma_i, sigma_{i+1})
    g = torch.Generator().manual_seed(0)
    drawn = (-1.1 + 2.0 * torch.randn(200_000, generator=g, dtype=torch.float64)).exp()
    grid = consistency_times(dl.processes.EDM(), 10)
    counts = torch.bincount(bucket(grid, drawn), minlength=10).double() / len(drawn)
    cdf = 0.5 * (1 + torch.erf((grid.log() + 1.1) / (2.0 * math.sqrt(2))))
    mass = cdf[1:] - cdf[:-1]
    mass[0], mass[-1] = cdf[1], 1 - cdf[-2]  # the clamped ends take the tails
    assert torch.allclose(counts, mass, atol=5 * math.sqrt(0.25 / len(drawn)))


# ------------------------------------------------------------------ the pseudo-Huber distance

def test_pseudo_huber_is_the_formula_and_its_limits():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    sq = ((a - b) ** 2).sum((1, 2, 3))
    torch.testing.assert_close(pseudo_huber(a, b, 0), sq, rtol=1e-6, atol=0)  # c = 0: the squared distance
    torch.testing.assert_close(pseudo_huber(a, b, 0.7), (sq + 0.49).sqrt() - 0.7, rtol=1e-5, atol=0)
    d = (a - b) / ((a - b) ** 2).sum((1, 2, 3)).sqrt().view(-1, 1, 1, 1)  # unit norm per sample
    small = 0.02 * d  # ||d|| << c = 1: ||d||^2 / (2c) (to 1e-4; float32's cancellation costs 6e-4 here)
    torch.testing.assert_close(pseudo_huber(b + small, b, 1.0), torch.full((5,), 0.02**2 / 2), rtol=1e-3, atol=0)
    large = 1e3 * (a - b)  # ||d|| >> c: ||d||
    torch.testing.assert_close(pseudo_huber(b + large, b, 0.03), (large**2).sum((1, 2, 3)).sqrt(), rtol=1e-4, atol=0)
    assert pseudo_huber(a, b, 0.1).shape == (5,)


def test_huber_c_default_is_improved_cts():
    assert huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072), rel=1e-12)
    assert huber_c(3 * 32 * 32) == pytest.approx(0.03, rel=0.01)  # the paper's c for CIFAR-10
    assert huber_c(64, 0.1) == 0.1 and huber_c(64, 0) == 0.0


# ------------------------------------------------------------------ the teacher's denoiser as a target

def batch_at(proc, t, x0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TrainBatch(x0=x0, cond=None, labels=None, t=t, noise=torch.randn(x0.shape, generator=g, dtype=x0.dtype),
                      u=torch.rand(len(t), generator=g), step=0, index=torch.arange(len(t)))


def test_teacher_denoiser_loss_is_zero_for_the_teacher_and_the_closed_form_otherwise():
    proc = chain()
    teacher = dl.models.GaussianDenoiser(proc, MU, S)
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(4))
    x0 = MU + S * torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    batch = batch_at(proc, t, x0)
    assert float(TeacherDenoiserLoss(proc, teacher, proc)(teacher, batch)) == 0.0
    # a student under another prediction type (x0), the same function: 0 up to rounding
    proc_x0 = chain("x0")
    assert float(TeacherDenoiserLoss(proc_x0, teacher, proc)(dl.models.GaussianDenoiser(proc_x0, MU, S), batch)) < 1e-12
    # a student whose data mean is off by delta: D_S - D_T = (1 - c) delta, c = s^2 / (s^2 + sigma^2)
    delta = torch.tensor([0.1, -0.3], dtype=torch.float64)
    wrong = dl.models.GaussianDenoiser(proc, MU + delta, S)
    sigma = proc.sigmas[t]
    c = S**2 / (S**2 + sigma**2)
    # weighed by x0_error_weight: SNR for an eps student (its eps error), SNR + 1 for an x0 (or v) one
    want = (sigma**-2 * (1 - c) ** 2).mean() * (delta**2).mean()
    assert float(TeacherDenoiserLoss(proc, teacher, proc)(wrong, batch)) == pytest.approx(float(want), rel=1e-5)
    wrong_x0 = dl.models.GaussianDenoiser(proc_x0, MU + delta, S)
    want = ((1 + sigma**-2) * (1 - c) ** 2).mean() * (delta**2).mean()
    assert float(TeacherDenoiserLoss(proc_x0, teacher, proc)(wrong_x0, batch)) == pytest.approx(float(want), rel=1e-5)


def test_teacher_denoiser_loss_of_a_consistency_student_targets_c_skip_x_plus_c_out_d():
    """With ``boundary`` the target is c_skip x + c_out D_T: the teacher wrapped in the consistency
    model (a student at its start) has loss 0, the bare teacher does not."""
    proc, proc_x0 = chain(), chain("x0")
    teacher = dl.models.GaussianDenoiser(proc, MU, S)
    sb = proc.sigma_min
    student = dl.models.ConsistencyModel(teacher, proc_x0, boundary=sb, net_prediction="eps")
    t = torch.tensor([0, 1, 2, 5, 50, 500])
    x0 = MU + S * torch.randn(6, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    loss = TeacherDenoiserLoss(proc_x0, teacher, proc, boundary=(proc.sigma_min, sb))
    batch = batch_at(proc, t, x0)
    assert float(loss(student, batch)) < 1e-12
    # the bare denoiser misses the target by c_skip (D - x), weighted 1 + 1 / sigma^2
    sigma = proc.sigmas[t]
    x = x0 + sigma[:, None] * batch.noise
    c_skip = sb**2 / ((sigma - proc.sigma_min) ** 2 + sb**2)
    d = MU + S**2 / (S**2 + sigma[:, None] ** 2) * (x - MU)
    want = ((1 + sigma**-2) * c_skip**2 * ((d - x) ** 2).mean(1)).mean()
    got = float(loss(dl.models.GaussianDenoiser(proc_x0, MU, S), batch))
    assert got == pytest.approx(float(want), rel=2e-3)  # (the loss subtracts in float32: x ~ 2, D - x ~ 1e-3)


def test_phased_switches_losses_at_its_step():
    first, then = (lambda m, b: torch.tensor(1.0)), (lambda m, b: torch.tensor(2.0))
    phased = Phased(first, 3, then)
    batch = batch_at(dl.processes.EDM(), torch.ones(1), torch.zeros(1, 2))
    got = []
    for step in range(5):
        batch.step = step
        got.append(float(phased(None, batch)))
    assert got == [1.0, 1.0, 1.0, 2.0, 2.0]
