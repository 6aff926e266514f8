"""Reconstruction-guided sampling (difflab.editing.reconstruction, inpaint's reconstruction_guidance)
against closed forms: for Gaussian data N(mu, Sigma) the exact denoiser is linear,
D(x) = mu + J (x - mu) with J = Sigma (Sigma + sigma^2 I)^-1, so the guided estimate is
D~^b = D^b + w_r J_ba (y^a - D^a) on every process, for vectors and clips, under classifier-free
guidance; and on correlated Gaussian data the filled part's mean moves to the exact conditional
E[x^b | x^a] that replacement misses, for every sampler inpaint takes."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

import difflab as dl
from difflab import editing as E
from difflab.editing.latent import latent_mask
from difflab.editing.reconstruction import ReconstructionGuided, check_reconstruction_weight
from difflab.models.autoencoder import autoencoder_kl_tiny
from difflab.processes import convert_prediction
from difflab.training.latent import encode_images

inpaint_module = importlib.import_module("difflab.editing.inpaint")


def ar1_covariance(dim: int, rho: float = 0.9, var: float = 0.25) -> torch.Tensor:
    """Sigma_ij = var rho^|i - j|: neighbours strongly correlated, as neighbouring frames are."""
    i = torch.arange(dim, dtype=torch.float64)
    return var * rho ** (i[:, None] - i[None]).abs()


class GaussianModel(nn.Module):
    """The exact network for data N(mean_k, Sigma) of any shape [B, *shape] (D = prod(shape)):
    D_k(x, sigma) = mean_k + J (x - mean_k), J = Sigma (Sigma + sigma^2 I)^-1, given as the
    process's prediction. ``means`` [K + 1, D]: with K > 0 the label k picks mean_k and the null
    label K the last row, so classifier-free guidance mixes two linear denoisers of one J."""

    def __init__(self, proc, means, cov) -> None:
        super().__init__()
        self.proc = proc
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.register_buffer("cov", torch.as_tensor(cov, dtype=torch.float64))
        k = self.means.shape[0] - 1
        self.num_classes = k if k > 0 else None

    def gain(self, sigma: float) -> torch.Tensor:
        eye = torch.eye(self.cov.shape[0], dtype=torch.float64)
        return self.cov @ torch.linalg.inv(self.cov + sigma**2 * eye)

    def denoise(self, x: torch.Tensor, sigma: float, cond=None) -> torch.Tensor:
        """D(x, sigma) in float64, x the VE state [B, ...]."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        mean = self.means[-1 if cond is None else cond]
        return (mean + (flat - mean) @ self.gain(sigma).T).reshape(x.shape)

    def forward(self, x_t, t, cond=None):
        sigma = self.proc.sigma_of_timestep(t).to(torch.float64)
        a = self.proc.scale(sigma).to(torch.float64)
        view = (-1,) + (1,) * (x_t.ndim - 1)
        x_t64 = x_t.to(torch.float64)
        # one level per batch, as the samplers call it
        x0 = self.denoise(x_t64 / a.view(view), float(sigma[0]), cond)
        return convert_prediction(x0, x_t64, a.view(view), (sigma * a).view(view), "x0",
                                  self.proc.prediction).to(x_t.dtype)


@pytest.mark.parametrize("shape", [(6,), (3, 1, 2, 1)], ids=["vector", "clip"])
@pytest.mark.parametrize("w", [1.0, 3.5])
def test_the_guided_estimate_is_the_closed_form(each_proc, shape, w):
    """Autograd through the network equals D^b + w_r J_ba (y^a - D^a); the known part stays D^a."""
    dim = math.prod(shape)
    g = torch.Generator().manual_seed(0)
    model = GaussianModel(each_proc, torch.randn(3, dim, generator=g, dtype=torch.float64) * 0.5,
                          ar1_covariance(dim))
    mask = torch.zeros(shape, dtype=torch.float64)
    mask.view(-1)[dim // 2:] = 1  # the second half unknown: for a clip, its later frames
    y = torch.rand((4,) + shape, generator=g, dtype=torch.float64) * 2 - 1
    cond = torch.tensor([0, 1, 1, 0])
    a, b = mask.view(-1) == 0, mask.view(-1) == 1
    for guidance in (1.0, 2.5):  # the gradient runs through both branches of classifier-free guidance
        for sigma in (0.05, 0.7, 6.0):
            x = y + sigma * torch.randn(y.shape, generator=g, dtype=torch.float64)
            guided = ReconstructionGuided(dl.samplers.Denoiser(model, each_proc, cond, guidance), y, mask, w)
            got = guided(x, sigma).reshape(4, dim)
            # the level the network reads from its time input (the DDPM chain's time round trip)
            level = float(each_proc.sigma_of_timestep(each_proc.timestep(sigma, 1))[0])
            d = model.denoise(x, level, cond)  # the conditional branch, or D_null + w (D_cond - D_null)
            if guidance != 1.0:
                null = model.denoise(x, level)
                d = null + guidance * (d - null)
            d = d.reshape(4, dim)
            J = model.gain(level)
            want_b = d[:, b] + w * (y.reshape(4, dim)[:, a] - d[:, a]) @ J[b][:, a].T
            # (to 1e-5: the processes hand the network its scale a(sigma) in float32)
            torch.testing.assert_close(got[:, b], want_b, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[:, a], d[:, a], rtol=1e-5, atol=1e-5)


def test_clipping_applies_after_the_correction(proc):
    dim = 4
    model = GaussianModel(proc, torch.full((1, dim), 0.8, dtype=torch.float64), ar1_covariance(dim, var=1.0))
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    x, sigma = torch.tensor([[3.0, 3.0, 3.0, -3.0]], dtype=torch.float64), 0.5
    raw = ReconstructionGuided(dl.samplers.Denoiser(model, proc), y, mask, 2.0)(x, sigma)
    assert raw.abs().max() > 1.2  # the test means something: the unclipped estimate leaves [-1, 1]
    clipped = ReconstructionGuided(dl.samplers.Denoiser(model, proc), y, mask, 2.0, clip_x0=1.0)(x, sigma)
    torch.testing.assert_close(clipped, raw.clamp(-1, 1))
    with pytest.raises(ValueError, match="without clip_x0"):
        ReconstructionGuided(dl.samplers.Denoiser(model, proc, clip_x0=1.0), y, mask, 2.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun"])
def test_guidance_brings_the_filled_mean_to_the_exact_conditional(proc, sampler):
    """x ~ N(mu, Sigma) in 4 dimensions, x^a = (x1, x2) given: replacement leaves the mean of x^b
    about halfway from the prior's mean to E[x^b | x^a] (the noised copies of x^a carry little at high
    noise); w_r = 4 comes within a fifth of that error (measured: 0.03 to 0.2 against 0.6 to 0.8)."""
    dim = 4
    cov, mean = ar1_covariance(dim), torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    model = GaussianModel(proc, mean[None], cov)
    ya = torch.tensor([0.9, 0.8], dtype=torch.float64)
    exact = mean[2:] + cov[2:, :2] @ torch.linalg.solve(cov[:2, :2], ya - mean[:2])
    y = torch.zeros(1000, dim)
    y[:, :2] = ya.float()
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0])
    errors = {}
    for w in (0.0, 4.0):
        out = E.inpaint(model, proc, y, mask, sampler, 20, reconstruction_guidance=w, clip_x0=None,
                        generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[:, :2], y[:, :2])  # the known part replaced as usual
        errors[w] = float((out[:, 2:].double().mean(0) - exact).norm())
    assert errors[0.0] > 0.4  # replacement misses the conditional mean (standard error about 0.01)
    assert errors[4.0] < 0.35 * errors[0.0], errors


def test_weight_zero_is_the_replacement_method_bit_for_bit(mixture, proc):
    g = torch.Generator().manual_seed(0)
    x = mixture.sample(16, g)
    mask, noise = torch.tensor([0.0, 1.0]), torch.randn(x.shape, generator=g)
    for sampler in ("ddpm", "ddim"):
        plain = E.inpaint(mixture, proc, x, mask, sampler, 10, noise=noise, generator=torch.Generator().manual_seed(1))
        zero = E.inpaint(mixture, proc, x, mask, sampler, 10, noise=noise, generator=torch.Generator().manual_seed(1),
                         reconstruction_guidance=0.0)
        assert torch.equal(plain, zero)
        guided = E.inpaint(mixture, proc, x, mask, sampler, 10, noise=noise,
                           generator=torch.Generator().manual_seed(1), reconstruction_guidance=1.0)
        assert torch.equal(guided[:, 0], x[:, 0]) and not torch.allclose(guided[:, 1], plain[:, 1])


def test_with_resampling_and_guidance_the_classes_mean_is_reached(proc):
    """With RePaint's walk (r = j = 2) and a label (the label's Gaussian): w_r = 1 comes within a
    half of replacement's error from that label's exact conditional mean (measured: 0.03 against
    0.20; resampling already moves the mean part of the way, and w_r = 4 overshoots it here)."""
    dim = 4
    cov = ar1_covariance(dim)
    means = torch.tensor([[0.3, -0.2, 0.1, 0.4], [-0.3, 0.2, -0.1, -0.4], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    model = GaussianModel(proc, means, cov)
    ya = torch.tensor([0.9, 0.8], dtype=torch.float64)
    exact = means[1, 2:] + cov[2:, :2] @ torch.linalg.solve(cov[:2, :2], ya - means[1, :2])
    y = torch.zeros(500, dim)
    y[:, :2] = ya.float()
    errors = {}
    for w in (0.0, 1.0):
        out = E.inpaint(model, proc, y, torch.tensor([0.0, 0.0, 1.0, 1.0]), "ddim", 10, resample=2, jump_length=2,
                        cond=torch.ones(500, dtype=torch.long), reconstruction_guidance=w, clip_x0=None,
                        generator=torch.Generator().manual_seed(0))
        errors[w] = float((out[:, 2:].double().mean(0) - exact).norm())
    assert errors[1.0] < 0.5 * errors[0.0], errors


def test_bad_weights_are_refused(mixture, proc):
    x = mixture.sample(2, torch.Generator().manual_seed(0))
    for bad, err, match in ((-1.0, ValueError, ">= 0"), (float("nan"), ValueError, "finite"),
                            (float("inf"), ValueError, "finite"), ("2", TypeError, "must be a number"),
                            (True, TypeError, "must be a number"), (None, TypeError, "must be a number")):
        with pytest.raises(err, match=match):
            E.inpaint(mixture, proc, x, torch.tensor([0.0, 1.0]), "ddim", 5, reconstruction_guidance=bad)
    assert check_reconstruction_weight(2) == 2.0


def test_in_latent_space_the_target_is_the_encoded_image(monkeypatch, gen):
    """A latent model is guided towards the known latents (the encoded image, under the latent mask)."""
    torch.manual_seed(0)
    ae = autoencoder_kl_tiny().eval()
    ae.scaling_factor.fill_(0.8)
    model = dl.models.build("unet_tiny", in_channels=2, num_classes=10).eval()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    image = torch.rand(2, 1, 8, 8, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, :] = 1
    seen = {}

    class Spy(ReconstructionGuided):
        def __init__(self, denoiser, target, m, weight, clip_x0=None):
            seen.update(target=target, mask=m, weight=weight)
            super().__init__(denoiser, target, m, weight, clip_x0)

    monkeypatch.setattr(inpaint_module, "ReconstructionGuided", Spy)
    out = E.inpaint(model, proc, image, mask, "ddim", 3, cond=torch.tensor([1, 2]), autoencoder=ae,
                    reconstruction_guidance=2.0, generator=gen)
    torch.testing.assert_close(seen["target"], encode_images(ae, image))
    assert torch.equal(seen["mask"].expand(2, 2, 4, 4), latent_mask(mask.expand_as(image), ae).expand(2, 2, 4, 4))
    assert seen["weight"] == 2.0
    keep = (1 - mask).bool().expand_as(image)
    assert torch.equal(out[keep], image[keep])


def test_a_learned_variance_reaches_ddpm_through_the_guidance():
    """DDPM reads the network's variance output v through the wrapper (variance='learned' is refused for
    a denoiser that does not learn it), and uses it: the steps differ from the posterior variance's."""
    torch.manual_seed(0)
    model = dl.models.build("unet_tiny", learn_sigma=True).eval()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.zeros(1, 8, 8)
    mask[:, 4:] = 1
    out = {v: E.inpaint(model, proc, x, mask, "ddpm", 3, variance=v, reconstruction_guidance=1.0,
                        generator=torch.Generator().manual_seed(0)) for v in ("learned", "posterior")}
    assert torch.equal(out["learned"][..., :4, :], x[..., :4, :])
    assert not torch.allclose(out["learned"], out["posterior"])


def test_a_network_replayed_as_cuda_graphs_is_refused(mixture, proc):
    """A captured CUDA graph replays its outputs without an autograd graph back to the state, so the
    reconstruction gradient cannot be taken: refused up front, naming the fix (not autograd's error)."""
    x = mixture.sample(2, torch.Generator().manual_seed(0))
    graphed = dl.accel.Accelerated(mixture, cuda_graph=True)
    with pytest.raises(ValueError, match="a replayed CUDA graph gives no gradient"):
        E.inpaint(graphed, proc, x, torch.tensor([0.0, 1.0]), "ddim", 3, reconstruction_guidance=1.0)
    with pytest.raises(ValueError, match="a replayed CUDA graph gives no gradient"):
        ReconstructionGuided(dl.samplers.Denoiser(graphed, proc), x, torch.tensor([0.0, 1.0]), 1.0)


def test_the_gradient_is_taken_through_the_state_alone():
    """Only grad_x is needed: the network's parameters stop requiring gradients during the guided call
    (no weight-gradient graph is recorded) and require them again after, even when the call fails;
    frozen parameters stay frozen; and the estimate is the same as with the graph through them."""
    torch.manual_seed(0)
    model = dl.models.build("unet_tiny").eval()
    model.time_embed[1].weight.requires_grad_(False)  # frozen by the user: must stay so
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.zeros(1, 8, 8)
    mask[:, 4:] = 1
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(
        (torch.is_grad_enabled(), any(p.requires_grad for p in m.parameters()))))
    guided = ReconstructionGuided(dl.samplers.Denoiser(model, proc), x, mask, 2.0)
    state = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    got = guided(state, 0.7)
    assert seen == [(True, False)]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "time_embed.1.weight" not in trainable and len(trainable) == len(list(model.parameters())) - 1
    assert all(p.grad is None for p in model.parameters())
    hook.remove()
    # the same estimate with the parameters in the graph (the frozen context skipped)
    with torch.enable_grad():
        s = state.detach().requires_grad_(True)
        x0, _ = guided.denoiser.predict(s, 0.7)
        (grad,) = torch.autograd.grad(((1 - mask) * (x - x0)).square().sum(), s)
    torch.testing.assert_close(got, x0.detach() - mask * grad, rtol=1e-5, atol=1e-6)
    broken = dl.models.build("unet_tiny").eval()
    broken.register_forward_pre_hook(lambda m, args: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        ReconstructionGuided(dl.samplers.Denoiser(broken, proc), x, mask, 2.0)(state, 0.7)
    assert all(p.requires_grad for p in broken.parameters())
