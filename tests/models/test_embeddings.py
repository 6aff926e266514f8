"""The sinusoidal timestep embedding (difflab.models.embeddings)."""

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
