"""The reverse-SDE samplers (difflab.samplers.sde) on Gaussian data N(mu, S^2 I) with the exact denoiser.

Euler-Maruyama is, for Gaussian data, an affine map of its inputs at every step, so the law of
its output follows an exact recursion (:func:`em_output_moments`); the sampler is checked against
it where it is far from the data (a coarse grid), and the recursion shows first-order convergence
to the data's law. The predictor-corrector sampler has a closed-form limit instead: its Langevin
steps with the step size eps = 2 (r ||z|| / ||g||)^2 hold each level at the variance V (1 + r^2),
not V (see :func:`test_pc_converges_to_the_langevin_fixed_point`).

Tolerances: with N draws of std s in each of 2 dimensions the sample mean has standard error
s / sqrt(N) and the sample std s / sqrt(2N); 5 standard errors (seeds are fixed, so outcomes are
deterministic).
"""

import inspect
import math

import pytest
import torch

import difflab as dl
from difflab.samplers import SAMPLERS, Denoiser, sample_euler_maruyama, sample_pc
from difflab.samplers.timesteps import default_spacing, sampling_sigmas

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = 0.5
N = 20_000
SE_STD = S / math.sqrt(2 * N)  # of the data's std


@pytest.fixture(scope="module")
def ve():
    return dl.processes.VESDE(sigma_max=50.0)


@pytest.fixture(scope="module")
def model(ve):
    return dl.models.GaussianDenoiser(ve, MU, S)


def draw(model, proc, sampler, steps, seed=2, n=N, **options):
    return dl.sample(model, proc, (n, 2), sampler, steps, generator=torch.Generator().manual_seed(seed),
                     **options).double()


def levels(proc, sampler: str, steps: int) -> torch.Tensor:
    """The noise levels ``dl.sample`` gives ``sampler`` by default."""
    return sampling_sigmas(proc, steps, default_spacing(proc, SAMPLERS[sampler].default_spacing))


def em_output_moments(sigmas: list, s: float = S) -> tuple[float, float]:
    """(G, std): output mean mu (1 - G) and std of Euler-Maruyama on N(mu, s^2), exactly.

    With y = x - mu, D = mu + c y, c = s^2 / (s^2 + a^2), a step from a to b > 0 is
    y' = y + (a^2 - b^2)(c - 1) y / a^2 + sqrt(a^2 - b^2) z = g y + n z with
    g = (s^2 + b^2) / (s^2 + a^2), n^2 = a^2 - b^2; the last step (b = 0) returns D: y' = c y.
    Start: x = x_T sqrt(1 + sigma_0^2), so E y = -mu, Var y = 1 + sigma_0^2.
    """
    G, var = 1.0, 1 + sigmas[0] ** 2
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        if b > 0:
            g, n2 = (s * s + b * b) / (s * s + a * a), a * a - b * b
        else:
            g, n2 = s * s / (s * s + a * a), 0.0
        G, var = G * g, g * g * var + n2
    return G, math.sqrt(var)


def assert_moments(x, mean, std):
    """x's per-dimension mean and std within 5 standard errors (of a law of std ``std``)."""
    n = x.shape[0]
    assert torch.allclose(x.mean(0), mean, atol=5 * std / math.sqrt(n)), (x.mean(0), mean)
    assert torch.allclose(x.std(0), torch.full((2,), std, dtype=torch.float64), atol=5 * std / math.sqrt(2 * n)), \
        (x.std(0), std)


@pytest.mark.parametrize("steps", [5, 20])
def test_euler_maruyama_output_law_is_its_exact_recursion(ve, model, steps):
    x = draw(model, ve, "euler_maruyama", steps)
    G, std = em_output_moments(levels(ve, "euler_maruyama", steps).tolist())
    assert abs(std - S) > 20 * SE_STD  # the coarse grid's own error: the check below can tell
    assert_moments(x, MU * (1 - G), std)


def test_euler_maruyama_converges_at_first_order_to_the_data(ve, model):
    """The exact recursion (checked against the sampler above) halves its std error as the steps
    double, and the sampler at 400 steps has the data's moments up to that error."""
    errs = [em_output_moments(levels(ve, "euler_maruyama", n).tolist())[1] - S for n in (100, 200, 400, 800)]
    assert all(e > 0 for e in errs)  # over-dispersed: the step adds sigma_i^2 - sigma_{i+1}^2 of fresh noise
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(1.7 < r < 2.3 for r in ratios), (errs, ratios)
    x = draw(model, ve, "euler_maruyama", 400)
    assert_moments(x, MU, S + errs[2])
    assert abs(errs[2]) < 3 * SE_STD  # ... which is below the statistical noise here


def test_pc_converges_to_the_langevin_fixed_point(ve, model):
    """PC's limit in closed form. For Gaussian data at level sigma (variance V = S^2 + sigma^2 per
    dimension) a Langevin step with step size eps contracts y by 1 - eps / V and adds 2 eps of
    variance, so its fixed point is W = V / (1 - eps / (2V)); with eps = 2 r^2 (E||z|| / E||g||)^2
    and E||g|| = E||y|| / V = E||z|| sqrt(W) / V this is W = V (1 + r^2). The output D = mu + c y,
    c = S^2 / V_L at the last level sigma_L, has std S^2 sqrt((1 + r^2) / V_L): over-dispersed by
    sqrt(1 + r^2) (1.3% at Song et al.'s r = 0.16), the corrector's own bias, which does not
    shrink with the step."""
    snr = 0.4
    x = draw(model, ve, "pc", 200, snr=snr, corrector_steps=2)
    s_last = float(levels(ve, "pc", 200)[-2])
    std = S * S * math.sqrt((1 + snr**2) / (S * S + s_last**2))
    assert std - S > 10 * SE_STD
    assert_moments(x, MU, std)


def test_the_corrector_improves_on_euler_maruyama_at_equal_steps(ve, model):
    """On a coarse grid (20 steps from sigma = 50 to 0.01) the predictor over-disperses its output
    (see em_output_moments); one Langevin step per level pulls it back: measured std errors
    +0.127 (EM) and +0.064 (PC)."""
    err_em = float(draw(model, ve, "euler_maruyama", 20).std(0).mean()) - S
    err_pc = float(draw(model, ve, "pc", 20).std(0).mean()) - S
    assert err_em > 30 * SE_STD
    assert abs(err_pc) < 0.7 * err_em, (err_em, err_pc)


def test_the_last_step_returns_the_denoised_mean(ve, model):
    den = Denoiser(model, ve)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    sig = torch.tensor([3.0, 0.0], dtype=torch.float64)
    expected = den(x, 3.0)
    assert torch.equal(sample_euler_maruyama(den, x, sig), expected)
    assert torch.equal(sample_pc(den, x, sig), expected)


def test_euler_maruyama_is_ddpm_with_the_forward_variance_on_the_ve_process(ve, model):
    """For a = 1 (VE) the DDPM step with the forward transition's variance ("beta":
    sigma_t^2 - sigma_s^2) and the posterior mean is the Euler-Maruyama step, draw for draw."""
    em = draw(model, ve, "euler_maruyama", 30, n=64)
    spacing = default_spacing(ve, SAMPLERS["euler_maruyama"].default_spacing)
    ddpm = draw(model, ve, "ddpm", 30, n=64, variance="beta", spacing=spacing)
    assert torch.allclose(em, ddpm, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("corrector_steps", [0, 1, 3])
def test_network_evaluations_and_callbacks(ve, model, corrector_steps):
    steps = 7
    sig = levels(ve, "pc", steps)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 50
    den = Denoiser(model, ve)
    seen = []
    sample_pc(den, x, sig, corrector_steps=corrector_steps, callback=seen.append)
    assert den.calls == steps + (steps - 1) * corrector_steps
    assert [s["i"] for s in seen] == list(range(steps)) and [s["sigma"] for s in seen] == sig[:-1].tolist()
    den = Denoiser(model, ve)
    sample_euler_maruyama(den, x, sig, callback=seen.append)
    assert den.calls == steps
    # the registry's evals_per_step is PC's 1 + corrector_steps at its default
    default = inspect.signature(sample_pc).parameters["corrector_steps"].default
    assert SAMPLERS["pc"].evals_per_step == 1 + default and SAMPLERS["euler_maruyama"].evals_per_step == 1


@pytest.mark.parametrize("sampler", ["euler_maruyama", "pc"])
def test_reproducible_with_a_generator(ve, model, sampler):
    a, b, c = (draw(model, ve, sampler, 10, seed=seed, n=32) for seed in (5, 5, 6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert SAMPLERS[sampler].stochastic({})


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"snr": 0.0}, ValueError, r"snr must be a finite number > 0"),
        ({"snr": -0.1}, ValueError, r"snr must be a finite number > 0"),
        ({"snr": float("nan")}, ValueError, r"snr must be a finite number > 0"),
        ({"snr": float("inf")}, ValueError, r"snr must be a finite number > 0"),
        ({"snr": "0.16"}, TypeError, r"snr must be a number"),
        ({"corrector_steps": -1}, ValueError, r"corrector_steps must be >= 0"),
        ({"corrector_steps": 1.5}, TypeError, r"corrector_steps must be an integer"),
        ({"corrector_steps": True}, TypeError, r"corrector_steps must be an integer"),
    ],
)
def test_pc_options_are_checked(ve, model, options, error, match):
    with pytest.raises(error, match=match):
        dl.sample(model, ve, (2, 2), "pc", 5, **options)


def test_euler_maruyama_takes_no_options(ve, model):
    with pytest.raises(ValueError, match=r"sampler 'euler_maruyama' takes no option snr"):
        dl.sample(model, ve, (2, 2), "euler_maruyama", 5, snr=0.16)
