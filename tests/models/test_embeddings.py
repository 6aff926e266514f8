"""The sinusoidal timestep embedding (difflab.models.embeddings)."""

import math

import pytest
import torch

import difflab as dl


def test_sinusoidal_embedding_is_the_formula():
    emb = dl.models.SinusoidalEmbedding(8)
    t = torch.tensor([0.0, 1.0, 37.5])
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
    assert torch.allclose(emb(t), expected, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        dl.models.SinusoidalEmbedding(7)


def test_sinusoidal_embedding_keeps_float32_frequencies_in_a_half_model():
    """model.to(torch.bfloat16) cast the frequencies too: the phases t w_i at t = 999 were off by
    up to ~2 radians (features off by up to 1.1, as `difflab sample --fast` now stores networks
    in bf16). They stay float32 (float64 in a float64 model), on the model's device."""
    t = torch.tensor([999.0, 500.0, 3.0])
    want = dl.models.SinusoidalEmbedding(128)(t)
    for dtype in (torch.bfloat16, torch.float16):
        emb = dl.models.SinusoidalEmbedding(128).to(dtype)
        assert emb.freqs.dtype == torch.float32
        torch.testing.assert_close(emb(t), want, rtol=0, atol=0)
    assert dl.models.SinusoidalEmbedding(8).double().freqs.dtype == torch.float64
    net = dl.models.build("unet_tiny").to(torch.bfloat16)
    assert all(b.dtype == torch.float32 for b in net.buffers())
    with torch.device("meta"):  # the default device, as before
        assert dl.models.SinusoidalEmbedding(8).half().freqs.device.type == "meta"


def test_freq_shift_gives_the_original_ddpm_codes_frequencies():
    """freq_shift = 1: w_i = 10000^(-i / (h - 1)), from 1 down to exactly 1 / 10000 (the original
    DDPM code; diffusers' downscale_freq_shift = 1): the formula, and diffusers' own function."""
    emb = dl.models.SinusoidalEmbedding(8, freq_shift=1)
    t = torch.tensor([0.0, 1.0, 37.5])
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(4)])
    assert torch.allclose(emb.freqs, freqs, rtol=1e-6, atol=0) and abs(emb.freqs[-1].item() - 1e-4) < 1e-10
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
    assert torch.allclose(emb(t), expected, atol=1e-6)
    assert not torch.allclose(dl.models.SinusoidalEmbedding(8)(t), expected, atol=1e-2)  # (another function)

    embeddings = pytest.importorskip("diffusers.models.embeddings")  # the test extra
    t = torch.tensor([0, 3, 517, 999])
    for dim, shift in ((128, 1), (64, 0), (16, 2)):
        theirs = embeddings.get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=shift)
        torch.testing.assert_close(dl.models.SinusoidalEmbedding(dim, freq_shift=shift)(t), theirs, rtol=0, atol=1e-6)


def test_freq_shift_zero_is_the_embedding_as_it_was():
    """The default computes exactly what the embedding computed before the option existed
    (exp(-ln(10000) i / h) in float32, bit for bit), in TimestepEmbedding too, which passes a
    freq_shift through; a half-precision model recomputes the shifted frequencies in float32."""
    for dim in (2, 8, 128, 256):
        half = dim // 2
        before = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        assert torch.equal(dl.models.SinusoidalEmbedding(dim).freqs, before)
        assert torch.equal(dl.models.SinusoidalEmbedding(dim, freq_shift=0).freqs, before)
        assert torch.equal(dl.models.TimestepEmbedding(4 * dim, freq_dim=dim)[0].freqs, before)
    shifted = dl.models.SinusoidalEmbedding(128, freq_shift=1).freqs
    assert torch.equal(dl.models.TimestepEmbedding(512, freq_dim=128, freq_shift=1)[0].freqs, shifted)
    assert torch.equal(dl.models.SinusoidalEmbedding(128, freq_shift=1).to(torch.bfloat16).freqs, shifted)


@pytest.mark.parametrize("shift", [4, 5.5, float("inf"), "1", True, None])
def test_freq_shift_must_leave_a_positive_denominator(shift):
    with pytest.raises(ValueError, match="freq_shift must be a number below dim / 2 = 4"):
        dl.models.SinusoidalEmbedding(8, freq_shift=shift)
