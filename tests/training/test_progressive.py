"""Progressive distillation (difflab.training.progressive): the student's levels are every second
one of its teacher's, and its target x_tilde is the x0 estimate whose single DDIM step from (x, s_i)
lands where two DDIM steps of the teacher land (Salimans & Ho 2022, eq. 8 in VE form). Checked
against DDIM runs of dl.samplers on an exact mixture teacher; TrainBatch objects built by hand."""

import pytest
import torch

import difflab as dl
from difflab.processes import convert_prediction
from difflab.samplers import Denoiser, sample_ddim
from difflab.samplers.timesteps import sampling_sigmas
from difflab.training.loss import TrainBatch
from difflab.training.progressive import ProgressiveDistillationLoss, halve

MEANS = [[1.0, 0.0], [-1.0, 1.0], [0.0, -2.0]]
STDS = [0.3, 0.5, 0.2]


def chain(prediction="eps"):
    return dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction=prediction)


def teacher_levels(proc, steps=8):
    return sampling_sigmas(proc, steps, "trailing")  # decreasing, ending at 0


def test_halve_keeps_every_second_level():
    sig = torch.tensor([80.0, 20.0, 5.0, 1.0, 0.3, 0.1, 0.0], dtype=torch.float64)
    assert halve(sig).tolist() == [80.0, 5.0, 0.3, 0.0]
    assert halve([4.0, 1.0, 0.0]).tolist() == [4.0, 0.0]
    for odd in ([4.0, 2.0, 1.0, 0.0], [1.0, 0.0]):  # 3 steps, 1 step
        with pytest.raises(ValueError, match="even number of steps"):
            halve(odd)


class Spy(torch.nn.Module):
    """A student (x0-predicting) that records its inputs and returns ``out(x_t, t)``."""

    def __init__(self, out):
        super().__init__()
        self.out, self.calls = out, []

    def forward(self, x_t, t, cond=None):
        self.calls.append((x_t.detach().clone(), t.clone()))
        return self.out(x_t, t)


def batch_at(t, seed=0):
    n = len(t)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return TrainBatch(x0=x0, cond=None, labels=None, t=t, noise=torch.randn(n, 2, generator=g, dtype=torch.float64),
                      u=torch.rand(n, generator=g), step=0, index=torch.arange(n))


def expected_interval(student_sigmas, drawn):
    """The interval i = [s_{i+1}, s_i) that holds the drawn level (the first for levels at or above
    its top s_0 = sigma_max)."""
    s = student_sigmas.tolist()
    return [next((i for i in range(len(s) - 1) if s[i + 1] <= d < s[i]), 0) for d in drawn.tolist()]


def test_each_interval_gets_its_share_of_the_chains_uniform_timesteps():
    """On the DDPM chain the trainer draws t uniformly: with the trailing grid every student interval
    (the top one, from sigma_max, included) holds the same share of the draws."""
    proc = chain()
    teacher_sig = teacher_levels(proc)
    loss = ProgressiveDistillationLoss(chain("x0"), dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS), proc,
                                       teacher_sig)
    student_sig = halve(teacher_sig)
    spy = Spy(lambda x_t, t: torch.zeros_like(x_t))
    loss(spy, batch_at(torch.arange(proc.T)))
    (_, t_seen), = spy.calls
    levels = proc.sigmas[t_seen]
    shares = [float((levels == s).double().mean()) for s in student_sig[:-1].tolist()]
    assert shares == pytest.approx([1 / (len(student_sig) - 1)] * (len(student_sig) - 1), abs=0.01)


def test_the_interval_of_a_drawn_level():
    proc = chain()
    teacher_sig = teacher_levels(proc)
    loss = ProgressiveDistillationLoss(chain("x0"), dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS), proc,
                                       teacher_sig)
    student_sig = halve(teacher_sig)
    t = torch.tensor([0, 5, 300, 400, 600, 620, 800, 874, 875, 950, 999])
    spy = Spy(lambda x_t, t: torch.zeros_like(x_t))
    loss(spy, batch_at(t))
    (x_t, t_seen), = spy.calls
    want = student_sig[expected_interval(student_sig, proc.sigmas[t])]
    assert proc.sigmas[t_seen].tolist() == pytest.approx(want.tolist(), rel=1e-12)
    assert t_seen.dtype == torch.long  # the student sees its grid's timesteps
    # ... at x = x0 + s_i z (in the chain's state x / sqrt(1 + s_i^2))
    b = batch_at(t)
    x = b.x0 + want.view(-1, 1) * b.noise
    torch.testing.assert_close(x_t, x / (1 + want.view(-1, 1) ** 2).sqrt(), rtol=1e-12, atol=1e-12)


def target_of(loss, batch):
    """The loss's target x_tilde per sample, read off the gradient of w mean((P - x_tilde)^2) w.r.t.
    a student's x0 estimate P (a leaf tensor, handed over as the student's prediction type):
    grad = 2 w (P - x_tilde) / (B D)."""
    P = torch.zeros_like(batch.x0, requires_grad=True)
    proc = loss.proc

    def as_prediction(x_t, t):
        a, s = proc.alpha_sigma(t)
        return convert_prediction(P, x_t, a.view(-1, 1), s.view(-1, 1), "x0", proc.prediction)

    spy = Spy(as_prediction)
    loss(spy, batch).backward()
    (_, t_seen), = spy.calls
    s = loss.proc.sigma_of(t_seen).view(-1, 1)
    w = 1 + s**-2
    B, D = batch.x0.shape
    return P.detach() - P.grad * B * D / (2 * w), s


@pytest.mark.parametrize("clip_x0", [None, 1.0])
@pytest.mark.parametrize("teacher_pred, student_pred", [("eps", "x0"), ("eps", "v"), ("v", "x0")])
def test_one_student_step_to_the_target_lands_where_two_teacher_steps_land(teacher_pred, student_pred, clip_x0):
    proc, student_proc = chain(teacher_pred), chain(student_pred)
    teacher = dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS)
    teacher_sig = teacher_levels(proc)
    student_sig = halve(teacher_sig)
    loss = ProgressiveDistillationLoss(student_proc, teacher, proc, teacher_sig, clip_x0=clip_x0)
    t = torch.tensor([999, 990, 700, 640, 500, 400, 200, 100, 30, 0])  # every interval, the last (s_4 = 0) too
    batch = batch_at(t, seed=1)
    x_tilde, _ = target_of(loss, batch)
    idx = expected_interval(student_sig, proc.sigmas[t])
    assert sorted(set(idx)) == [0, 1, 2, 3]
    for b, i in enumerate(idx):
        x = batch.x0[b:b + 1] + student_sig[i] * batch.noise[b:b + 1]
        two = sample_ddim(Denoiser(teacher, proc, clip_x0=clip_x0), x, teacher_sig[2 * i:2 * i + 3])
        one = sample_ddim(lambda x_, sigma, b=b: x_tilde[b:b + 1], x, student_sig[i:i + 2])  # DDIM, x0 = x_tilde
        torch.testing.assert_close(one, two, rtol=1e-7, atol=1e-7)
        if i == 3:  # the last step ends at 0: the target is where the teacher lands
            torch.testing.assert_close(x_tilde[b:b + 1], two, rtol=1e-7, atol=1e-7)


def test_a_student_that_is_the_two_step_map_has_loss_zero():
    """The student's x0 estimate equal to that of the teacher's two DDIM steps (computed with
    dl.samplers), given as x0 prediction: loss 0; the teacher itself as student: not 0."""
    proc = chain()
    teacher = dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS)
    teacher_sig = teacher_levels(proc)
    student_sig = halve(teacher_sig)
    student_proc = chain("x0")

    def two_step_map(x_t, t):
        out = []
        for b in range(len(t)):
            s = proc.sigmas[t[b]]
            i = int(torch.nonzero((student_sig - s).abs() < 1e-9 * s)[0])
            x = x_t[b:b + 1] * (1 + s**2).sqrt()
            two = sample_ddim(Denoiser(teacher, proc), x, teacher_sig[2 * i:2 * i + 3])
            r = student_sig[i + 1] / s
            out.append((two - r * x) / (1 - r))  # the x0 estimate whose DDIM step lands at two
        return torch.cat(out)

    loss = ProgressiveDistillationLoss(student_proc, teacher, proc, teacher_sig)
    batch = batch_at(torch.tensor([999, 700, 500, 300, 100, 0]), seed=2)
    assert float(loss(Spy(two_step_map), batch)) < 1e-12
    teacher_as_student = dl.models.GaussianMixtureDenoiser(student_proc, MEANS, STDS)
    assert float(loss(teacher_as_student, batch)) > 1e-4


def test_steps_and_refused_levels():
    proc = chain()
    teacher = dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS)
    loss = ProgressiveDistillationLoss(chain("x0"), teacher, proc, teacher_levels(proc, 16))
    assert loss.steps == 8 and loss.sigmas.tolist() == teacher_levels(proc, 16)[::2].tolist()
    with pytest.raises(ValueError, match="even number of steps"):
        ProgressiveDistillationLoss(chain("x0"), teacher, proc, teacher_levels(proc, 5))
    too_high = teacher_levels(proc, 4).clone()
    too_high[0] = 2 * proc.sigma_max
    with pytest.raises(ValueError, match="sigma_max"):
        ProgressiveDistillationLoss(chain("x0"), teacher, proc, too_high)


def test_an_eps_student_is_weighed_by_its_own_squared_error():
    """An eps student (``--set diffusion.prediction=eps``) gets its eps MSE, ||eps_hat - eps_tilde||^2
    with eps_tilde = (x - x_tilde) / s (x0 error times SNR): at the top level its x0 error is its
    network's times 1 / a = 2e4, and the v/x0 weight SNR + 1 would weigh that by 1."""
    proc = chain()
    teacher = dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS)
    teacher_sig = teacher_levels(proc)
    t = torch.tensor([999, 700, 500, 300, 100, 0])
    batch = batch_at(t, seed=3)
    x_tilde, s = target_of(ProgressiveDistillationLoss(chain("x0"), teacher, proc, teacher_sig), batch)
    x = batch.x0 + s * batch.noise
    eps_tilde = (x - x_tilde) / s
    eps_hat = torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    loss = ProgressiveDistillationLoss(chain("eps"), teacher, proc, teacher_sig)
    got = loss(Spy(lambda x_t, t_: eps_hat), batch)
    want = ((eps_hat - eps_tilde) ** 2).mean(1).mean()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
    assert float(got) < 10  # (with SNR + 1 the top sample alone would give about 1e8)
