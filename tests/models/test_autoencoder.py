"""The KL autoencoder (difflab.models.autoencoder): shapes for f = 1, 2, 4, the diagonal Gaussian
against torch.distributions, the scaled latents, refusals. Its equality with diffusers'
AutoencoderKL is tests/test_crosscheck_vae.py."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import difflab as dl
from difflab.models.autoencoder import LOGVAR_RANGE, AutoencoderKL, DiagonalGaussian


def small(**kw) -> AutoencoderKL:
    config = dict(in_channels=1, latent_channels=3, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  norm_groups=4, mid_attention=True)
    return AutoencoderKL(**{**config, **kw}).eval()


@pytest.mark.parametrize("mult, f", [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4)])
def test_shapes_for_each_downsampling_factor(mult, f, gen):
    ae = small(channel_mult=mult, in_channels=3, latent_channels=4)
    assert ae.downsample_factor == f
    x = torch.rand(2, 3, 16, 12, generator=gen) * 2 - 1
    q = ae.encode(x)
    assert q.mean.shape == q.logvar.shape == (2, 4, 16 // f, 12 // f)
    assert ae.latent_shape((3, 16, 12)) == (4, 16 // f, 12 // f)
    assert ae.decode(q.mode()).shape == x.shape
    x_hat, posterior = ae(x)
    assert x_hat.shape == x.shape and posterior.mean.shape == q.mean.shape


def test_the_mnist_preset_gives_7x7_latents_of_4_channels():
    ae = dl.models.build("autoencoder_kl_mnist")
    assert ae.downsample_factor == 4
    assert ae.encode(torch.zeros(1, 1, 28, 28)).mean.shape == (1, 4, 7, 7)


def test_kl_equals_torch_distributions(gen):
    moments = torch.randn(3, 8, 5, 4, generator=gen) * 2
    q = DiagonalGaussian(moments)
    mean, logvar = moments.chunk(2, dim=1)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), ref, rtol=1e-5, atol=1e-5)
    assert float(DiagonalGaussian(torch.zeros(1, 2, 3, 3)).kl()) == 0.0  # q = N(0, I)


def test_logvar_is_clamped_as_sd_does():
    moments = torch.zeros(1, 2, 1, 3)
    moments[0, 1] = torch.tensor([-100.0, 0.5, 100.0])
    q = DiagonalGaussian(moments)
    assert q.logvar.flatten().tolist() == [LOGVAR_RANGE[0], 0.5, LOGVAR_RANGE[1]]
    torch.testing.assert_close(q.std, torch.exp(0.5 * q.logvar))


def test_mode_is_the_mean_and_sample_is_reparameterised(gen):
    moments = torch.randn(2, 6, 3, 3, generator=gen, requires_grad=True)
    q = DiagonalGaussian(moments)
    assert q.mode() is q.mean
    z = q.sample(torch.Generator().manual_seed(5))
    eps = torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, q.mean + torch.exp(0.5 * q.logvar) * eps)
    z.sum().backward()  # differentiable in mean and logvar
    assert moments.grad is not None and bool((moments.grad != 0).all())
    many = DiagonalGaussian(torch.tensor([1.0, 2 * torch.log(torch.tensor(0.5))]).view(1, 2, 1, 1).expand(1, 2, 200, 200))
    draws = many.sample(torch.Generator().manual_seed(0))
    assert abs(float(draws.mean()) - 1.0) < 0.01 and abs(float(draws.std()) - 0.5) < 0.01


def test_scaled_latents_need_a_measured_scale_and_invert(gen):
    ae = small()
    x = torch.rand(2, 1, 8, 8, generator=gen) * 2 - 1
    with pytest.raises(ValueError, match="scale factor was not measured"):
        ae.encode_latents(x)
    ae.scaling_factor.fill_(0.25)
    ae.shift_factor.fill_(0.5)
    mean = ae.encode(x).mean
    latents = ae.encode_latents(x, sample=False)
    torch.testing.assert_close(latents, (mean - 0.5) * 0.25)
    torch.testing.assert_close(ae.decode_latents(latents), ae.decode(mean), rtol=1e-5, atol=1e-5)
    assert {"scaling_factor", "shift_factor"} <= set(ae.state_dict())  # they travel with the weights


def test_bad_input_is_refused_with_the_fix():
    ae = small(channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"images \[B, 1, H, W\] \(in_channels=1\), got \(2, 3, 8, 8\)"):
        ae.encode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="f = 4.*divisible by 4; got 10x8"):
        ae.encode(torch.zeros(1, 1, 10, 8))
    with pytest.raises(TypeError, match="float images"):
        ae.encode(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"latents \[B, 3, h, w\] \(latent_channels=3\), got \(1, 4, 2, 2\)"):
        ae.decode(torch.zeros(1, 4, 2, 2))
    with pytest.raises(TypeError, match="not a denoiser"):
        ae(torch.zeros(1, 1, 8, 8), torch.tensor([3]))
    with pytest.raises(ValueError, match="channel_mult must be a non-empty list"):
        AutoencoderKL(channel_mult=())
    with pytest.raises(ValueError, match="do not split into 32 groups"):
        AutoencoderKL(channels=8, channel_mult=(1,))
    with pytest.raises(ValueError, match="latent_channels must be a positive integer"):
        AutoencoderKL(latent_channels=0)
    with pytest.raises(ValueError, match="mid_attention must be True or False"):
        AutoencoderKL(mid_attention="yes")


def test_the_patch_discriminator_gives_a_logit_per_patch():
    assert small().discriminator is None  # only for the adversarial loss of training
    ae = dl.models.build("autoencoder_kl_mnist", discriminator_channels=16, discriminator_layers=2)
    logits = ae.discriminator(torch.zeros(3, 1, 28, 28))
    assert logits.shape == (3, 1, 5, 5)  # 28 -> 14 -> 7 (stride 2), -> 6 -> 5 (stride 1, 4x4 kernels)
    with pytest.raises(ValueError, match="discriminator_channels must be a positive integer"):
        dl.models.build("autoencoder_kl_mnist", discriminator_channels=0)
