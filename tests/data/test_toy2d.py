"""The 2D toy sets (difflab.data.toy2d): shapes, scale, labels, modes, reproducibility, bad input."""

import numpy as np
import pytest
import torch

from difflab.data import toy2d


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_toy_sets_shapes_scale_and_labels(name, gen):
    x, y = toy2d.make(name, 5000, gen, labels=True)
    assert x.shape == (5000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert y.shape == (5000,) and y.dtype == torch.long
    assert set(y.unique().tolist()) == set(range(toy2d.NUM_CLASSES[name]))
    assert 0.5 < x.std(0).min() and x.std(0).max() < 1.6
    assert x.mean(0).abs().max() < 0.6
    # reproducible through the generator
    a = toy2d.make(name, 10, torch.Generator().manual_seed(0))
    b = toy2d.make(name, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_eight_gaussians_modes(gen):
    x, k = toy2d.make("8gaussians", 4000, gen, labels=True)
    angle = 2 * np.pi * k.double() / 8
    centres = 1.4 * torch.stack([torch.cos(angle), torch.sin(angle)], 1).float()
    assert (x - centres).std().item() == pytest.approx(0.1, rel=0.05)


def test_checkerboard_only_dark_squares(gen):
    x = toy2d.make("checkerboard", 4000, gen) * 1.15 + 2.0  # back to [0, 4]^2
    i, j = x[:, 1].floor().long(), x[:, 0].floor().long()
    assert ((i + j) % 2 == 0).all()


def test_bad_toy_input():
    with pytest.raises(ValueError, match="unknown 2D dataset 'spiral'.*swiss_roll"):
        toy2d.make("spiral", 10)
    with pytest.raises(ValueError, match="n .* must be a positive integer"):
        toy2d.make("moons", 0)
