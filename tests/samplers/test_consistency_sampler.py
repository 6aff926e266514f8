"""The consistency multistep sampler (difflab.samplers.consistency, sampler "consistency"), its
noise levels, a guidance-input network in the Denoiser, and a progressive student's own levels.

The model is the exact consistency function of Gaussian data N(mu, s^2 I): the probability-flow
ODE is x(sigma) = mu + sqrt(s^2 + sigma^2) u, so f(x, sigma) = mu + sqrt(s^2 + sigma_min^2)
(x - mu) / sqrt(s^2 + sigma^2). Each step is then an affine map of a Gaussian, and the output's
mean and std follow a closed-form recursion (:func:`moments`)."""

import math

import pytest
import torch

import difflab as dl
from difflab.samplers import SAMPLERS
from difflab.samplers.timesteps import karras_sigmas, logsnr_sigmas, sampling_sigmas

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)
S = 0.4


class ExactConsistency(torch.nn.Module):
    """f of Gaussian data in the model convention of a process predicting x0: model(x_t, t) -> f."""

    def __init__(self, proc, mu=MU, s=S):
        super().__init__()
        assert proc.prediction == "x0"
        self.proc, self.mu, self.s = proc, mu, s

    def forward(self, x_t, t, cond=None):
        sigma = self.proc.sigma_of_timestep(t).view(-1, 1)
        x = x_t.double() / torch.as_tensor(self.proc.scale(sigma), dtype=torch.float64)
        smin = self.proc.sigma_min
        f = self.mu + math.sqrt(self.s**2 + smin**2) * (x - self.mu) / (self.s**2 + sigma**2).sqrt()
        return f.to(x_t.dtype)


def moments(proc, sigmas, s=S):
    """Mean gain G (output mean = mu (1 - G)) and std of the sampler's output on the levels
    ``sigmas`` (ending at 0). In y = x - mu: start y ~ N(-mu, 1 + sigma_0^2) (dl.sample's x_T
    sqrt(1 + sigma_0^2)); a step y0 = g y, g = sqrt(s^2 + sigma_min^2) / sqrt(s^2 + sigma^2),
    then y = y0 + sigma' z."""
    sig = [float(v) for v in sigmas]
    G, var = 1.0, 1 + sig[0] ** 2
    for a, b in zip(sig[:-1], sig[1:]):
        g = math.sqrt(s**2 + proc.sigma_min**2) / math.sqrt(s**2 + a**2)
        G, var = G * g, g * g * var + b * b
    return G, math.sqrt(var)


PROCS = {
    "edm": lambda: dl.processes.EDM(),
    "ddpm": lambda: dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction="x0"),
}


def levels_of(proc, steps, **kw):
    """The noise levels a consistency run visits (recorded by the callback), and its samples."""
    seen = []
    x = dl.sample(ExactConsistency(proc), proc, (20000, 2), "consistency", steps,
                  generator=torch.Generator().manual_seed(0), callback=lambda d: seen.append(d["sigma"]), **kw)
    return seen, x


def check_samples(proc, x, sigmas):
    """The samples' mean and std against the closed form, within 5 standard errors."""
    G, std = moments(proc, sigmas)
    n = x.shape[0]
    mean = MU * (1 - G)
    assert torch.allclose(x.double().mean(0), mean, atol=5 * std / math.sqrt(n)), (x.mean(0), mean)
    assert torch.allclose(x.double().std(0), torch.full((2,), std, dtype=torch.float64),
                          atol=5 * std / math.sqrt(2 * n)), (x.std(0), std)
    # and the closed form is the data's N(mu, s^2) to 1% (the prior's gain is tiny at sigma_max)
    assert torch.allclose(mean, MU, atol=0.01 * MU.abs().max()) and abs(std / S - 1) < 0.01


@pytest.mark.parametrize("name", list(PROCS))
def test_one_step_samples_the_data(name):
    proc = PROCS[name]()
    seen, x = levels_of(proc, 1)
    assert seen == pytest.approx([proc.sigma_max], rel=1e-6)  # one call, at the top
    check_samples(proc, x, [proc.sigma_max, 0.0])


@pytest.mark.parametrize("name, steps", [("edm", 2), ("edm", 4), ("ddpm", 3)])
def test_multistep_samples_the_data(name, steps):
    proc = PROCS[name]()
    seen, x = levels_of(proc, steps)
    assert len(seen) == steps
    check_samples(proc, x, seen + [0.0])


@pytest.mark.parametrize("spacing, levels", [("karras", karras_sigmas), ("logsnr", logsnr_sigmas)])
def test_spacings_ending_at_sigma_min_drop_it(spacing, levels):
    """2 steps: the 2 levels above sigma_min of the 3-level spacing, then 0 (a step at sigma_min
    would return its input); other samplers keep sigma_min."""
    proc = PROCS["edm"]()
    seen, _ = levels_of(proc, 2, spacing=spacing)
    want = levels(3, proc.sigma_min, proc.sigma_max)[:2].tolist()
    assert seen == pytest.approx(want, rel=1e-12) and min(seen) > 10 * proc.sigma_min
    assert SAMPLERS["consistency"].consistency and not SAMPLERS["ddim"].consistency
    ddim = []
    dl.sample(ExactConsistency(proc), proc, (4, 2), "ddim", 2, spacing=spacing,
              callback=lambda d: ddim.append(d["sigma"]))
    assert ddim == pytest.approx(levels(2, proc.sigma_min, proc.sigma_max).tolist(), rel=1e-12)


def test_default_spacing_on_the_chain_is_trailing():
    proc = PROCS["ddpm"]()
    seen, _ = levels_of(proc, 4)
    assert seen == pytest.approx(sampling_sigmas(proc, 4, "trailing")[:-1].tolist(), rel=1e-12)


def test_explicit_levels_are_used_as_given():
    proc = PROCS["edm"]()
    given = [80.0, 1.0, 0.3]
    seen, x = levels_of(proc, 50, sigmas=torch.tensor(given, dtype=torch.float64))
    assert seen == pytest.approx(given, rel=1e-12)
    check_samples(proc, x, given + [0.0])
    seen, _ = levels_of(proc, 50, sigmas=torch.tensor([80.0, 0.5, proc.sigma_min], dtype=torch.float64))
    assert seen[-1] == pytest.approx(proc.sigma_min, rel=1e-12)  # even sigma_min, when asked for


class GuidanceSpy(torch.nn.Module):
    """A network of 3 classes, with or without the guidance scale as an input; records its calls."""

    num_classes = 3

    def __init__(self, guidance_input: bool):
        super().__init__()
        self.guidance_input, self.calls = guidance_input, []

    def forward(self, x_t, t, cond, guidance=None):
        self.calls.append((x_t.shape[0], cond.clone(), guidance))
        return torch.zeros_like(x_t)


def test_guidance_input_model_is_called_once_per_step_with_the_scale():
    proc = PROCS["edm"]()
    cond = torch.tensor([0, 1, 2, 0])
    spy = GuidanceSpy(guidance_input=True)
    dl.sample(spy, proc, (4, 2), "consistency", 3, cond=cond, guidance=2.5)
    assert len(spy.calls) == 3
    # (the scale as a tensor [B]: CUDA graphs and torch.compile key on tensors, not on Python floats)
    assert all(b == 4 and torch.equal(c, cond) and torch.equal(w, torch.full((4,), 2.5)) for b, c, w in spy.calls)
    # through the consistency model's wrapper too, and at w = 1 (the scale is still the input)
    spy.calls.clear()
    model = dl.models.ConsistencyModel(spy, proc)
    dl.sample(model, proc, (4, 2), "consistency", 2, cond=cond, guidance=1.0)
    assert len(spy.calls) == 2 and all(b == 4 and torch.equal(w, torch.ones(4)) for b, _, w in spy.calls)
    # a network without the input gets the classifier-free guidance pair: one batch of 2B, no scale
    plain = GuidanceSpy(guidance_input=False)
    dl.sample(plain, proc, (4, 2), "consistency", 3, cond=cond, guidance=2.5)
    assert len(plain.calls) == 3 and all(b == 8 and w is None for b, _, w in plain.calls)


class Student(ExactConsistency):
    """A progressive student: any model carrying ``distilled_sigmas``."""


def student(proc, levels):
    model = Student(proc)
    model.distilled_sigmas = tuple(levels)
    return model


def test_progressive_student_samples_on_its_own_levels():
    proc = PROCS["ddpm"]()
    grid = sampling_sigmas(proc, 8, "trailing")[::2].tolist()  # 4 steps, every second level of 8
    model = student(proc, grid)
    seen = []
    dl.sample(model, proc, (3, 2), "ddim", 4, callback=lambda d: seen.append(d["sigma"]))
    assert seen == pytest.approx(grid[:-1], rel=1e-12)
    # levels on its grid are taken (a run from an intermediate level)
    seen.clear()
    dl.sample(model, proc, (3, 2), "ddim", sigmas=torch.tensor(grid[1:], dtype=torch.float64),
              callback=lambda d: seen.append(d["sigma"]))
    assert seen == pytest.approx(grid[1:-1], rel=1e-12)
    # ... also through a wrapper that keeps the network as .module
    wrapper = torch.nn.Module()
    wrapper.module = model
    assert dl.samplers.denoiser.model_attribute(wrapper, "distilled_sigmas") == tuple(grid)


@pytest.mark.parametrize("steps", [1, 2, 8, 50])
def test_progressive_student_refuses_other_step_counts(steps):
    proc = PROCS["ddpm"]()
    model = student(proc, sampling_sigmas(proc, 8, "trailing")[::2].tolist())
    with pytest.raises(ValueError, match=r"distilled for 4 steps.*steps=4"):
        dl.sample(model, proc, (3, 2), "ddim", steps)


def test_progressive_student_refuses_levels_off_its_grid():
    proc = PROCS["ddpm"]()
    grid = sampling_sigmas(proc, 8, "trailing")[::2]
    model = student(proc, grid.tolist())
    off = torch.tensor([float(grid[0]), float(grid[1]) * 1.1, float(grid[2])])
    with pytest.raises(ValueError, match="not the student's steps"):
        dl.sample(model, proc, (3, 2), "ddim", sigmas=off)
    with pytest.raises(ValueError, match="not the student's steps"):
        dl.sample(model, proc, (3, 2), "ddim", 4, spacing="karras")
    # on its grid but skipping levels (2 of its 4 steps): steps it never learnt
    with pytest.raises(ValueError, match="not the student's steps"):
        dl.sample(model, proc, (3, 2), "ddim", sigmas=grid[::2])
    with pytest.raises(ValueError, match="not the student's steps"):
        dl.sample(model, proc, (3, 2), "ddim", 2, spacing="trailing")
