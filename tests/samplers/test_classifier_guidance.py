"""Classifier guidance (difflab.samplers.classifier_guidance) against closed forms on Gaussian mixtures:
the exact classifier of a mixture (the Bayes posterior over its components) guiding the exact
unconditional denoiser gives, at scale 1, exactly the conditional denoiser E[x0 | x, y] (Bayes:
grad log p(x | y) = grad log p(x) + grad log p(y | x)), for the VP, VE (EDM) and flow-matching
frames; DDPM's mean shift against Algorithm 1 computed in the VP frame by hand; every sampler
through ``dl.sample(classifier=...)``, with classifier-free guidance; the refusals."""

import numpy as np
import pytest
import torch

import difflab as dl
from difflab.samplers import ClassifierGuidance, Denoiser

MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
STDS = torch.tensor([0.5, 0.3, 0.7], dtype=torch.float64)
PROCS = {"ddpm": dl.GaussianDiffusion(dl.schedules.cosine(1000)), "edm": dl.processes.EDM(),
         "flow": dl.processes.FlowMatching(), "vpsde": dl.processes.VPSDE()}


def _mixture(proc, conditional=True):
    mix = dl.models.GaussianMixtureDenoiser(proc, MEANS, STDS, WEIGHTS, conditional=conditional)
    return mix, dl.models.MixtureClassifier(mix)


@pytest.mark.parametrize("name", sorted(PROCS))
def test_scale_one_with_the_exact_classifier_is_the_conditional_denoiser(name):
    """D + sigma^2 grad_x log p(y | a x) = E[x0 | x, y] at every level (the eps form, Alg. 2, in the
    VE frame, with the process's own a); at scale s it is D_u + s (D_c - D_u), the same line
    classifier-free guidance walks along (Tweedie: D_c - D_u = sigma^2 grad_x log p(y | x))."""
    proc = PROCS[name]
    mix, clf = _mixture(proc)
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2] * 3)
    for sigma in (0.02, 0.3, 1.0, 4.0, 20.0):
        sigma = min(sigma, proc.sigma_max)
        uncond, cond = Denoiser(mix, proc)(x, sigma), Denoiser(mix, proc, cond=y)(x, sigma)
        assert (cond - uncond).abs().max() > 1e-3 or sigma > 10  # the check can tell them apart
        guided = ClassifierGuidance(Denoiser(mix, proc), clf, y, 1.0)
        torch.testing.assert_close(guided(x, sigma), cond, rtol=1e-5, atol=1e-6 * max(1.0, sigma**2))
        x0, v = guided.predict(x, sigma)  # (the estimate with the variance output: guided too)
        assert torch.equal(x0, guided(x, sigma)) and v is None
        strong = ClassifierGuidance(Denoiser(mix, proc), clf, y, 2.5)
        torch.testing.assert_close(strong(x, sigma), uncond + 2.5 * (cond - uncond), rtol=1e-5,
                                   atol=1e-6 * max(1.0, sigma**2))


def test_with_classifier_free_guidance_the_scales_add():
    """Classifier-free guidance w of the base denoiser and classifier guidance s of the exact
    classifier, both towards y: D_u + (w + s) (D_c - D_u)."""
    proc = PROCS["ddpm"]
    mix, clf = _mixture(proc)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    y = torch.tensor([2, 1, 0, 2, 1, 0])
    for sigma in (0.1, 1.0, 3.0):
        uncond, cond = Denoiser(mix, proc)(x, sigma), Denoiser(mix, proc, cond=y)(x, sigma)
        both = ClassifierGuidance(Denoiser(mix, proc, cond=y, guidance=2.0), clf, y, 1.5)
        torch.testing.assert_close(both(x, sigma), uncond + 3.5 * (cond - uncond), rtol=1e-5, atol=1e-6)


def test_mean_shift_is_algorithm_one_in_the_vp_frame():
    """DDPM's shift s Sigma grad_{x_t} log p(y | x_t) (Alg. 1) computed by hand in the VP frame --
    Sigma = beta~_t from proc.q_posterior, the gradient by autograd at x_t itself -- equals
    mean_shift's VE-frame value times a' (x' = x_{t-1} / a'), for a float and a per-value variance."""
    proc = PROCS["ddpm"]
    mix, clf = _mixture(proc, conditional=False)
    y = torch.tensor([0, 1, 2, 2])
    g = torch.Generator().manual_seed(2)
    for t in (999, 600, 100, 3):
        tt = torch.full((4,), t)
        x_t = torch.randn(4, 2, generator=g, dtype=torch.float64)
        _, post_var, _ = proc.q_posterior(torch.zeros_like(x_t), x_t, tt)  # beta~_t (VP), the mean is not used
        x_in = x_t.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(clf(x_in, tt).gather(1, y[:, None]).sum(), x_in)
        vp_shift = 1.7 * post_var * grad
        sigma, sigma_next = float(proc.sigma_of(tt[:1])), float(proc.sigma_of(tt[:1] - 1))
        a, a_next = proc.scale(sigma), proc.scale(sigma_next)
        guide = ClassifierGuidance(Denoiser(mix, proc), clf, y, 1.7)
        var_ve = post_var / a_next**2
        got = guide.mean_shift(x_t / a, sigma, var_ve, sigma_next)
        torch.testing.assert_close(got * a_next, vp_shift, rtol=1e-6, atol=1e-12)
        scalar = guide.mean_shift(x_t / a, sigma, float(var_ve.flatten()[0]), sigma_next)
        torch.testing.assert_close(scalar, got, rtol=1e-6, atol=1e-12)
        # the next level comes from the run's levels when not given (sample_ddpm's call)
        listed = ClassifierGuidance(Denoiser(mix, proc), clf, y, 1.7, levels=[sigma, sigma_next, 0.0])
        torch.testing.assert_close(listed.mean_shift(x_t / a, sigma, var_ve), got)


def test_mean_shift_tends_to_the_exact_conditional_mean_as_steps_shrink():
    """Alg. 1 is first order: its shift approaches the exact conditional posterior mean's shift
    (1 - r)(D_c - D_u), r = sigma'^2 / sigma^2, as the step sigma -> sigma' shrinks, linearly."""
    proc = PROCS["edm"]
    mix, clf = _mixture(proc)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    sigma, errors = 1.0, []
    for h in (0.2, 0.1, 0.05, 0.025):
        nxt = sigma * (1 - h)
        r = (nxt / sigma) ** 2
        exact = (1 - r) * (Denoiser(mix, proc, cond=y)(x, sigma) - Denoiser(mix, proc)(x, sigma))
        var = nxt**2 * (sigma**2 - nxt**2) / sigma**2
        shift = ClassifierGuidance(Denoiser(mix, proc), clf, y, 1.0).mean_shift(x, sigma, var, nxt)
        errors.append(float((shift - exact).norm() / exact.norm()))
    assert errors[-1] < 0.06
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.7 < coarse / fine < 2.3  # error ~ h


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_3m", "euler", "heun"])
def test_every_ode_sampler_samples_the_conditional_model(sampler):
    """dl.sample on the unconditional mixture guided by its exact classifier (scale 1) takes the same
    path as the exact conditional model from the same noise, on every deterministic sampler: the
    guided denoiser is the conditional one (up to float32 rounding)."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(1000))
    mix, clf = _mixture(proc, conditional=False)
    cond_mix, _ = _mixture(proc, conditional=True)
    labels = torch.tensor([0, 1, 2]).repeat_interleave(100)
    noise = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    guided = dl.sample(mix, proc, (300, 2), sampler, 20, cond=labels, classifier=clf, classifier_scale=1.0,
                       noise=noise)
    conditional = dl.sample(cond_mix, proc, (300, 2), sampler, 20, cond=labels, noise=noise)
    torch.testing.assert_close(guided, conditional, rtol=1e-4, atol=1e-4)
    nearest = torch.cdist(guided.double(), MEANS).argmin(1)
    assert (nearest == labels).float().mean() >= 0.98  # (the nearest mean: not quite the Bayes rule)


def test_ddpm_mean_shift_draws_the_requested_class():
    """DDPM ancestral sampling through Alg. 1's mean shift (dl.sample hands the run's levels to the
    wrapper): the requested component's mode, mean and spread, within sampling error plus the
    shift's first-order error at 200 steps."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(1000))
    mix, clf = _mixture(proc, conditional=False)
    n = 1500
    labels = torch.tensor([0, 1, 2]).repeat_interleave(n // 3)
    x = dl.sample(mix, proc, (n, 2), "ddpm", 200, cond=labels, classifier=clf, classifier_scale=1.0,
                  generator=torch.Generator().manual_seed(0)).double()
    assert (torch.cdist(x, MEANS).argmin(1) == labels).float().mean() > 0.995
    for k in range(3):
        xs = x[labels == k]
        assert (xs.mean(0) - MEANS[k]).abs().max() < 5 * STDS[k] / (n // 3) ** 0.5 + 0.03
        assert (xs.std(0) / STDS[k] - 1).abs().max() < 0.15


def test_sample_with_classifier_and_classifier_free_guidance():
    """A conditional model: the labels reach both the model (classifier-free guidance w) and the
    classifier; classifier_scale 0 is classifier-free guidance alone, bit for bit."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(1000))
    mix, clf = _mixture(proc, conditional=True)
    noise = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.full((300,), 1)
    cfg = dl.sample(mix, proc, (300, 2), "ddim", 20, cond=labels, guidance=2.0, noise=noise)
    zero = dl.sample(mix, proc, (300, 2), "ddim", 20, cond=labels, guidance=2.0, noise=noise, classifier=clf,
                     classifier_scale=0.0)
    assert torch.equal(cfg, zero)
    both = dl.sample(mix, proc, (300, 2), "ddim", 20, cond=labels, guidance=2.0, noise=noise, classifier=clf,
                     classifier_scale=1.0)
    cfg3 = dl.sample(mix, proc, (300, 2), "ddim", 20, cond=labels, guidance=3.0, noise=noise)
    torch.testing.assert_close(both, cfg3, rtol=1e-4, atol=1e-4)  # D_u + (2 + 1)(D_c - D_u), by the closed form


def test_refusals():
    proc = dl.GaussianDiffusion(dl.schedules.linear(1000))
    mix, clf = _mixture(proc, conditional=False)
    shape = (4, 2)
    with pytest.raises(ValueError, match="needs the classes to guide towards"):
        dl.sample(mix, proc, shape, classifier=clf)
    with pytest.raises(ValueError, match=r"labels in 0 \.\. 2"):
        dl.sample(mix, proc, shape, cond=3, classifier=clf)
    with pytest.raises(ValueError, match="classifier_scale must be a finite number >= 0"):
        dl.sample(mix, proc, shape, cond=1, classifier=clf, classifier_scale=-1.0)
    with pytest.raises(ValueError, match="needs classifier="):
        dl.sample(mix, proc, shape, classifier_scale=2.0)
    other = dl.GaussianDiffusion(dl.schedules.cosine(1000))
    with pytest.raises(ValueError, match="another process"):
        dl.sample(dl.models.GaussianMixtureDenoiser(other, MEANS), other, shape, cond=1, classifier=clf)
    # the same schedule with another prediction type: the classifier reads the same states and times
    v_proc = dl.GaussianDiffusion(dl.schedules.linear(1000), prediction="v")
    dl.sample(dl.models.GaussianMixtureDenoiser(v_proc, MEANS), v_proc, shape, steps=2, cond=1, classifier=clf)
    net = dl.models.NoisyClassifier((64,), 3, width=8, depth=1)
    with pytest.raises(ValueError, match=r"shape \(64,\) but the samples have shape \(2,\)"):
        dl.sample(mix, proc, shape, cond=1, classifier=net)
    cond_mix = dl.models.GaussianMixtureDenoiser(proc, torch.zeros(5, 2), conditional=True)
    with pytest.raises(ValueError, match="num_classes = 5"):
        dl.sample(cond_mix, proc, shape, cond=1, classifier=clf)
    with pytest.raises(TypeError, match="classifier must be a callable"):
        dl.sample(mix, proc, shape, cond=1, classifier="clf.safetensors")
    with pytest.raises(ValueError, match="num_classes"):
        dl.sample(mix, proc, shape, cond=1, classifier=lambda x, t: x)
    with pytest.raises(TypeError, match="an int or an integer tensor"):
        dl.sample(mix, proc, shape, cond=torch.ones(4), classifier=clf)
    with pytest.raises(TypeError, match="an int or an integer tensor"):
        ClassifierGuidance(Denoiser(mix, proc), clf, True)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        dl.sample(mix, proc, shape, cond=torch.tensor([1, 2]), classifier=clf)
    # a numpy integer and a 0-dim tensor are one label for the whole batch
    x = torch.zeros(3, 2)
    for label in (np.int64(2), torch.tensor(2)):
        assert torch.equal(ClassifierGuidance(Denoiser(mix, proc), clf, label).grad_log_prob(x, 1.0),
                           ClassifierGuidance(Denoiser(mix, proc), clf, 2).grad_log_prob(x, 1.0))
    with pytest.raises(TypeError, match="Denoiser"):
        ClassifierGuidance(mix, clf, 1)
    with pytest.raises(ValueError, match="needs the step's next level"):
        ClassifierGuidance(Denoiser(mix, proc), clf, 1).mean_shift(torch.zeros(shape), 1.0, 0.1)


def test_a_model_running_whole_runs_its_own_way_is_run_step_by_step():
    """A model's ``sampling_run`` (the speed layer's captured whole run) cannot take the classifier's
    step-by-step gradients: with a classifier the run is the eager one, the same as without it."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(1000))
    mix, clf = _mixture(proc, conditional=False)

    class WholeRun(torch.nn.Module):
        def forward(self, x_t, t):
            return mix(x_t, t)

        def sampling_run(self, *args):
            raise AssertionError("a captured whole run was used with a classifier")

    noise = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    got = dl.sample(WholeRun(), proc, (20, 2), "ddim", 5, cond=2, classifier=clf, noise=noise)
    want = dl.sample(mix, proc, (20, 2), "ddim", 5, cond=2, classifier=clf, noise=noise)
    assert torch.equal(got, want)
