"""training/latent.py: the maps between images and diffusion latents, against their formulas, and
the checks a latent model's network and autoencoder must pass."""

from __future__ import annotations

import pytest
import torch

import difflab as dl
from difflab.models.autoencoder import autoencoder_kl_tiny
from difflab.training.latent import (autoencoder_folder, check_autoencoder, check_latent_channels, decode_latents,
                                     encode_images, latent_channels_of)


def _autoencoder(scale: float = 0.7, shift: float = 0.3) -> torch.nn.Module:
    torch.manual_seed(0)
    ae = autoencoder_kl_tiny().eval()
    ae.scaling_factor.fill_(scale)  # set by hand: the formulas below hold for any s and shift
    ae.shift_factor.fill_(shift)
    return ae


def test_encode_and_decode_are_the_scaled_posterior_and_the_clamped_decoder(gen):
    ae = _autoencoder()
    x = torch.rand(5, 1, 8, 8, generator=gen) * 2 - 1
    with torch.no_grad():
        q = ae.encode(x)
        assert torch.allclose(encode_images(ae, x), 0.7 * (q.mean - 0.3), atol=1e-6)
        # a draw: mean + std eps, eps from the generator's stream (one stream over the batches)
        eps = torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(5))
        drawn = encode_images(ae, x, sample=True, generator=torch.Generator().manual_seed(5), batch_size=5)
        assert torch.allclose(drawn, 0.7 * (q.mean + q.std * eps - 0.3), atol=1e-6)
        z = 3 * torch.randn(5, 2, 4, 4, generator=gen)  # far out: the decoder overshoots [-1, 1]
        raw = ae.decode(z / 0.7 + 0.3)
        images = decode_latents(ae, z, batch_size=2)  # (batches change nothing)
    assert torch.allclose(images, raw.clamp(-1, 1), atol=1e-6)
    assert float(raw.abs().max()) > 1 and float(images.abs().max()) <= 1
    with pytest.raises(ValueError, match=r"decodes latents \[B, 2, h, w\], got \(5, 1, 8, 8\)"):
        decode_latents(ae, x)


def test_the_model_must_take_the_latents_channels_through_its_wrappers():
    ae = _autoencoder()
    net = dl.models.build("unet_tiny", in_channels=3)
    wrapped = dl.models.EDMPrecond(net, sigma_data=0.5)
    assert latent_channels_of(wrapped) == 3 and latent_channels_of(dl.models.build("mlp", dim=2)) is None
    with pytest.raises(ValueError, match=r"takes 3 input channels but the autoencoder 'x' makes latents of 2 channels "
                                         r"\(2 x h/2 x w/2\).*model.kwargs.in_channels: 2"):
        check_latent_channels(wrapped, ae, "'x'")
    check_latent_channels(dl.models.build("unet_tiny", in_channels=2), ae, "'x'")  # fits: no error


def test_an_autoencoder_must_be_one_with_a_measured_scale(tmp_path):
    ae = _autoencoder()
    assert check_autoencoder(ae, "here") is ae
    with pytest.raises(ValueError, match="'here' holds a UNet model, not an autoencoder.*train-autoencoder"):
        check_autoencoder(dl.models.build("unet_tiny"), "'here'")
    ae.scaling_factor.fill_(0.0)
    with pytest.raises(ValueError, match="no latent scale factor.*--resume"):
        check_autoencoder(ae, "here")
    ck = tmp_path / "run" / "checkpoints" / "step_00000004"
    ck.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"'.*run/autoencoder' is missing.*cp -r runs/vae .*run/autoencoder"):
        autoencoder_folder(ck, "runs/vae")
    (tmp_path / "run" / "autoencoder").mkdir()
    assert autoencoder_folder(ck) == tmp_path / "run" / "autoencoder"
