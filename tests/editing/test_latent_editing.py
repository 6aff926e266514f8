"""editing/latent.py with inpaint and img2img: a latent model edits images through its
autoencoder (``autoencoder=``): the pixel mask goes to the latent grid by max-pooling, the known
latents are kept, the kept pixels pasted back, and img2img at strength 0 is the decode of the encode."""

from __future__ import annotations

import importlib

import pytest
import torch

import difflab as dl
from difflab.editing import img2img, inpaint
from difflab.editing.latent import latent_mask, to_latents
from difflab.models.autoencoder import autoencoder_kl_tiny
from difflab.training.latent import decode_latents, encode_images

inpaint_module = importlib.import_module("difflab.editing.inpaint")  # (the package's name inpaint is the function)


@pytest.fixture
def ae():
    torch.manual_seed(0)
    net = autoencoder_kl_tiny().eval()
    net.scaling_factor.fill_(0.8)  # set by hand
    return net


@pytest.fixture
def latent_model():
    torch.manual_seed(1)
    return dl.models.build("unet_tiny", in_channels=2, num_classes=10).eval()


@pytest.fixture
def latent_proc():
    return dl.GaussianDiffusion(dl.schedules.cosine(100))


def _images(gen, n=2):
    return torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1


def test_the_latent_mask_keeps_a_latent_only_if_all_its_pixels_are_kept(ae, gen):
    mask = (torch.rand(3, 2, 8, 8, generator=gen) < 0.1).float()
    m = latent_mask(mask, ae)
    assert m.shape == (3, 1, 4, 4)
    for b in range(3):
        for i in range(4):
            for j in range(4):
                cell = mask[b, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                assert float(m[b, 0, i, j]) == float(cell.max())  # any pixel (any channel) to fill: fill it
    with pytest.raises(ValueError, match="f = 2 pixels a side"):
        latent_mask(torch.ones(1, 1, 7, 8), ae)


def test_the_latent_mask_takes_the_masks_inpainting_takes(ae):
    """[H, W], [1, H, W] and [B, 1, H, W] broadcast as in check_mask; the cells a fill pixel touches are filled."""
    mask = torch.zeros(8, 8)
    mask[3:, :5] = 1  # touches rows 1..3 and columns 0..2 of the 4x4 latent grid
    want = torch.zeros(1, 1, 4, 4)
    want[..., 1:, :3] = 1
    for given in (mask, mask[None], mask[None, None], mask.expand(1, 3, 8, 8)):
        assert torch.equal(latent_mask(given, ae), want), tuple(given.shape)
    with pytest.raises(ValueError, match=r"the mask must be \[H, W\].*got shape \(8,\)"):
        latent_mask(torch.ones(8), ae)
    with pytest.raises(TypeError, match="mask must be a torch tensor"):
        latent_mask(mask.tolist(), ae)


def test_latent_inpainting_keeps_the_known_latents_and_pixels(ae, latent_model, latent_proc, gen, monkeypatch):
    image = _images(gen)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 3:, :5] = 1  # the cells it touches: rows 1..3 and columns 0..2 of the 4x4 latent grid
    seen = {}
    original = inpaint_module.from_latents

    def spy(autoencoder, x, pixels=None, pixel_mask=None):
        seen["x"] = x
        return original(autoencoder, x, pixels, pixel_mask)

    monkeypatch.setattr(inpaint_module, "from_latents", spy)
    out = inpaint(latent_model, latent_proc, image, mask, "ddpm", 5, cond=torch.tensor([1, 2]), generator=gen,
                  autoencoder=ae)
    z, m = encode_images(ae, image), latent_mask(mask.expand_as(image), ae)
    assert m[0, 0, 1:, :3].eq(1).all() and float(m.sum()) == 2 * 9
    keep = (1 - m).bool().expand_as(z)
    assert torch.equal(seen["x"][keep], z[keep])  # the known latents: the image's, exactly
    assert not torch.allclose(seen["x"][~keep], z[~keep])  # the rest: generated
    pixel_keep = (1 - mask).bool().expand_as(image)
    assert torch.equal(out[pixel_keep], image[pixel_keep])  # the kept pixels pasted back exactly
    decoded = decode_latents(ae, seen["x"])
    assert torch.equal(out[~pixel_keep], decoded[~pixel_keep])  # the filled ones: the decoded latents
    # without the final paste: the decoding of the latents, kept ones included
    raw = inpaint(latent_model, latent_proc, image, mask, "ddpm", 5, cond=torch.tensor([1, 2]),
                  generator=torch.Generator().manual_seed(3), autoencoder=ae, paste_final=False)
    assert torch.equal(raw, decode_latents(ae, seen["x"]))


def test_img2img_encodes_first_and_at_strength_zero_decodes_the_encoding(ae, latent_model, latent_proc, gen,
                                                                          monkeypatch):
    image = _images(gen)
    same = img2img(latent_model, latent_proc, image, 0.0, autoencoder=ae)
    assert torch.equal(same, decode_latents(ae, encode_images(ae, image)))
    assert not torch.allclose(same, image)  # (not the input: the autoencoder's reconstruction of it)
    noise = torch.randn(2, 2, 4, 4, generator=gen)  # the latents' shape
    edited = img2img(latent_model, latent_proc, image, 0.5, "ddim", 10, noise=noise, autoencoder=ae)
    z = encode_images(ae, image)
    sigma = float(dl.editing.sdedit_sigmas(latent_proc, 0.5, 10, sampler="ddim")[0])
    latents = dl.sample(latent_model, latent_proc, z.shape, "ddim", 10,
                        noise=(z + sigma * noise) / (1 + sigma ** 2) ** 0.5,
                        sigmas=dl.editing.sdedit_sigmas(latent_proc, 0.5, 10, sampler="ddim"))
    assert torch.allclose(edited, decode_latents(ae, latents), atol=1e-6)


def test_bad_autoencoders_are_refused(ae, latent_model, latent_proc, gen):
    image = _images(gen)
    with pytest.raises(TypeError, match="autoencoder must be a difflab AutoencoderKL"):
        img2img(latent_model, latent_proc, image, 0.5, autoencoder="runs/vae")
    with pytest.raises(ValueError, match="takes 1 input channels but the autoencoder given makes latents of 2"):
        to_latents(ae, image, dl.models.build("unet_tiny"))
    # noise is drawn in latent space: its shape is the latents' (B, c, H/f, W/f), not the image's
    with pytest.raises(ValueError, match=r"noise must have the latents' shape \(2, 2, 4, 4\), got \(2, 1, 8, 8\)"):
        inpaint(latent_model, latent_proc, image, torch.ones(8, 8), "ddpm", 2, cond=torch.tensor([1, 2]),
                noise=torch.randn(2, 1, 8, 8), autoencoder=ae)
    ae.scaling_factor.fill_(0.0)
    with pytest.raises(ValueError, match="never measured.*measure_scale_factor"):
        inpaint(latent_model, latent_proc, image, torch.ones(8, 8), autoencoder=ae)


def test_inversion_and_interpolation_run_on_the_latents_and_decode(ae, latent_model, latent_proc, gen):
    image = _images(gen)
    z = encode_images(ae, image)
    cond = torch.tensor([3, 4])
    back, x_T = dl.editing.reconstruct(latent_model, latent_proc, image, 5, cond=cond, return_latent=True,
                                       autoencoder=ae)
    spacing = "trailing"
    assert torch.equal(x_T, dl.invert(latent_model, latent_proc, z, 5, cond=cond, spacing=spacing))
    assert torch.equal(back, decode_latents(ae, dl.sample(latent_model, latent_proc, z.shape, "ddim", 5, cond=cond,
                                                          noise=x_T, spacing=spacing)))
    a, b = torch.randn(2, 2, 4, 4, generator=gen)  # two noises of the latents' shape
    strip = dl.editing.interpolate(latent_model, latent_proc, a, b, 3, 4, latents=True, autoencoder=ae)
    z = dl.editing.slerp(a, b, torch.linspace(0, 1, 3, dtype=torch.float64))
    assert torch.equal(strip, decode_latents(ae, dl.sample(latent_model, latent_proc, z.shape, "ddim", 4, noise=z,
                                                           spacing=spacing)))
    pictures = dl.editing.interpolate(latent_model, latent_proc, image[0], image[1], 3, 4, autoencoder=ae)
    assert pictures.shape == (3, 1, 8, 8) and float(pictures.abs().max()) <= 1
