"""The MLP denoiser of the 2D toys (difflab.models.mlp)."""

import pytest
import torch

import difflab as dl


def test_mlp_shapes_conditioning_and_float_t(gen):
    m = dl.models.MLPDenoiser(dim=2, width=32, depth=2, num_classes=3)
    for p in m.out.parameters():  # undo the zero init so outputs depend on the input
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(5, 2, generator=gen)
    t = torch.tensor([0, 10, 100, 500, 999])
    y = m(x, t, torch.tensor([0, 1, 2, 3, 0]))
    assert y.shape == x.shape
    assert m(x, t.float() + 0.5).shape == x.shape
    assert not torch.allclose(m(x, t, torch.zeros(5, dtype=torch.long)), m(x, t, torch.ones(5, dtype=torch.long)))
    # no labels = the null label
    assert torch.allclose(m(x, t), m(x, t, torch.full((5,), 3)))
    with pytest.raises(ValueError, match="unconditional"):
        dl.models.MLPDenoiser(2)(x, t, torch.zeros(5, dtype=torch.long))
    # zero-initialised output: a fresh model predicts 0 (eps = 0 is the prior's mean)
    assert torch.equal(dl.models.MLPDenoiser(2)(x, t), torch.zeros_like(x))
