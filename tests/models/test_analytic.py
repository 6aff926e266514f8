"""The exact denoisers of Gaussian and Gaussian-mixture data (difflab.models.analytic), the ground
truth of the sampler and editing tests: posterior means against Bayes' rule by hand, label checks."""

import pytest
import torch

import difflab as dl

MU = torch.tensor([1.0, -2.0])
S = 0.5


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


def test_the_exact_denoiser_checks_its_labels_and_converts_in_float64():
    """Labels past K read component K - 1 (clamped), -1 raised an index error, and an
    unconditional mixture took labels; eps at t = 0 lost three digits to a float32 subtraction."""
    proc = dl.GaussianDiffusion(dl.schedules.cosine(1000))
    mix = dl.models.GaussianMixtureDenoiser(proc, [[0.0, 0.0], [5.0, 5.0]], 0.5, conditional=True)
    x, t = torch.randn(2, 2), torch.zeros(2, dtype=torch.long)
    for bad in (torch.tensor([3, 0]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"class labels must lie in 0 \.\. 1 \(or 2 for 'no label'\)"):
            mix(x, t, bad)
    with pytest.raises(ValueError, match="cond must be a long tensor"):
        mix(x, t, torch.tensor([0.7, 0.0]))
    plain = dl.models.GaussianMixtureDenoiser(proc, [[0.0, 0.0], [5.0, 5.0]], 0.5)
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(x, t, torch.tensor([1, 1]))
    got32, got64 = plain(x, t), plain(x.double(), t)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got64, rtol=0, atol=1e-6)  # float32 rounding of the result only


@pytest.mark.parametrize("proc", [dl.processes.EDM(), dl.processes.VESDE(prediction="x0")], ids=["edm", "ve"])
def test_the_mixture_denoiser_takes_per_sample_levels_under_a_ve_process(proc):
    """Under EDM and VESDE alpha = 1 at every level: a batch whose samples sit at different levels
    must not take the one-level shortcut (it had denoised every sample at the first one's level)."""
    model = dl.models.GaussianDenoiser(proc, [0.0, 0.0], 1.0)
    x = torch.ones(2, 2, dtype=torch.float64)
    t = torch.cat([proc.timestep(0.1, 1), proc.timestep(10.0, 1)])
    sigma = proc.sigma_of_timestep(t)
    torch.testing.assert_close(model(x, t)[:, 0], 1 / (1 + sigma**2), rtol=1e-6, atol=0)  # D = x / (1 + sigma^2)
