"""SDEdit (difflab.editing.img2img) with exact models: strength 0 and 1, its noise levels, the
distance to the input, the data distribution kept, on every process (fixtures: conftest.py)."""

import math

import numpy as np
import pytest
import torch

import difflab as dl
from difflab import editing as E


def test_sdedit_strength_0_and_1(each_proc, each_mixture):
    """Strength 0 returns the input; strength 1 is plain sampling from the same noise, on every
    process and with every sampler (each with its default spacing for the process)."""
    proc, mixture = each_proc, each_mixture
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    eps = torch.randn(64, 2, generator=g)
    assert torch.equal(E.img2img(mixture, proc, x, 0.0, noise=eps), x)
    for sampler in sorted(dl.samplers.SAMPLERS):  # every sampler, with its own default spacing
        full = E.img2img(mixture, proc, x, 1.0, sampler, 12, noise=eps, generator=torch.Generator().manual_seed(3))
        plain = dl.sample(mixture, proc, x.shape, sampler, 12, noise=eps, generator=torch.Generator().manual_seed(3))
        assert torch.equal(full, plain), sampler


def test_sdedit_sigmas(proc):
    full = dl.samplers.sampling_sigmas(proc, 50)
    assert torch.equal(E.sdedit_sigmas(proc, 1.0, 50), full)
    sig = E.sdedit_sigmas(proc, 0.5, 50)
    assert sig[0] == pytest.approx(float(proc.sigma_of(torch.tensor(0.5 * 999, dtype=torch.float64))))
    assert (sig[1:] < sig[:-1]).all() and sig[-1] == 0
    assert torch.equal(sig[1:], full[full < sig[0]])
    assert len(sig) - 1 == 26  # about strength * steps steps
    assert len(E.sdedit_sigmas(proc, 0.1, 50)) - 1 == 6


# sigma(t_s) at t_s = t_min + s (t_max - t_min), from each process's definition and its defaults
# (Song et al. 2021, eqs. 31 and 33: VE sigma_min (sigma_max / sigma_min)^t with 0.01, 50 here;
# VP 1 / abar(t) = exp(beta_min t + (beta_max - beta_min) t^2 / 2) with 0.1, 20 on [1e-3, 1];
# flow x_t = (1 - t) x0 + t eps, sigma = t / (1 - t) on [1e-3, 0.999]); EDM (t = sigma on
# [0.002, 80]) along its rho = 7 ramp, Karras et al. 2022 eq. 5
SDEDIT_START = {
    "vp": lambda s: math.sqrt(math.expm1(0.1 * (t := 1e-3 + s * (1 - 1e-3)) + 19.9 * t * t / 2)),
    "ve": lambda s: 0.01 * 5000.0**s,
    "edm": lambda s: (0.002 ** (1 / 7) + s * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7,
    "flow": lambda s: (t := 1e-3 + s * (0.999 - 1e-3)) / (1 - t),
}


@pytest.mark.parametrize("name", sorted(SDEDIT_START))
def test_sdedit_sigmas_in_the_process_time(name):
    """Continuous time: strength s starts at t_min + s (t_max - t_min) of the process's own time (EDM:
    s of the way along its rho-7 ramp), then the process's default grid below it ('uniform' in t:
    about s * steps steps; EDM's karras)."""
    proc = dl.processes.build(name)
    full = dl.samplers.sampling_sigmas(proc, 50, proc.default_spacing)
    assert torch.equal(E.sdedit_sigmas(proc, 1.0, 50), full)
    for strength in (0.05, 0.37, 0.5, 0.9):
        sig = E.sdedit_sigmas(proc, strength, 50)
        assert float(sig[0]) == pytest.approx(SDEDIT_START[name](strength), rel=1e-9)
        assert torch.equal(sig[1:], full[full < sig[0]]) and sig[-1] == 0
        if proc.default_spacing == "uniform":
            assert abs(len(sig) - 1 - strength * 50) <= 1
    assert float(E.sdedit_sigmas(dl.processes.build("flow"), 0.5, 50)[0]) == pytest.approx(1.0)  # t = 1/2
    with pytest.raises(ValueError, match="spacing 'trailing' picks timesteps of a discrete grid"):
        E.sdedit_sigmas(proc, 0.5, 50, "trailing")


def test_sdedit_distance_grows_with_strength(proc, mixture):
    """Deterministic DDIM from the same eps: the further the start, the further the result."""
    g = torch.Generator().manual_seed(0)
    x = mixture.sample(500, g) + torch.randn(500, 2, generator=g)  # off the data: edits move it
    eps = torch.randn(500, 2, generator=g)
    strengths = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
    d = [(E.img2img(mixture, proc, x, s, "ddim", 50, noise=eps) - x).norm(dim=1).mean().item() for s in strengths]
    assert all(b > a for a, b in zip(d[:-1], d[1:])), d
    assert d[0] < 0.15 * d[-1]


def test_sdedit_keeps_the_data_distribution(proc, mixture):
    """From data y ~ p, the noised start is a draw of q(x_t) and the exact denoiser's
    probability-flow ODE carries q(x_t) back to p: each mode keeps its share, mean and spread.
    How many points keep their own mode falls with the strength (at 0.6, sigma = 6 drowns the
    mode gap of 3)."""
    y, k = mixture.sample(3000, torch.Generator().manual_seed(0), return_labels=True)
    same = {}
    for strength in (0.2, 0.6):
        out = E.img2img(mixture, proc, y, strength, "ddim", 100, generator=torch.Generator().manual_seed(1))
        upper = out[:, 0] > 0
        assert abs(upper.float().mean().item() - 0.5) < 0.04
        for sel, m in ((upper, 1.5), (~upper, -1.5)):
            assert out[sel].mean(0).sub(m).abs().max() < 0.05
            assert out[sel].std(0).sub(0.5).abs().max() < 0.035
        same[strength] = (upper == (k == 1)).float().mean().item()
    assert same[0.2] > 0.97 and same[0.6] < 0.7


def test_sdedit_keeps_the_data_distribution_on_every_process(each_proc, each_mixture):
    """The same on every process at strength 0.5 (DDIM, 100 steps): the start x = y + sigma(t_s) eps
    is a draw of q(x) and the probability-flow ODE carries it back to p. Measured: shares 0.502 ..
    0.513, mode means within 0.029, stds within 0.030 of the mixture's."""
    y = each_mixture.sample(3000, torch.Generator().manual_seed(0))
    out = E.img2img(each_mixture, each_proc, y, 0.5, "ddim", 100, generator=torch.Generator().manual_seed(1))
    upper = out[:, 0] > 0
    assert abs(upper.float().mean().item() - 0.5) < 0.04
    for sel, m in ((upper, 1.5), (~upper, -1.5)):
        assert out[sel].mean(0).sub(m).abs().max() < 0.05
        assert out[sel].std(0).sub(0.5).abs().max() < 0.035


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "heun"])
def test_sdedit_is_one_computation_on_every_process(matched_procs, sampler):
    """Over the same noise levels the five processes are one process in VE form: started at the same
    level (each at its own strength: the chain's 0.5 is another process's (t - t_min) / (t_max - t_min)
    of the same sigma, EDM's the fraction of its rho-7 ramp), SDEdit gives the chain's result draw for draw. Measured: equal to 1e-5."""
    ddpm = matched_procs["ddpm"]
    y = dl.models.GaussianMixtureDenoiser(ddpm, [[-1.5, -1.5], [1.5, 1.5]], 0.5).sample(
        200, torch.Generator().manual_seed(0))
    eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    start = E.sdedit_sigmas(ddpm, 0.5, 12, "karras")[:1]
    out = {}
    for name, proc in matched_procs.items():
        t = float(proc.t_of(start))
        strength = 0.5 if name == "ddpm" else (t - proc.t_min) / (proc.t_max - proc.t_min)
        if name == "edm":  # the fraction of its rho-7 ramp
            lo, hi, at = (float(v) ** (1 / 7) for v in (proc.sigma_min, proc.sigma_max, start))
            strength = (at - lo) / (hi - lo)
        mixture = dl.models.GaussianMixtureDenoiser(proc, [[-1.5, -1.5], [1.5, 1.5]], 0.5)
        out[name] = E.img2img(mixture, proc, y, strength, sampler, 12, spacing="karras", noise=eps,
                              generator=torch.Generator().manual_seed(2))
    for name in matched_procs:
        assert torch.allclose(out[name], out["ddpm"], rtol=1e-5, atol=1e-5), name


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_sdedit_bad_strength(each_proc, each_mixture, strength):
    with pytest.raises(ValueError, match=r"strength must (lie in \(0, 1\]|be a number in \(0, 1\])"):
        E.img2img(each_mixture, each_proc, torch.zeros(2, 2), strength)
    with pytest.raises(ValueError, match=r"strength must (lie in \(0, 1\]|be a number in \(0, 1\])"):
        E.sdedit_sigmas(each_proc, strength, 10)


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "flow"])
def test_sdedit_steps_on_continuous_processes(name):
    """No grid of T steps in continuous time: any number of levels >= 1, else a clear error."""
    proc = dl.processes.build(name)
    model = dl.models.GaussianDenoiser(proc, [0.0, 0.0], 1.0)
    for steps in (0, -1, 2.5, "50", None):
        with pytest.raises(ValueError, match=r"steps must be an integer >= 1 \(the number of noise levels"):
            E.img2img(model, proc, torch.zeros(2, 2), 0.5, "ddim", steps)
    # more steps than the DDPM chain's T = 1000 (strength 0.01 runs the lowest ~1% of them)
    assert torch.isfinite(E.img2img(model, proc, torch.zeros(2, 2), 0.01, "ddim", np.int64(1500))).all()


def test_sdedit_bad_input(proc, mixture):
    with pytest.raises(ValueError, match="unknown sampler"):
        E.img2img(mixture, proc, torch.zeros(2, 2), 0.5, "dddim")
    with pytest.raises(TypeError, match="float tensor"):
        E.img2img(mixture, proc, torch.zeros(2, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="noise must have the image's shape"):
        E.img2img(mixture, proc, torch.zeros(2, 2), 0.5, noise=torch.zeros(3, 2))
