"""Inversion and interpolation (difflab.editing.interpolate): slerp against its closed form, the
DDIM round trip, interpolation endpoints, on every process (fixtures: conftest.py)."""

import math

import pytest
import torch

import difflab as dl
from networks import tiny_text_model
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


def test_inversion_round_trip(each_proc, each_mixture):
    """DDIM inversion then DDIM sampling returns the input up to the ODE discretisation error,
    which falls like 1 / steps (DDIM is Euler's method for the probability-flow ODE in VE form, a
    first-order solver), on every process with its default spacing. Measured mean |x0' - x0| at
    25 / 50 / 100 steps: ddpm 0.089 / 0.046 / 0.024, vp 0.089 / 0.046 / 0.024, ve 0.146 / 0.068 /
    0.033, edm 0.170 / 0.078 / 0.038, flow 0.084 / 0.042 / 0.021: steps * error <= 4.3."""
    proc, mixture = each_proc, each_mixture
    x = mixture.sample(300, torch.Generator().manual_seed(0))
    errs = {}
    for steps in (25, 50, 100):
        rec, z = E.reconstruct(mixture, proc, x, steps, return_latent=True)
        errs[steps] = (rec - x).abs().mean().item()
        assert errs[steps] < 4.5 / steps, (steps, errs)
    assert z.std().item() == pytest.approx(1.0, abs=0.1)  # the latent looks like standard noise
    assert 0.4 < errs[50] / errs[25] < 0.6 and 0.4 < errs[100] / errs[50] < 0.6, errs


def test_inversion_is_one_computation_on_every_process(matched_procs):
    """Over the same noise levels the five processes are one process in VE form: the latents and the
    round trips equal the DDPM chain's (measured: latents to 2e-6, round trips to 2e-5)."""
    ddpm = matched_procs["ddpm"]
    x = dl.models.GaussianMixtureDenoiser(ddpm, [[-1.5, -1.5], [1.5, 1.5]], 0.5).sample(
        200, torch.Generator().manual_seed(0))
    out = {}
    for name, proc in matched_procs.items():
        mixture = dl.models.GaussianMixtureDenoiser(proc, [[-1.5, -1.5], [1.5, 1.5]], 0.5)
        out[name] = E.reconstruct(mixture, proc, x, 20, spacing="karras", return_latent=True)
    for name in matched_procs:
        for got, want in zip(out[name], out["ddpm"]):
            assert torch.allclose(got, want, rtol=1e-5, atol=5e-5), name


def test_interpolate_endpoints(each_proc, each_mixture):
    proc, mixture = each_proc, each_mixture
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


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "flow"])
def test_steps_on_continuous_processes(name):
    """No grid of T steps in continuous time: any number of levels >= 1, else a clear error."""
    proc = dl.processes.build(name)
    model = dl.models.GaussianDenoiser(proc, [0.0, 0.0], 1.0)
    x = torch.zeros(2, 2)
    for steps in (0, 1.5, "20"):
        with pytest.raises(ValueError, match=r"steps must be an integer >= 1 \(the number of noise levels"):
            E.reconstruct(model, proc, x, steps)
        with pytest.raises(ValueError, match=r"steps must be an integer >= 1 \(the number of noise levels"):
            E.interpolate(model, proc, x[0], x[1], 3, steps)
    with pytest.raises(ValueError, match="spacing 'leading' picks timesteps of a discrete grid"):
        E.reconstruct(model, proc, x, 10, spacing="leading")


def test_a_text_model_interpolates_under_one_caption():
    """cond = token ids [1, L]: every frame is sampled under that caption (and guided against "")."""
    model, proc = tiny_text_model(), dl.GaussianDiffusion(dl.schedules.cosine(100))
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(1, 8, 8, generator=g), torch.randn(1, 8, 8, generator=g)
    ids = model.tokenizer.encode(["a bold 7 on the left"])
    strip = E.interpolate(model, proc, za, zb, frames=3, steps=4, latents=True, cond=ids, guidance=2.0)
    z = E.slerp(za, zb, torch.linspace(0, 1, 3, dtype=torch.float64)).float()
    want = dl.sample(model, proc, (3, 1, 8, 8), "ddim", 4, cond=ids.expand(3, -1), guidance=2.0, noise=z)
    torch.testing.assert_close(strip, want)
