"""Inversion and interpolation (difflab.editing.interpolate): slerp against its closed form, the
DDIM round trip, interpolation endpoints (fixtures: conftest.py)."""

import math

import pytest
import torch

import difflab as dl
from difflab import editing as E


def test_slerp_closed_form():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(E.slerp(a, b, 0.5), torch.tensor([math.sqrt(0.5)] * 2))
    u = torch.tensor([0.0, 1 / 3, 1.0])
    out = E.slerp(a, 2 * b, u)
    assert out.shape == (3, 2)
    assert torch.equal(out[0], a) and torch.allclose(out[2], 2 * b)
    # along the great circle at angle u * 90 degrees (unequal norms: weights sin((1-u)th)/sin th, sin(u th)/sin th)
    assert torch.allclose(out[1], torch.tensor([math.sin(math.pi / 3), 2 * math.sin(math.pi / 6)]))
    # parallel vectors: linear interpolation
    assert torch.allclose(E.slerp(a, 3 * a, 0.5), 2 * a)
    with pytest.raises(ValueError, match="same shape"):
        E.slerp(a, torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="zero vector"):
        E.slerp(a, torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="opposite"):  # no unique great circle: it returned 0 at u = 0.5
        E.slerp(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0, -3.0]), 0.5)
    with pytest.raises(ValueError, match="opposite"):
        E.slerp(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1e-9]), 0.5)  # it returned 8e6
    # a batch is one vector: the angle is that of the flattened tensors
    a2, b2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(E.slerp(a2, b2, 0.5), torch.tensor([[1.0, 0.0], [1.0, 0.0]]) * math.sqrt(0.5))


def test_slerp_keeps_gaussian_norms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 784, generator=g), torch.randn(1, 784, generator=g)
    b = b * (a.norm() / b.norm())
    u = torch.linspace(0, 1, 9)
    s = E.slerp(a, b, u)
    assert torch.allclose(s.flatten(1).norm(dim=1), a.norm().expand(9), rtol=1e-5)
    lerp_mid = 0.5 * (a + b)
    assert lerp_mid.norm() < 0.8 * a.norm()  # the straight line leaves the Gaussian shell
    assert torch.equal(s[0], a) and torch.allclose(s[-1], b, atol=1e-6)


def test_inversion_round_trip(proc, mixture):
    """DDIM inversion then DDIM sampling returns the input up to the ODE discretisation error,
    which falls like 1 / steps (DDIM is a first-order solver)."""
    x = mixture.sample(300, torch.Generator().manual_seed(0))
    errs = {}
    for steps in (50, 100):
        rec, z = E.reconstruct(mixture, proc, x, steps, return_latent=True)
        errs[steps] = (rec - x).abs().mean().item()
    assert errs[100] < 0.03
    assert 0.4 < errs[100] / errs[50] < 0.6
    assert z.std().item() == pytest.approx(1.0, abs=0.1)  # the latent looks like noise


def test_interpolate_endpoints(proc, mixture):
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(2, generator=g), torch.randn(2, generator=g)
    strip = E.interpolate(mixture, proc, za, zb, frames=5, steps=20, latents=True)
    assert strip.shape == (5, 2)
    assert torch.allclose(strip[0], dl.sample(mixture, proc, (1, 2), "ddim", 20, noise=za[None])[0], atol=1e-6)
    assert torch.allclose(strip[-1], dl.sample(mixture, proc, (1, 2), "ddim", 20, noise=zb[None])[0], atol=1e-6)
    a, b = mixture.sample(2, g)
    strip = E.interpolate(mixture, proc, a, b, frames=4, steps=50)
    assert torch.allclose(strip[0], E.reconstruct(mixture, proc, a[None], 50)[0], atol=1e-5)
    assert (strip[0] - a).abs().max() < 0.1 and (strip[-1] - b).abs().max() < 0.1
    with pytest.raises(ValueError, match="frames must be an integer >= 2"):
        E.interpolate(mixture, proc, a, b, frames=1)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        E.interpolate(mixture, proc, a, torch.zeros(3), frames=3)
