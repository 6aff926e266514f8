"""Consistency distillation and consistency training (difflab.training.consistency) on Gaussian
data N(mu, s^2 I), where everything is closed-form: the exact denoiser D = mu + s^2 / (s^2 + sigma^2)
(x - mu) is the teacher, and the exact consistency function f(x, sigma) = mu + k(sigma) (x - mu),
k = sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma^2), the ideal student. TrainBatch objects are built
by hand (no trainer)."""

import math

import pytest
import torch
from tiny_config import tiny

import difflab as dl
from difflab.processes import convert_prediction
from difflab.training.build import build_process
from difflab.training.consistency import ConsistencyDistillationLoss, ConsistencyTrainingLoss
from difflab.training.distill import consistency_times, huber_c
from difflab.training.loss import TrainBatch, build_loss

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
S = 0.4


def ve_state(proc, x_t, t):
    """(x, sigma, a): the VE state x = x_t / a at the network's time input t."""
    sigma = proc.sigma_of_timestep(t).view(-1, 1)
    a = torch.as_tensor(proc.scale(sigma), dtype=torch.float64)
    return x_t / a, sigma, a


class Teacher(torch.nn.Module):
    """The exact denoiser of N(MU, S^2 I) as a network of ``proc``'s prediction type."""

    def __init__(self, proc):
        super().__init__()
        self.proc = proc

    def forward(self, x_t, t, cond=None):
        x, sigma, a = ve_state(self.proc, x_t, t)
        d = MU + S**2 / (S**2 + sigma**2) * (x - MU)
        return convert_prediction(d, x_t, a, a * sigma, "x0", self.proc.prediction)


class Student(torch.nn.Module):
    """The consistency function of N(MU, s'^2 I) data, s' = S ratio, as an x0-predicting network: the
    exact one at ratio 1 (f(x, sigma_min) = x for any ratio, so only the ODE tells them apart)."""

    def __init__(self, proc, ratio=1.0):
        super().__init__()
        self.proc = proc
        self.log_ratio = torch.nn.Parameter(torch.tensor(math.log(ratio), dtype=torch.float64))

    def forward(self, x_t, t, cond=None, guidance=None):
        x, sigma, _ = ve_state(self.proc, x_t, t)
        s2 = (S * self.log_ratio.exp()) ** 2
        return MU + (s2 + self.proc.sigma_min**2).sqrt() / (s2 + sigma**2).sqrt() * (x - MU)


class Recorder(torch.nn.Module):
    """A network that records its calls (inputs, mode, whether grad was on) around ``inner``."""

    def __init__(self, inner, num_classes=None, guidance_input=False):
        super().__init__()
        self.inner, self.num_classes, self.guidance_input, self.calls = inner, num_classes, guidance_input, []

    def forward(self, x_t, t, cond=None, guidance=None):
        self.calls.append({"x_t": x_t.detach().clone(), "t": t.clone(), "cond": cond, "guidance": guidance,
                           "training": self.training, "grad": torch.is_grad_enabled()})
        return self.inner(x_t, t)


def edm():
    return dl.processes.EDM(P_mean=-1.1, P_std=2.0)  # improved CT's levels


def chains():
    return (dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction="x0"),
            dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction="eps"))


def batch_of(proc, n, seed=0, labels=None, cond=None):
    g = torch.Generator().manual_seed(seed)
    x0 = MU + S * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return TrainBatch(x0=x0, cond=cond, labels=labels, t=proc.training_times(n, g),
                      noise=torch.randn(n, 2, generator=g, dtype=torch.float64), u=torch.rand(n, generator=g),
                      step=0, index=torch.arange(n))


def cd_losses(proc, teacher_proc, solver, students, ns=(10, 20, 40, 80)):
    batch = batch_of(proc, 4096)
    if teacher_proc.prediction == "x0":
        teacher = Teacher(teacher_proc)
    else:
        teacher = dl.models.GaussianDenoiser(teacher_proc, MU, S)
    out = []
    for n in ns:  # s0 = s1 = n: a fixed discretisation of n intervals
        loss = ConsistencyDistillationLoss(proc, teacher, teacher_proc, total_steps=100, s0=n, s1=n,
                                           solver=solver, c=0.0)
        with torch.no_grad():
            out.append([float(loss(student, batch)) for student in students])
    return torch.tensor(out)


@pytest.mark.parametrize("solver, order", [("dpm_solver", 2), ("heun", 2), ("euler", 1)])
def test_distillation_loss_of_the_exact_student_is_the_teachers_step_error(solver, order):
    """Along the ODE the exact f is constant, so f(x, sigma_{n+1}) - f(x_hat, sigma_n) is f's gain
    times the teacher step's local error O(h^{p+1}): the (squared) loss falls 2^{2(p+1)}-fold as N
    doubles. A wrong student (the consistency function of data 1.5x wider) misses by O(h) per
    interval: its loss falls only 4-fold and ends 100s of times above."""
    proc = edm()
    losses = cd_losses(proc, proc, solver, [Student(proc), Student(proc, 1.5)])
    exact, wrong = losses[:, 0], losses[:, 1]
    drop_exact, drop_wrong = exact[:-1] / exact[1:], wrong[:-1] / wrong[1:]
    assert (drop_exact[1:] > 0.6 * 2 ** (2 * (order + 1))).all(), drop_exact  # (the first, at N = 10, pre-asymptotic)
    assert ((2.5 < drop_wrong[1:]) & (drop_wrong[1:] < 6)).all(), drop_wrong
    assert exact[-1] < 1e-6 and wrong[-1] > 100 * exact[-1]


def test_distillation_loss_on_the_chain_with_an_eps_teacher():
    """The DDPM chain's trailing grid, an eps teacher (dl.models.GaussianDenoiser) and an x0 student."""
    proc, teacher_proc = chains()
    losses = cd_losses(proc, teacher_proc, "dpm_solver", [Student(proc), Student(proc, 1.5)], ns=(20, 40, 80))
    exact, wrong = losses[:, 0], losses[:, 1]
    assert (exact[:-1] / exact[1:] > 16).all() and exact[-1] < 1e-7
    assert (wrong > 10 * exact).all() and wrong[-1] > 1000 * exact[-1]


def intervals(proc, times, t):
    """(t_lo, t_hi) per sample, by hand: the grid times around each drawn level (the last
    interval for levels at or above its top, the first below its bottom)."""
    levels = proc.sigma_of(times).tolist()
    drawn = proc.sigma_of(t).tolist()
    idx = [min(max([j for j, v in enumerate(levels) if v <= d] or [0]), len(levels) - 2) for d in drawn]
    return times[idx], times[[i + 1 for i in idx]]


def test_the_target_branch_calls_the_ema_and_the_student_gets_the_gradient():
    proc, teacher_proc = chains()
    batch = batch_of(proc, 16, seed=3)
    loss = ConsistencyDistillationLoss(proc, dl.models.GaussianDenoiser(teacher_proc, MU, S), teacher_proc,
                                       total_steps=100, s0=10, s1=10, solver="euler", c=0.0)
    student, ema = Recorder(Student(proc)), Recorder(Student(proc))
    ema.train()
    batch.ema = ema
    value = loss(student, batch).detach()
    assert len(student.calls) == 1 and len(ema.calls) == 1
    s_call, e_call = student.calls[0], ema.calls[0]
    assert s_call["grad"] and not e_call["grad"]
    assert not e_call["training"] and ema.training  # evaluated in eval mode, then put back
    # the student at sigma_{n+1} on x = x0 + sigma_{n+1} z; the target at sigma_n on one DDIM step of the teacher
    t_lo, t_hi = intervals(proc, consistency_times(proc, 10), batch.t)
    assert torch.equal(s_call["t"], t_hi) and torch.equal(e_call["t"], t_lo)
    s_hi, s_lo = proc.sigmas[t_hi].view(-1, 1), proc.sigmas[t_lo].view(-1, 1)
    x = batch.x0 + s_hi * batch.noise
    torch.testing.assert_close(s_call["x_t"], x / (1 + s_hi**2).sqrt(), rtol=1e-12, atol=1e-12)
    d = MU + S**2 / (S**2 + s_hi**2) * (x - MU)
    x_hat = s_lo / s_hi * x + (1 - s_lo / s_hi) * d
    torch.testing.assert_close(e_call["x_t"], x_hat / (1 + s_lo**2).sqrt(), rtol=1e-9, atol=1e-9)
    # what the loss compares is the ema's output: a wrong ema gives a large loss to the exact student
    batch.ema = Student(proc, 1.5)
    assert loss(Student(proc), batch).item() > 20 * float(value)
    # no ema: the student is its own target, without gradient
    batch.ema = None
    student.calls.clear()
    loss(student, batch)
    assert [c["grad"] for c in student.calls] == [True, False] and torch.equal(student.calls[1]["t"], t_lo)


MEANS = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
STD = 0.4


def mixture_d(x, sigma, cond=None):
    """The exact denoiser of an equal-weight mixture of N(m_k, STD^2 I), given class cond (or none)."""
    var = STD**2 + sigma**2  # [B, 1]
    per_k = MEANS[None] + (STD**2 / var)[..., None] * (x[:, None] - MEANS[None])  # [B, K, D]
    if cond is not None:
        return per_k[torch.arange(len(x)), cond]
    resp = torch.softmax(-((x[:, None] - MEANS[None]) ** 2).sum(-1) / (2 * var), 1)
    return (resp[..., None] * per_k).sum(1)


def test_guided_distillation_draws_the_scale_and_guides_the_teacher():
    proc, teacher_proc = chains()
    teacher = dl.models.GaussianMixtureDenoiser(teacher_proc, MEANS, STD, conditional=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    dropped = torch.where(torch.arange(8) % 3 == 0, torch.full_like(labels, 3), labels)  # some labels dropped
    batch = batch_of(proc, 8, seed=5, labels=labels, cond=dropped)
    loss = ConsistencyDistillationLoss(proc, teacher, teacher_proc, total_steps=100, s0=10, s1=10, solver="euler",
                                       guidance=(1.0, 4.0))
    student = Recorder(Student(proc), num_classes=3, guidance_input=True)
    batch.ema = Recorder(Student(proc), num_classes=3, guidance_input=True)
    loss(student, batch)
    w = 1.0 + 3.0 * batch.u
    for call in (student.calls[0], batch.ema.calls[0]):
        torch.testing.assert_close(call["guidance"].double(), w.double(), rtol=1e-6, atol=0)
        assert torch.equal(call["cond"], labels)  # the true labels: guidance never drops them
    # the target's input: one DDIM step of the teacher guided at w, D_u + w (D_c - D_u)
    t_lo, t_hi = intervals(proc, consistency_times(proc, 10), batch.t)
    s_hi, s_lo = proc.sigmas[t_hi].view(-1, 1), proc.sigmas[t_lo].view(-1, 1)
    x = batch.x0 + s_hi * batch.noise
    d_c, d_u = mixture_d(x, s_hi, labels), mixture_d(x, s_hi)
    d = d_u + w.double().view(-1, 1) * (d_c - d_u)
    x_hat = s_lo / s_hi * x + (1 - s_lo / s_hi) * d
    torch.testing.assert_close(batch.ema.calls[0]["x_t"], x_hat / (1 + s_lo**2).sqrt(), rtol=1e-6, atol=1e-6)


def test_distillation_refuses_bad_setups():
    proc, teacher_proc = chains()
    uncond = dl.models.GaussianDenoiser(teacher_proc, MU, S)
    with pytest.raises(ValueError, match="class-conditional teacher"):
        ConsistencyDistillationLoss(proc, uncond, teacher_proc, total_steps=10, guidance=(1.0, 3.0))
    cond = dl.models.GaussianMixtureDenoiser(teacher_proc, MEANS, STD, conditional=True)
    for bad in ((3.0, 1.0), (-1.0, 2.0), (1.0, math.inf)):
        with pytest.raises(ValueError, match="w_min <= w_max"):
            ConsistencyDistillationLoss(proc, cond, teacher_proc, total_steps=10, guidance=bad)
    for other in (edm(), dl.GaussianDiffusion(dl.schedules.linear(1000), prediction="eps")):
        with pytest.raises(ValueError, match="teacher's noise levels"):
            ConsistencyDistillationLoss(proc, uncond, other, total_steps=10)


# ------------------------------------------------------------------ consistency training

def gain(sigma, smin):
    return math.sqrt(S**2 + smin**2) / math.sqrt(S**2 + sigma**2)


@pytest.mark.parametrize("make", [edm, lambda: chains()[0]], ids=["edm", "ddpm"])
def test_training_loss_of_the_exact_function_is_its_closed_form(make):
    """f(x0 + sigma' z, sigma') - f(x0 + sigma z, sigma) = (k' - k) y + (k' sigma' - k sigma) z with
    y = x0 - mu ~ N(0, s^2): with c = 0 the loss's mean is [(k' - k)^2 s^2 + (k' sigma' - k sigma)^2] D
    / (sigma' - sigma), per interval."""
    proc = make()
    times = consistency_times(proc, 10)
    levels = proc.sigma_of(times).tolist()
    loss = ConsistencyTrainingLoss(proc, s0=10, s1=10, total_steps=100, c=0.0)
    n = 20000
    for i in (0, 3, 7, len(levels) - 2):
        batch = batch_of(proc, n, seed=i)
        batch.t = times[i].expand(n).clone()  # a level on the grid: interval i
        lo, hi = levels[i], levels[i + 1]
        k_lo, k_hi = gain(lo, proc.sigma_min), gain(hi, proc.sigma_min)
        want = 2 * ((k_hi - k_lo) ** 2 * S**2 + (k_hi * hi - k_lo * lo) ** 2) / (hi - lo)
        assert loss(Student(proc), batch).item() == pytest.approx(want, rel=5 / math.sqrt(n)), i


@pytest.mark.parametrize("make", [edm, lambda: chains()[0]], ids=["edm", "ddpm"])
def test_training_gradient_vanishes_at_the_exact_function_as_n_grows(make):
    """Improved CT's loss does not vanish at the exact f (x0 + sigma z at two levels lie on two
    trajectories), but its gradient does as N grows: E[(f' - f) df'/dtheta] / (sigma' - sigma) tends to
    the ODE residual of f, which is 0 for the exact f and not for the consistency function of wider or
    narrower data -- whose gradient keeps its size and points back to s."""
    proc = make()
    batch = batch_of(proc, 100_000, seed=1)
    grads = []
    for n in (10, 160, 640):
        loss = ConsistencyTrainingLoss(proc, s0=n, s1=n, total_steps=100, c=0.0)
        row = []
        for ratio in (1.0, 1.5, 0.7):
            student = Student(proc, ratio)
            loss(student, batch).backward()
            row.append(float(student.log_ratio.grad))
        grads.append(row)
    exact, wide, narrow = (torch.tensor(g) for g in zip(*grads))
    assert abs(exact[-1]) < 0.1 * abs(exact[0]) and abs(exact[-1]) < 0.05 * min(abs(wide[-1]), abs(narrow[-1]))
    assert (wide > 0.02).all() and (narrow[1:] < -0.02).all()  # descent moves s' back towards s


def test_training_loss_default_c_is_improved_cts():
    proc = edm()
    batch = batch_of(proc, 64)
    default = ConsistencyTrainingLoss(proc, s0=10, s1=10, total_steps=100)
    given = ConsistencyTrainingLoss(proc, s0=10, s1=10, total_steps=100, c=huber_c(2))
    other = ConsistencyTrainingLoss(proc, s0=10, s1=10, total_steps=100, c=0.5)
    assert default(Student(proc), batch).item() == given(Student(proc), batch).item()
    assert other(Student(proc), batch).item() != default(Student(proc), batch).item()


def test_config_loss_consistency_builds_the_training_loss():
    cfg = tiny(**{"loss": "consistency", "consistency.s0": 4, "consistency.s1": 32, "consistency.huber_c": 0.01,
                  "steps": 40, "diffusion.prediction": "x0"})
    loss = build_loss(build_process(cfg), cfg)
    assert isinstance(loss, ConsistencyTrainingLoss)
    assert (loss.grid.s0, loss.grid.s1, loss.grid.total, loss.c) == (4, 32, 40, 0.01)
    assert cfg.consistency_model  # the network is wrapped in the boundary condition
    assert isinstance(dl.training.build.build_model(cfg), dl.models.ConsistencyModel)
