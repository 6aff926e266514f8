"""The fast samplers (DPM-Solver++ 2M/3M, EDM Euler/Heun) against exact models.

For Gaussian data N(mu, s^2 I) the probability-flow ODE is solved in closed form: in VE
coordinates x(sigma) - mu = (x(sigma_0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2).
Every deterministic sampler is then a linear map of x - mu, so one run gives its gain and the
gain's relative error against the exact one: the discretisation error, whose decay when the
steps double is the method's order. Guidance is checked on the conditional Gaussian mixture,
whose guided denoiser is known exactly.
"""

import math

import pytest
import torch

import difflab as dl
from difflab.samplers import SAMPLERS, Denoiser, optimize_sigmas
from difflab.samplers.timesteps import sampling_sigmas

FAST = ["dpmpp_2m", "dpmpp_3m", "euler", "heun"]
ALL = ["ddpm", "ddim"] + FAST
MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
S = 0.5


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear(1000))


def gain_error(proc, sampler, steps, spacing, **options) -> float:
    """Relative error of the sampler's gain on Gaussian data, solving from sigma_max to sigma_min."""
    model = dl.models.GaussianDenoiser(proc, MU, S)
    sig = sampling_sigmas(proc, steps, spacing)[
        :-1
    ]  # stop at sigma_min: the ODE alone, no final jump
    x_in = torch.tensor([[0.3, -0.7]], dtype=torch.float64) * math.sqrt(1 + float(sig[0]) ** 2)
    x = SAMPLERS[sampler].fn(Denoiser(model, proc), x_in.clone(), sig, **options)
    g = (x - MU) / (x_in - MU)
    assert torch.allclose(g[0, 0], g[0, 1], rtol=1e-9)  # a linear, isotropic map, as it must be
    exact = math.sqrt(S**2 + float(sig[-1]) ** 2) / math.sqrt(S**2 + float(sig[0]) ** 2)
    return float(g[0, 0]) / exact - 1


@pytest.mark.parametrize(
    "sampler,spacing,order,options",
    [
        ("euler", "karras", 1, {}),
        ("heun", "karras", 2, {}),
        ("dpmpp_2m", "karras", 2, {}),
        ("dpmpp_3m", "karras", 3, {}),
        # DPM-Solver's reference 3M (= diffusers): its second difference has half the Taylor
        # weight, so it converges at second order only (see dpm_solver.py).
        ("dpmpp_3m", "logsnr", 2, {"variant": "dpmsolver"}),
    ],
)
def test_convergence_order(proc, sampler, spacing, order, options):
    errs = [abs(gain_error(proc, sampler, n, spacing, **options)) for n in (32, 64, 128)]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    # Error ratio 2^order when the steps double; measured: Euler 1.98, Heun 4.3/4.1, 2M 4.4/4.2,
    # 3M 9.6/8.5 (still approaching 8), reference 3M 4.9/4.3.
    lo, hi = 2**order * 0.85, 2**order * 1.35
    assert all(lo < r < hi for r in ratios), (errs, ratios)


def test_third_order_beats_second_order(proc):
    for n in (32, 64):
        assert (
            abs(gain_error(proc, "dpmpp_3m", n, "logsnr"))
            < abs(gain_error(proc, "dpmpp_2m", n, "logsnr")) / 10
        )


@pytest.mark.parametrize(
    "sampler,steps,max_rel_bias",
    # The output std's relative bias at these settings (default spacings), from one run of the
    # linear map on Gaussian data: 2M +1.4%, 3M +0.3%, Heun (49 calls) +2.2%, Euler -2.4%
    # (first order); the bounds are these rounded up. The order test shows they vanish.
    [("dpmpp_2m", 20, 0.02), ("dpmpp_3m", 20, 0.005), ("heun", 25, 0.035), ("euler", 100, 0.03)],
)
def test_gaussian_data_mean_and_std(proc, sampler, steps, max_rel_bias):
    n = 20_000
    model = dl.models.GaussianDenoiser(proc, MU, S)
    x = dl.sample(
        model, proc, (n, 2), sampler, steps=steps, generator=torch.Generator().manual_seed(0)
    )
    se_mean, se_std = S / math.sqrt(n), S / math.sqrt(2 * n)
    assert torch.allclose(
        x.mean(0).double(), MU, atol=5 * se_mean + max_rel_bias * MU.abs().max().item()
    )
    assert ((x.std(0).double() - S).abs() < 5 * se_std + max_rel_bias * S).all(), x.std(0)


def test_heun_with_churn_keeps_the_distribution(proc):
    """EDM's stochastic Heun (S_churn > 0, on Karras levels as in EDM) still samples N(mu, s^2)."""
    n = 20_000
    model = dl.models.GaussianDenoiser(proc, MU, S)
    g = torch.Generator().manual_seed(1)
    x = dl.sample(
        model,
        proc,
        (n, 2),
        "heun",
        steps=50,
        spacing="karras",
        generator=g,
        s_churn=10.0,
        s_tmin=0.05,
        s_tmax=50.0,
    )
    # Measured std bias (+1.6% here; +12% at 20 steps, +0.4% at 100: the churn adds error on coarse
    # grids that vanishes as the steps grow); the bound is rounded up.
    assert torch.allclose(x.mean(0).double(), MU, atol=5 * S / math.sqrt(n) + 0.01)
    assert ((x.std(0).double() - S).abs() < 5 * S / math.sqrt(2 * n) + 0.025 * S).all(), x.std(0)


# ------------------------------------------------------------------ guidance on every sampler
MEANS = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
WEIGHTS = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)


class Counting(torch.nn.Module):
    """The model, counting forward passes and their batch sizes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_classes, self.batches = model, model.num_classes, []

    def forward(self, x_t, t, cond=None):
        self.batches.append(len(x_t))
        return self.model(x_t, t, cond)


def mixture(proc):
    return dl.models.GaussianMixtureDenoiser(proc, MEANS, 0.3, WEIGHTS, conditional=True)


def nearest(x):
    return torch.cdist(x.double(), MEANS).argmin(1)


def expected_calls(sampler, steps):
    return 2 * steps - 1 if sampler == "heun" else steps


@pytest.mark.parametrize("sampler", ALL)
def test_guidance_one_samples_the_requested_component(proc, sampler):
    n, steps = 600, 20
    model = Counting(mixture(proc))
    cond = torch.arange(n) % 3
    x = dl.sample(
        model,
        proc,
        (n, 2),
        sampler,
        steps=steps,
        cond=cond,
        generator=torch.Generator().manual_seed(2),
    )
    assert (nearest(x) == cond).all()
    for k in range(3):
        assert torch.allclose(x[cond == k].mean(0).double(), MEANS[k], atol=0.1)
    # one forward pass of size B per evaluation; Heun evaluates twice per step but on the last
    assert model.batches == [n] * expected_calls(sampler, steps)


@pytest.mark.parametrize("sampler", ALL)
def test_guidance_zero_samples_the_unconditional_mixture(proc, sampler):
    n, steps = 3000, 20
    model = Counting(mixture(proc))
    cond = torch.zeros(n, dtype=torch.long)  # ignored at guidance 0: only the null label is used
    x = dl.sample(
        model,
        proc,
        (n, 2),
        sampler,
        steps=steps,
        cond=cond,
        guidance=0.0,
        generator=torch.Generator().manual_seed(3),
    )
    share = torch.bincount(nearest(x), minlength=3).double() / n
    se = (WEIGHTS * (1 - WEIGHTS) / n).sqrt()
    assert ((share - WEIGHTS).abs() < 5 * se).all(), share
    assert model.batches == [n] * expected_calls(sampler, steps)


class PreGuided(torch.nn.Module):
    """eps_uncond + w (eps_cond - eps_uncond) computed in one call: the guided model, by hand."""

    def __init__(self, model, w):
        super().__init__()
        self.model, self.w = model, w

    def forward(self, x_t, t, cond=None):
        null = torch.full_like(cond, self.model.num_classes)
        e_c, e_u = self.model(x_t, t, cond), self.model(x_t, t, null)
        return e_u + self.w * (e_c - e_u)


@pytest.mark.parametrize("sampler", ALL)
def test_guidance_is_one_batched_pass_of_2b(proc, sampler):
    n, steps, w = 64, 8, 3.0
    model = Counting(mixture(proc))
    cond = torch.arange(n) % 3
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(4))
    kw = dict(steps=steps, noise=noise)
    x = dl.sample(
        model,
        proc,
        (n, 2),
        sampler,
        cond=cond,
        guidance=w,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )
    assert model.batches == [2 * n] * expected_calls(sampler, steps)
    ref = dl.sample(
        PreGuided(model.model, w),
        proc,
        (n, 2),
        sampler,
        cond=cond,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )
    assert torch.allclose(x, ref, atol=1e-5)


@pytest.mark.parametrize("sampler", ALL)
def test_clip_and_dynamic_threshold_bound_the_samples(proc, sampler):
    """Every sampler ends on the clipped x0 estimate: |x| <= c, and <= 1 with dynamic thresholding."""
    model = dl.models.GaussianMixtureDenoiser(proc, MEANS, 0.3)
    g = torch.Generator().manual_seed(6)
    x = dl.sample(model, proc, (200, 2), sampler, steps=10, clip_x0=0.5, generator=g)
    assert x.abs().max() <= 0.5 + 1e-6
    free = dl.sample(
        model, proc, (200, 2), sampler, steps=10, generator=torch.Generator().manual_seed(6)
    )
    assert free.abs().max() > 2  # the unclipped samples do leave the box
    x = dl.sample(model, proc, (200, 2), sampler, steps=10, dynamic_threshold=0.9, generator=g)
    assert x.abs().max() <= 1 + 1e-6


# ------------------------------------------------------------------ spacings and schedules
def test_logsnr_spacing_has_equal_steps_in_log_sigma(proc):
    sig = sampling_sigmas(proc, 7, "logsnr")
    assert sig[-1] == 0 and len(sig) == 8
    assert math.isclose(float(sig[0]), proc.sigma_max) and math.isclose(
        float(sig[-2]), proc.sigma_min
    )
    gaps = sig[:-1].log().diff()
    assert torch.allclose(gaps, gaps[0].expand_as(gaps))


def test_default_spacings_are_documented():
    assert {n: SAMPLERS[n].default_spacing for n in FAST} == {
        "dpmpp_2m": "logsnr",
        "dpmpp_3m": "logsnr",
        "euler": "logsnr",
        "heun": "logsnr",
    }
    assert SAMPLERS["heun"].evals_per_step == 2


def test_optimize_sigmas_lowers_the_error(proc):
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    model = dl.models.GaussianMixtureDenoiser(proc, torch.stack([ang.cos(), ang.sin()], 1), 0.1)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(7))
    sig = optimize_sigmas(
        model, proc, (64, 2), 4, "dpmpp_2m", noise=noise, max_evals=80, reference_steps=100
    )
    assert len(sig) == 5 and sig[-1] == 0 and (sig[1:] < sig[:-1]).all()
    assert math.isclose(float(sig[0]), proc.sigma_max) and float(sig[-2]) >= proc.sigma_min

    ref = dl.sample(model, proc, (64, 2), "dpmpp_3m", steps=100, noise=noise)

    def err(**kw):
        return float(
            ((dl.sample(model, proc, (64, 2), "dpmpp_2m", noise=noise, **kw) - ref) ** 2).mean()
        )

    assert err(sigmas=sig) < 0.5 * err(steps=4, spacing="logsnr")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("sampler", FAST)
def test_guidance_needs_a_conditional_model(proc, sampler):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    with pytest.raises(ValueError, match="class-conditional"):
        dl.sample(
            model,
            proc,
            (4, 2),
            sampler,
            steps=5,
            guidance=2.0,
            cond=torch.zeros(4, dtype=torch.long),
        )


@pytest.mark.parametrize("sampler", FAST)
def test_step_counts_a_sampler_cannot_do(proc, sampler):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    with pytest.raises(ValueError, match="steps"):
        dl.sample(model, proc, (4, 2), sampler, steps=0)
    with pytest.raises((TypeError, ValueError), match="steps"):
        dl.sample(model, proc, (4, 2), sampler, steps=2.5)
    with pytest.raises(ValueError, match="1 .. T = 1000"):
        dl.sample(model, proc, (4, 2), sampler, steps=2000, spacing="trailing")


def test_unknown_spacing_option_and_variant(proc):
    model = dl.models.GaussianDenoiser(proc, MU, S)
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
    model = dl.models.GaussianDenoiser(proc, MU, S)
    with pytest.raises(ValueError, match=r"sigma_min, sigma_max"):
        dl.sample(model, proc, (4, 2), "euler", sigmas=torch.tensor([80.0, 1.0, 0.002, 0.0]))
    with pytest.raises(ValueError, match=r"sigma_min, sigma_max"):
        dl.sample(model, proc, (4, 2), "euler", sigmas=torch.tensor([500.0, 1.0, 0.0]))


def test_optimize_sigmas_rejects_stochastic_samplers(proc):
    model = dl.models.GaussianDenoiser(proc, MU, S)
    with pytest.raises(ValueError, match="deterministic"):
        optimize_sigmas(model, proc, (8, 2), 4, "ddpm")
    with pytest.raises(ValueError, match="deterministic"):
        optimize_sigmas(model, proc, (8, 2), 4, "heun", s_churn=1.0)


# ------------------------------------------------------------------ the benchmark's smoke test
def test_sampler_quality_benchmark_quick(tmp_path):
    """benchmarks/sampler_quality.py --quick: the whole table's code path on few samples."""
    import json

    from scripts import load_script

    bench = load_script("benchmarks/sampler_quality.py")
    res = bench.main(["--quick", "--out", str(tmp_path), "--quiet", "--n", "200"])
    for suffix in ("md", "json", "png"):
        assert (tmp_path / f"sampler_quality.{suffix}").stat().st_size > 0
    rows = json.loads((tmp_path / "sampler_quality.json").read_text())["rows"]
    assert {r["problem"] for r in rows} == {"2d", "64d"}
    ours = [r for r in rows if r["library"] == "difflab"]
    assert {r["method"] for r in ours} >= set(FAST) and all(math.isfinite(r["fd"]) for r in ours)
    # the NFE column counts network calls: Heun makes 2 * steps - 1
    assert {(r["method"], r["nfe_target"], r["nfe"]) for r in ours if r["method"] == "heun"} == {
        ("heun", 5, 5),
        ("heun", 10, 9),
    }
    assert "Headline" in (tmp_path / "sampler_quality.md").read_text()
    assert len(res["rows"]) == len(rows)


def test_dynamic_threshold_is_imagens_rule():
    """s = max(1, quantile_p |x0|) per sample, x0 <- clamp(x0, -s, s) / s (Saharia et al. 2022,
    sec. 2.3), on a network whose x0 is known: the bound alone (|x| <= 1) also held for a plain
    clamp to [-1, 1], which moved samples by up to 0.25."""
    from difflab.samplers.denoiser import Denoiser

    proc = dl.GaussianDiffusion(dl.schedules.linear(100), prediction="x0")
    x0 = torch.tensor([[0.5, -3.0, 2.0, 1.5], [0.2, 0.4, -0.6, 0.8]])  # a sample above 1, one within
    den = Denoiser(lambda x, t: x0, proc, dynamic_threshold=0.5)
    got = den(torch.zeros(2, 4), 1.0)
    s = torch.quantile(x0.abs(), 0.5, dim=1).clamp(min=1.0)[:, None]  # 1.75 and 1 (0.6 < 1)
    torch.testing.assert_close(got, torch.maximum(torch.minimum(x0, s), -s) / s)
    assert got[0].tolist() == pytest.approx([0.5 / 1.75, -1.0, 1.0, 1.5 / 1.75])  # not a clamp to [-1, 1]
    torch.testing.assert_close(got[1], x0[1])  # within [-1, 1]: unchanged
