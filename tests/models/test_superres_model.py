"""The super-resolution network (difflab.models.superres): down- and upsampling, the U-Net on
[x_t, upsampled low-res] and its checks. Its loss, training and upscale: tests/editing/test_superres.py."""

import pytest
import torch

import difflab as dl
from difflab import editing as E


def tiny_sr(num_classes=None):
    torch.manual_seed(0)
    return E.LowResConditioned(base="unet_tiny", scale=2, image_channels=1, num_classes=num_classes)


def test_down_and_up_sampling():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    low = E.downsample(x, 2)
    assert torch.equal(low, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # 2x2 block means
    const = torch.full((2, 1, 7, 7), 0.3)
    for mode in ("bicubic", "bilinear", "nearest"):
        assert torch.allclose(E.upsample(const, (14, 14), mode), torch.full((2, 1, 14, 14), 0.3))
    assert torch.equal(E.upsample(E.downsample(x, 1), (4, 4)), x)
    with pytest.raises(ValueError, match="divisible by scale = 3"):
        E.downsample(x, 3)
    with pytest.raises(ValueError, match="upsample mode"):
        E.upsample(x, (8, 8), "lanczos")


def test_wrapper_concatenates_the_upsampled_low_res():
    model = tiny_sr().eval()
    assert model.net.in_channels == 2 and model.net.out_channels == 1
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 90])
    low = torch.randn(3, 1, 4, 4)
    out = model(x, t, lowres=low)
    assert out.shape == x.shape
    # the same as calling the U-Net on [x_t, bicubic(low)] by hand
    by_hand = model.net(torch.cat([x, E.upsample(low, (8, 8), "bicubic")], 1), t)
    assert torch.allclose(out, by_hand)
    # a guidance-doubled batch reuses the low-res images in order
    out2 = model(torch.cat([x, x]), torch.cat([t, t]), lowres=low)
    assert torch.allclose(out2, torch.cat([out, out]), atol=1e-6)
    # no low-res image: an error in either mode, which names upscale and the superres loss
    for mode in (model.eval(), model.train()):
        with pytest.raises(ValueError, match="super-resolution model.*upscale.*loss: superres"):
            mode(x, t)


def test_wrapper_bad_input():
    model = tiny_sr().eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"lowres must have shape \[B, 1, 4, 4\]"):
        model(x, t, lowres=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"lowres must have shape"):
        model(x, t, lowres=torch.zeros(3, 1, 4, 4))
    with pytest.raises(ValueError, match="in_channels is set by the super-resolution wrapper"):
        E.LowResConditioned(base="unet_tiny", in_channels=2)
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        E.LowResConditioned(base="unet_tiny", scale=0)


def test_upsampling_is_bicubic_and_bad_input_is_named():
    """The conditioning's upsampling against torch's bicubic on a non-constant image (a constant
    one, the earlier test, comes out alike for every mode); the speed options no longer hide a
    super-resolution model from the refusal; inputs and options are checked up front."""
    import numpy as np
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    want = F.interpolate(low, size=(8, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(E.upsample(low, (8, 8)), want)
    assert (want - F.interpolate(low, size=(8, 8), mode="nearest")).abs().max() > 0.1  # modes differ here
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    for options in ({"channels_last": True}, {"precision": "bf16"}):
        with pytest.raises(ValueError, match="super-resolution model"):
            dl.sample(dl.accel.accelerate(tiny_sr(), **options), proc, (2, 1, 8, 8), "ddim", 3)
    with pytest.raises(ValueError, match=r"downsample needs a float tensor"):
        E.downsample(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match=r"upsample needs a float tensor of images \[B, C, h, w\]"):
        E.upsample(torch.zeros(1, 4, 4), (8, 8))
    assert E.downsample(torch.zeros(1, 1, 4, 4), np.int64(2)).shape == (1, 1, 2, 2)  # numpy integers are integers
    with pytest.raises(ValueError, match="nope"):
        E.SuperResLoss(proc, 2, weighting="nope")
