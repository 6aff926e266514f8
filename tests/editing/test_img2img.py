"""SDEdit (difflab.editing.img2img) with exact models: strength 0 and 1, its noise levels, the
distance to the input, the data distribution kept (fixtures: conftest.py)."""

import pytest
import torch

import difflab as dl
from difflab import editing as E


def test_sdedit_strength_0_and_1(proc, mixture):
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


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_sdedit_bad_strength(proc, mixture, strength):
    with pytest.raises(ValueError, match=r"strength must (lie in \(0, 1\]|be a number in \(0, 1\])"):
        E.img2img(mixture, proc, torch.zeros(2, 2), strength)


def test_sdedit_bad_input(proc, mixture):
    with pytest.raises(ValueError, match="unknown sampler"):
        E.img2img(mixture, proc, torch.zeros(2, 2), 0.5, "dddim")
    with pytest.raises(TypeError, match="float tensor"):
        E.img2img(mixture, proc, torch.zeros(2, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="noise must have the image's shape"):
        E.img2img(mixture, proc, torch.zeros(2, 2), 0.5, noise=torch.zeros(3, 2))
