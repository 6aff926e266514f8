"""DDPM and DDIM against exact models: Gaussian and Gaussian-mixture data have closed-form
optimal denoisers, so a sampler's only error is its own discretisation, which for Gaussian
data we can also compute exactly (each step is an affine map of a Gaussian)."""

import math

import pytest
import torch

import difflab as dl
from difflab.samplers.timesteps import sampling_sigmas

MU = torch.tensor([1.0, -2.0])
S = 0.5
N = 20_000
# Tolerances: the sample mean has standard error S / sqrt(N) = 0.0035, the sample std
# S / sqrt(2N) = 0.0025. We allow 5 standard errors (a false alarm once in ~2 million per check;
# seeds are fixed, so the outcome is deterministic anyway).
SE_MEAN, SE_STD = S / math.sqrt(N), S / math.sqrt(2 * N)


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear(1000))


def exact_output_moments(sigmas, sampler, s=S):
    """Mean shift and std of the sampler's output for data N(mu, s^2), in closed form.

    In VE form x = x0 + sigma eps the denoiser is D(x) = mu + c (x - mu), c = s^2 / (s^2 + sigma^2).
    With y = x - mu each step is y' = g y + n z: DDIM (eta=0): g = c + (sigma'/sigma)(1 - c), n = 0;
    DDPM: g = (1 - r) c + r with r = sigma'^2 / sigma^2, n^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2.
    Start: x = x_T sqrt(1 + sigma_0^2) with x_T ~ N(0, I), so E y = -mu, Var y = 1 + sigma_0^2.
    Returns (G, std) with output mean = mu (1 - G), output variance std^2.
    """
    sig = sigmas.tolist()
    G, var = 1.0, 1 + sig[0] ** 2
    for a, b in zip(sig[:-1], sig[1:]):
        c = s * s / (s * s + a * a)
        if sampler == "ddim":
            g, n2 = c + (b / a) * (1 - c), 0.0
        else:
            r = (b / a) ** 2
            g, n2 = (1 - r) * c + r, b * b * (a * a - b * b) / (a * a)
        G, var = G * g, g * g * var + n2
    return G, math.sqrt(var)


@pytest.mark.parametrize(
    "sampler,steps,max_rel_bias",
    [
        # The exact recursion shows what each setting can reach at all (deterministic bias of the
        # output std): DDPM-1000 -0.8% (its reverse variance beta~_t ignores Var[x0 | x_t], the gap
        # Analytic-DPM closes, Bao et al. 2022), DDIM-100 -2.9%, DDIM-50 -5.7% (first order: the bias
        # halves when the steps double). The bounds below are those values rounded up.
        ("ddpm", 1000, 0.01),
        ("ddim", 100, 0.035),
        ("ddim", 50, 0.065),
    ],
)
def test_gaussian_data_mean_and_std(proc, sampler, steps, max_rel_bias):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    g = torch.Generator().manual_seed(0)
    x = dl.sample(model, proc, (N, 2), sampler=sampler, steps=steps, generator=g)
    G, std = exact_output_moments(sampling_sigmas(proc, steps, "trailing"), sampler)
    # 1. the sampler does exactly what the recursion says (independent computation)
    assert torch.allclose(x.mean(0), MU * (1 - G), atol=5 * SE_MEAN)
    assert torch.allclose(x.std(0), torch.tensor(std).float(), atol=5 * SE_STD)
    # 2. and that reproduces the data distribution up to the method's known bias
    assert torch.allclose(x.mean(0), MU, atol=5 * SE_MEAN + abs(G) * MU.abs().max().item())
    assert abs(std - S) / S < max_rel_bias
    assert ((x.std(0) - S).abs() / S < max_rel_bias + 5 * SE_STD / S).all()


def test_ddim_bias_is_first_order(proc):
    errs = [abs(exact_output_moments(sampling_sigmas(proc, n, "trailing"), "ddim")[1] - S) for n in (25, 50, 100, 200)]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(1.7 < r < 2.3 for r in ratios), ratios


MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
WEIGHTS = torch.tensor([0.2, 0.3, 0.5])
STD = 0.3


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 50), ("ddim", 100)])
def test_gaussian_mixture_mode_weights_and_shapes(proc, sampler, steps):
    model = dl.models.GaussianMixtureDenoiser(proc, MEANS, STD, WEIGHTS)
    n = 30_000
    x = dl.sample(model, proc, (n, 2), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1))
    k = torch.cdist(x, MEANS).argmin(1)  # modes are >= 13 std apart: nearest mean is the mode
    frac = torch.bincount(k, minlength=3).float() / n
    se = (WEIGHTS * (1 - WEIGHTS) / n).sqrt()
    assert ((frac - WEIGHTS).abs() < 5 * se).all(), frac
    for j in range(3):
        xj = x[k == j]
        assert torch.allclose(xj.mean(0), MEANS[j], atol=5 * STD / math.sqrt(len(xj)) + 0.01)
        # Within-mode spread: at most the bias of one Gaussian of the component's std (from the exact
        # recursion: DDPM-1000 -1.2%, DDIM-100 -4.6%, DDIM-50 -8.9%). The components separate early in
        # the reverse process and then each evolves like one Gaussian; before that the broader
        # marginal makes the relative step error smaller. Plus 5 standard errors of a std estimate.
        bias = abs(exact_output_moments(sampling_sigmas(proc, steps, "trailing"), sampler, STD)[1] - STD) / STD
        rel = (xj.std(0) - STD).abs() / STD
        assert (rel < bias + 5 / math.sqrt(2 * len(xj))).all(), (rel, bias)


def test_ddim_eta0_is_deterministic_given_noise(proc):
    model = dl.models.GaussianMixtureDenoiser(proc, MEANS, STD, WEIGHTS)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
    a = dl.sample(model, proc, (256, 2), "ddim", 20, noise=noise)
    b = dl.sample(model, proc, (256, 2), "ddim", 20, noise=noise, generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)
    # eta > 0 and DDPM draw fresh noise each step: reproducible through the generator only
    c1 = dl.sample(model, proc, (256, 2), "ddim", 20, eta=0.5, noise=noise, generator=torch.Generator().manual_seed(5))
    c2 = dl.sample(model, proc, (256, 2), "ddim", 20, eta=0.5, noise=noise, generator=torch.Generator().manual_seed(5))
    c3 = dl.sample(model, proc, (256, 2), "ddim", 20, eta=0.5, noise=noise, generator=torch.Generator().manual_seed(6))
    assert torch.equal(c1, c2) and not torch.equal(c1, c3)


def test_ddim_eta1_equals_ddpm_posterior_variance(proc):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a = dl.sample(model, proc, (64, 2), "ddim", 40, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(1))
    b = dl.sample(model, proc, (64, 2), "ddpm", 40, noise=noise, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-5)


def test_ddpm_beta_variance_matches_its_recursion(proc):
    """The 'beta' (fixed large) variance: Var y' = g^2 Var y + n^2 with n^2 = beta'_t / abar_s (VE)."""
    model = dl.models.GaussianDenoiser(proc, MU, S)
    steps = 100
    x = dl.sample(model, proc, (N, 2), "ddpm", steps, variance="beta", generator=torch.Generator().manual_seed(2))
    sig = sampling_sigmas(proc, steps, "trailing").tolist()
    var = 1 + sig[0] ** 2
    for a, b in zip(sig[:-1], sig[1:]):
        r = (b / a) ** 2
        g = (1 - r) * S * S / (S * S + a * a) + r
        n2 = (a * a - b * b) * (1 + b * b) / (1 + a * a) if b > 0 else 0.0
        var = g * g * var + n2
    assert torch.allclose(x.std(0), torch.tensor(math.sqrt(var)).float(), atol=5 * SE_STD)
    # larger than the posterior variance's output: the beta variance over-disperses on a coarse grid
    assert math.sqrt(var) > exact_output_moments(torch.tensor(sig), "ddpm")[1]


def test_ddim_inversion_reconstructs(proc):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    x0 = model.sample(2000, torch.Generator().manual_seed(4))
    errs = []
    for steps in (50, 100):
        x_T = dl.invert(model, proc, x0, steps=steps)
        assert x_T.std().item() == pytest.approx(1.0, abs=0.1)  # inverted latents look like noise
        rec = dl.sample(model, proc, x0.shape, "ddim", steps, noise=x_T)
        errs.append((rec - x0).abs().mean().item())
    # measured: mean |error| 0.036 at 50 steps, 0.020 at 100 (S = 0.5): first order in 1/steps
    assert errs[0] < 0.1 * S and errs[1] < 0.05 * S
    assert 1.6 < errs[0] / errs[1] < 2.4


def test_ddim_inversion_starts_at_sigma_zero(proc):
    """For N(mu, s^2) data the probability-flow ODE maps x0 to the VP latent
    ((x0 - mu) sqrt(s^2 + sigma_max^2) / s + mu) / sqrt(1 + sigma_max^2). The inversion's first
    interval 0 -> sigma_1 counts: treating x0 as the state at sigma_1 (0.34 at 10 trailing steps)
    left the latents shrunk (std 0.75) and 10x further from this map (0.21 vs 0.022)."""
    model = dl.models.GaussianDenoiser(proc, MU, S)
    x0 = model.sample(2000, torch.Generator().manual_seed(4))
    smax = proc.sigma_max
    exact = ((x0 - MU) * math.sqrt(S**2 + smax**2) / S + MU) / math.sqrt(1 + smax**2)
    x_T = dl.invert(model, proc, x0, steps=10)
    assert (x_T - exact).abs().mean() < 0.05
    assert x_T.std().item() == pytest.approx(exact.std().item(), rel=0.05)


def test_classifier_free_guidance_on_exact_conditional_mixture(proc):
    model = dl.models.GaussianMixtureDenoiser(proc, MEANS, STD, WEIGHTS, conditional=True)
    n = 3000
    labels = torch.full((n,), 2)
    x = dl.sample(model, proc, (n, 2), "ddim", 50, cond=labels, guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert (torch.cdist(x, MEANS).argmin(1) == 2).float().mean() > 0.999
    # guidance 0: the unconditional model, whatever the labels
    x = dl.sample(model, proc, (n, 2), "ddim", 50, cond=labels, guidance=0.0, generator=torch.Generator().manual_seed(0))
    frac = torch.bincount(torch.cdist(x, MEANS).argmin(1), minlength=3).float() / n
    assert ((frac - WEIGHTS).abs() < 5 * (WEIGHTS * (1 - WEIGHTS) / n).sqrt()).all()
    # guidance > 1 sharpens towards the class: the within-mode spread shrinks
    x3 = dl.sample(model, proc, (n, 2), "ddim", 50, cond=labels, guidance=3.0, generator=torch.Generator().manual_seed(0))
    assert (torch.cdist(x3, MEANS).argmin(1) == 2).all()
    assert x3.std(0).mean() < x.new_tensor(STD) * 0.95


def test_guidance_is_one_batched_call_per_step(proc):
    calls = []

    class Spy(torch.nn.Module):
        num_classes = 3

        def forward(self, x, t, cond):
            calls.append((x.shape[0], cond.clone()))
            return torch.zeros_like(x)

    dl.sample(Spy(), proc, (4, 2), "ddim", 7, cond=torch.tensor([0, 1, 2, 0]), guidance=2.0)
    assert len(calls) == 7
    assert all(b == 8 for b, _ in calls)
    assert torch.equal(calls[0][1], torch.tensor([0, 1, 2, 0, 3, 3, 3, 3]))
    calls.clear()
    dl.sample(Spy(), proc, (4, 2), "ddpm", 9, cond=torch.tensor([0, 1, 2, 0]))
    assert len(calls) == 9 and all(b == 4 for b, _ in calls)


def test_x_t_callback_and_timesteps_seen_by_the_model(proc):
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t):
            seen.append(t.clone())
            return torch.zeros_like(x)

    dl.sample(Spy(), proc, (2, 2), "ddim", 4, spacing="trailing")
    assert [int(t[0]) for t in seen] == [999, 749, 499, 249]
    assert all(t.dtype == torch.long for t in seen)
    seen.clear()
    dl.sample(Spy(), proc, (2, 2), "ddim", 4, spacing="leading")
    assert [int(t[0]) for t in seen] == [750, 500, 250, 0]
    seen.clear()
    dl.sample(Spy(), proc, (2, 2), "ddim", 3, spacing="karras")
    # Karras levels start and end on the grid (sigma_max, sigma_min) and fall between grid points
    # in the middle, where the network gets a fractional t
    assert [int(seen[0][0]), int(seen[-1][0])] == [999, 0]
    assert seen[1].dtype == torch.float32 and 0 < float(seen[1][0]) < 999
    assert float(seen[1][0]) != round(float(seen[1][0]))
    # the callback sees VP states: the first is the starting noise itself
    noise = torch.randn(2, 2)
    steps = []
    dl.sample(Spy(), proc, (2, 2), "ddim", 4, noise=noise, callback=steps.append)
    assert len(steps) == 4 and torch.allclose(steps[0]["x"], noise, atol=1e-5)


def test_exact_posterior_mean_against_bayes_by_hand():
    """E[x0 | x_t] of the analytic models, the ground truth of these tests, against independent
    computations: the Gaussian's closed form m + a v / (a^2 v + s^2) (x_t - a m), and the
    mixture's by Bayes' rule with scipy's normal densities (unequal weights and variances)."""
    from scipy.stats import multivariate_normal

    proc = dl.GaussianDiffusion(dl.schedules.cosine(1000))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64) * 2
    a, s = torch.tensor([0.9] * 5, dtype=torch.float64), torch.tensor([0.4] * 5, dtype=torch.float64)
    gauss = dl.models.GaussianDenoiser(proc, MU, S)
    want = MU.double() + a[0] * S**2 / (a[0] ** 2 * S**2 + s[0] ** 2) * (x - a[0] * MU.double())
    torch.testing.assert_close(gauss.posterior_mean(x, a, s), want, rtol=1e-12, atol=1e-12)
    means, stds, weights = [[0.0, 0.0], [3.0, -1.0], [-2.0, 2.0]], [[0.5, 1.0], [0.3, 0.3], [1.0, 0.7]], [0.6, 0.3, 0.1]
    mix = dl.models.GaussianMixtureDenoiser(proc, means, torch.tensor(stds), weights=weights)
    for alpha, sigma in ((0.9, 0.4), (0.2, 0.98), (0.999, 0.04)):
        ab, sb = torch.full((5,), alpha, dtype=torch.float64), torch.full((5,), sigma, dtype=torch.float64)
        got = mix.posterior_mean(x, ab, sb)
        for i, xi in enumerate(x.numpy()):
            lik, cond_means = [], []
            for m, sd, w in zip(means, stds, weights):
                m, v = torch.tensor(m, dtype=torch.float64).numpy(), torch.tensor(sd, dtype=torch.float64).numpy() ** 2
                lik.append(w * multivariate_normal(alpha * m, alpha**2 * v + sigma**2).pdf(xi))
                cond_means.append(m + alpha * v / (alpha**2 * v + sigma**2) * (xi - alpha * m))
            post = sum(l * c for l, c in zip(lik, cond_means)) / sum(lik)
            torch.testing.assert_close(got[i], torch.tensor(post), rtol=1e-7, atol=1e-7)  # (scipy: densities, not logs)
        # and the two code paths (one noise level for the batch, or one per sample) agree
        sb2 = sb.clone()
        sb2[0] = sb2[0] * (1 + 1e-15)
        torch.testing.assert_close(mix.posterior_mean(x, ab, sb2), got, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "heun"])
def test_samples_do_not_depend_on_the_prediction_type(sampler):
    """The same exact model predicting eps, x0 or v: each sampler converts to its own
    parameterization, so the samples agree (only eps was tested before)."""
    out = {}
    for prediction in ("eps", "x0", "v"):
        proc = dl.GaussianDiffusion(dl.schedules.linear(1000), prediction=prediction)
        model = dl.models.GaussianMixtureDenoiser(proc, [[-1.5, 0.0], [1.5, 1.0]], 0.5)
        out[prediction] = dl.sample(model, proc, (256, 2), sampler, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["x0"], out["eps"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out["v"], out["eps"], rtol=0, atol=1e-4)
