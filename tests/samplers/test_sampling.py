"""dl.sample over every sampler (difflab.samplers.sampling) against exact models: Gaussian and
Gaussian-mixture data have closed-form optimal denoisers, so a sampler's only error is its own
discretisation, which for Gaussian data we can also compute exactly (closed_forms.py). Also the
callback, the timesteps the model sees, the prediction type, and bad step counts, options and
noise levels."""

import math

import pytest
import torch
from closed_forms import exact_output_moments

import difflab as dl
from difflab.samplers.timesteps import sampling_sigmas

FAST = ["dpmpp_2m", "dpmpp_3m", "euler", "heun"]
MU = torch.tensor([1.0, -2.0])
MU64 = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = 0.5
N = 20_000
# Tolerances: the sample mean has standard error S / sqrt(N) = 0.0035, the sample std
# S / sqrt(2N) = 0.0025. We allow 5 standard errors (a false alarm once in ~2 million per check;
# seeds are fixed, so the outcome is deterministic anyway).
SE_MEAN, SE_STD = S / math.sqrt(N), S / math.sqrt(2 * N)

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
WEIGHTS = torch.tensor([0.2, 0.3, 0.5])
STD = 0.3


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


@pytest.mark.parametrize(
    "sampler,steps,max_rel_bias",
    # The output std's relative bias at these settings (default spacings), from one run of the
    # linear map on Gaussian data: 2M +1.4%, 3M +0.3%, Heun (49 calls) +2.2%, Euler -2.4%
    # (first order); the bounds are these rounded up. The order test shows they vanish.
    [("dpmpp_2m", 20, 0.02), ("dpmpp_3m", 20, 0.005), ("heun", 25, 0.035), ("euler", 100, 0.03)],
)
def test_gaussian_data_mean_and_std_of_the_higher_order_samplers(proc, sampler, steps, max_rel_bias):
    n = 20_000
    model = dl.models.GaussianDenoiser(proc, MU64, S)
    x = dl.sample(
        model, proc, (n, 2), sampler, steps=steps, generator=torch.Generator().manual_seed(0)
    )
    se_mean, se_std = S / math.sqrt(n), S / math.sqrt(2 * n)
    assert torch.allclose(
        x.mean(0).double(), MU64, atol=5 * se_mean + max_rel_bias * MU64.abs().max().item()
    )
    assert ((x.std(0).double() - S).abs() < 5 * se_std + max_rel_bias * S).all(), x.std(0)


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


@pytest.mark.parametrize("sampler", FAST)
def test_step_counts_a_sampler_cannot_do(proc, sampler):
    model = dl.models.GaussianDenoiser(proc, MU64, S)
    with pytest.raises(ValueError, match="steps"):
        dl.sample(model, proc, (4, 2), sampler, steps=0)
    with pytest.raises((TypeError, ValueError), match="steps"):
        dl.sample(model, proc, (4, 2), sampler, steps=2.5)
    with pytest.raises(ValueError, match="1 .. T = 1000"):
        dl.sample(model, proc, (4, 2), sampler, steps=2000, spacing="trailing")


def test_unknown_spacing_option_and_variant(proc):
    model = dl.models.GaussianDenoiser(proc, MU64, S)
    with pytest.raises(ValueError, match="unknown timestep spacing 'cosine'.*logsnr"):
        dl.sample(model, proc, (4, 2), "dpmpp_2m", steps=5, spacing="cosine")
    with pytest.raises(ValueError, match="takes no option s_churn"):
        dl.sample(model, proc, (4, 2), "dpmpp_2m", steps=5, s_churn=1.0)
    with pytest.raises(ValueError, match="variant"):
        dl.sample(model, proc, (4, 2), "dpmpp_3m", steps=5, variant="fourth")
    with pytest.raises(ValueError, match="s_churn"):
        dl.sample(model, proc, (4, 2), "heun", steps=5, s_churn=-1.0)
    with pytest.raises(ValueError, match="eta is an option of"):
        dl.sample(model, proc, (4, 2), "dpmpp_2m", steps=5, eta=0.5)


def test_sigmas_outside_the_training_range(proc):
    model = dl.models.GaussianDenoiser(proc, MU64, S)
    with pytest.raises(ValueError, match=r"sigma_min, sigma_max"):
        dl.sample(model, proc, (4, 2), "euler", sigmas=torch.tensor([80.0, 1.0, 0.002, 0.0]))
    with pytest.raises(ValueError, match=r"sigma_min, sigma_max"):
        dl.sample(model, proc, (4, 2), "euler", sigmas=torch.tensor([500.0, 1.0, 0.0]))


def test_sampler_sigmas_are_the_levels_sample_visits():
    """samplers.sampler_sigmas gives what dl.sample runs over (the editing functions build their
    grids with it): the sampler's default spacing, and for consistency sampling no last level at
    sigma_min (one more level above it instead)."""
    edm = dl.processes.EDM()
    model = dl.models.GaussianDenoiser(edm, [0.0, 0.0], 1.0)
    for sampler in ("ddim", "consistency", "heun"):
        seen = []
        dl.sample(model, edm, (3, 2), sampler, 3, generator=torch.Generator().manual_seed(0),
                  callback=lambda step: seen.append(step["sigma"]))
        levels = dl.samplers.sampler_sigmas(edm, sampler, 3)
        assert sorted(set(seen), reverse=True) == pytest.approx(levels[:-1].tolist(), rel=1e-12), sampler
    karras = dl.samplers.sampling_sigmas(edm, 3, "karras")
    assert torch.equal(dl.samplers.sampler_sigmas(edm, "ddim", 3), karras)
    consistency = dl.samplers.sampler_sigmas(edm, "consistency", 3)
    assert len(consistency) == 4 and float(consistency[-2]) > edm.sigma_min * 1.01
    assert torch.equal(consistency[:-1], dl.samplers.sampling_sigmas(edm, 4, "karras")[:-2])
    with pytest.raises(ValueError, match="unknown sampler"):
        dl.samplers.sampler_sigmas(edm, "rk45", 3)
