"""The mask-conditioned network (difflab.models.masked): the input channels [x_t, (1 - m) y, m] on
the channel axis of clips and images, guidance's doubled batch, the bound wrapper and the refusals.
Its loss and training: tests/training/test_loss.py; inpaint's binding: tests/editing/test_inpaint.py."""

import pytest
import torch
from torch import nn

import difflab as dl
from difflab.models.masked import NEEDS_KNOWN, MaskConditioned, WithKnown, masked_model
from difflab.samplers import Denoiser


class Recorder(nn.Module):
    """Keeps the network input it is called with; returns its first C channels (x_t itself)."""

    def __init__(self, channels: int, axis: int) -> None:
        super().__init__()
        self.c, self.axis, self.seen = channels, axis, []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, h, t, cond=None):
        self.seen.append((h.clone(), cond))
        return h.narrow(self.axis, 0, self.c) + 0 * self.w


def recording(base="video_unet_tiny", channels=1, axis=2, **kwargs):
    model = MaskConditioned(base, data_channels=channels, **kwargs)
    model.net = Recorder(channels, axis)
    return model


def test_built_by_name_with_three_times_the_channels():
    torch.manual_seed(0)
    model = dl.models.build("masked", base="video_unet_tiny", num_classes=10, channels=8, norm_groups=4)
    assert isinstance(model, MaskConditioned) and model.num_classes == 10
    assert model.net.spatial.conv_in.in_channels == 3 and model.net.out_channels == 1
    x, y = torch.randn(2, 8, 1, 16, 16), torch.rand(2, 8, 1, 16, 16) * 2 - 1
    m = dl.editing.masks.future_frames_mask(8, (16, 16), given=2).expand(2, 8, 1, 16, 16)
    out = model(x, torch.tensor([10, 500]), torch.tensor([3, 7]), known=y, mask=m)
    assert out.shape == x.shape
    # the same as the base network on the concatenation by hand
    by_hand = model.net(torch.cat([x, (1 - m) * y, m], 2), torch.tensor([10, 500]), torch.tensor([3, 7]))
    assert torch.equal(out, by_hand)


@pytest.mark.parametrize("shape, axis", [((3, 4, 2, 6, 6), 2), ((3, 2, 6, 6), 1)])
def test_channel_layout_for_clips_and_images(shape, axis):
    C = shape[axis]
    model = recording(channels=C, axis=axis)
    x, y = torch.randn(shape), torch.randn(shape)
    m = (torch.rand(shape) < 0.5).float()
    out = model(x, torch.zeros(3), known=y, mask=m)
    h, cond = model.net.seen[-1]
    assert h.shape[axis] == 3 * C and cond is None
    parts = h.split(C, dim=axis)
    assert torch.equal(parts[0], x) and torch.equal(parts[1], (1 - m) * y) and torch.equal(parts[2], m)
    assert torch.equal(out, x)
    # the given part of y is all the network reads of it: y where m = 1 is never seen
    model(x, torch.zeros(3), known=y + 5 * m, mask=m)
    assert torch.equal(model.net.seen[-1][0], h)


def test_a_broadcast_mask_is_expanded():
    model = recording()
    x, y = torch.randn(2, 4, 1, 6, 6), torch.randn(2, 4, 1, 6, 6)
    frames = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 4, 1, 1, 1)  # frames 2, 3 generated, for both clips
    model(x, torch.zeros(2), known=y, mask=frames)
    h = model.net.seen[-1][0]
    assert torch.equal(h[:, :, 2:3], frames.expand(2, 4, 1, 6, 6))
    assert torch.equal(h[:, 2:, 1], torch.zeros(2, 2, 6, 6)) and torch.equal(h[:, :2, 1:2], y[:, :2])


def test_guidance_doubles_the_batch_and_reuses_known_and_mask_in_order():
    torch.manual_seed(0)
    model = recording(num_classes=10)
    model.num_classes = 10
    y, m = torch.randn(2, 4, 1, 6, 6), (torch.rand(2, 4, 1, 6, 6) < 0.5).float()
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    labels = torch.tensor([1, 2])
    denoise = Denoiser(WithKnown(model, y, m), proc, labels, guidance=3.0)
    denoise(torch.randn(2, 4, 1, 6, 6), 1.5)
    h, cond = model.net.seen[-1]
    assert h.shape[0] == 4 and torch.equal(cond, torch.tensor([1, 2, 10, 10]))  # [cond; uncond]
    assert torch.equal(h[:, :, 1:2], ((1 - m) * y).repeat(2, 1, 1, 1, 1))
    assert torch.equal(h[:, :, 2:3], m.repeat(2, 1, 1, 1, 1))
    # a batch that is not a multiple of the known clips is refused
    with pytest.raises(ValueError, match="known .* x_t's shape"):
        model(torch.randn(3, 4, 1, 6, 6), torch.zeros(3), known=y, mask=m)


def test_the_bound_wrapper_is_the_model_convention():
    model = recording()
    y, m = torch.randn(2, 4, 1, 6, 6), torch.ones(2, 4, 1, 6, 6)
    bound = WithKnown(model.eval(), y, m)
    assert not bound.training and bound.dtype == torch.float32 and bound.num_classes is None
    x = torch.randn(2, 4, 1, 6, 6)
    assert torch.equal(bound(x, torch.zeros(2)), model(x, torch.zeros(2), known=y, mask=m))
    assert masked_model(model) is model and masked_model(nn.Linear(2, 2)) is None
    assert masked_model(bound) is None  # its data are bound: not bound again


def test_refusals_name_the_fix():
    model = recording()
    x, y, m = torch.randn(2, 4, 1, 6, 6), torch.randn(2, 4, 1, 6, 6), torch.ones(2, 4, 1, 6, 6)
    for known, mask in ((None, m), (y, None), (None, None)):
        with pytest.raises(ValueError, match="difflab inpaint --ckpt RUN") as err:
            model(x, torch.zeros(2), known=known, mask=mask)
        assert NEEDS_KNOWN in str(err.value)
    with pytest.raises(ValueError, match="mask-conditioned model: it needs"):  # how dl.sample meets it
        dl.sample(model, dl.GaussianDiffusion(dl.schedules.cosine(10)), (1, 4, 1, 6, 6), "ddim", 2)
    with pytest.raises(ValueError, match=r"known \(the given data y\) must be .* \[B, 4, 1, 6, 6\]"):
        model(x, torch.zeros(2), known=y[:, :3], mask=m)
    with pytest.raises(ValueError, match="known .* float tensor"):
        model(x, torch.zeros(2), known=y.long(), mask=m)
    with pytest.raises(ValueError, match=r"mask must be .* broadcastable .* got \(2, 4, 6, 6\)"):
        model(x, torch.zeros(2), known=y, mask=m[:, :, 0])
    with pytest.raises(ValueError, match=r"mask must be .* got \(2, 4, 1, 5, 6\)"):
        model(x, torch.zeros(2), known=y, mask=m[:, :, :, :5])
    with pytest.raises(ValueError, match=r"takes x_t of shape \[B, T, 1, H, W\]"):
        model(torch.randn(2, 4, 2, 6, 6), torch.zeros(2), known=y, mask=m)
    with pytest.raises(ValueError, match="in_channels is set by the mask-conditioned wrapper"):
        MaskConditioned("video_unet_tiny", in_channels=3)
    with pytest.raises(ValueError, match="not 'masked' itself"):
        MaskConditioned("masked")
    with pytest.raises(ValueError, match="data_channels must be a positive integer"):
        MaskConditioned("video_unet_tiny", data_channels=0)
