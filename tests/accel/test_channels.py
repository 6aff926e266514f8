"""Channel-padded convolutions (difflab.accel.channels): conv(x) with its channel counts
zero-padded to multiples of 8 on CUDA, the same function; pad_channels swaps them into a model."""

import pytest
import torch

import difflab as dl
from difflab.accel import channels
from difflab.accel.channels import PaddedConv2d, conv_padded_channels, pad_channels
from difflab.models.unet import Downsample, UNet


@pytest.mark.parametrize("c_in,c_out", [(3, 16), (16, 3), (1, 1), (8, 16)])
def test_channel_padded_convolution_is_the_same_function(c_in, c_out):
    """The first and last convolutions with their channels zero-padded to multiples of 8 (what
    PaddedConv2d does on CUDA): the same values and gradients (float64, forced on the CPU), the
    output's channels the layer's own."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).double()
    x = torch.randn(2, c_in, 5, 6, dtype=torch.float64, requires_grad=True)
    want, got = conv(x), conv_padded_channels(x, conv, force=True)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    probe = torch.randn(want.shape, dtype=torch.float64)
    for gw, gg in zip(torch.autograd.grad((want * probe).sum(), (x, conv.weight, conv.bias)),
                      torch.autograd.grad((got * probe).sum(), (x, conv.weight, conv.bias))):
        torch.testing.assert_close(gg, gw, rtol=1e-12, atol=1e-12)
    for mode in ("reflect", "circular"):  # another padding: the layer's own forward
        other = torch.nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode=mode).double()
        torch.testing.assert_close(conv_padded_channels(x, other, force=True), other(x))
    xc = x.detach().contiguous(memory_format=torch.channels_last)  # the layout of conv(x) is kept
    assert conv_padded_channels(xc, conv, force=True).stride() == conv(xc).stride()
    assert conv_padded_channels(x.detach(), conv, force=True).stride() == conv(x.detach()).stride()


def test_a_hooked_convolution_computes_by_its_own_forward():
    """A hook would see the call: the padded form is then not taken (its result is the hook's)."""
    conv = torch.nn.Conv2d(3, 5, 3, padding=1).double()
    conv.register_forward_hook(lambda m, a, out: 2 * out)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(conv_padded_channels(x, conv, force=True), torch.nn.Conv2d.forward(conv, x))


def test_pad_channels_swaps_the_convolutions_whose_counts_are_not_multiples():
    """A U-Net's first (1 -> 8) and last (8 -> 1) convolutions become PaddedConv2d, the others
    stay; the state dict keeps its keys; on the CPU the output is the same (padding is for CUDA
    inputs only); set_module_forms pads by default, pad=False leaves them; a bad multiple is refused."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, attention_levels=None)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 500])
    with torch.no_grad():
        want = net(x, t)
    keys = net.state_dict().keys()
    assert pad_channels(net) == 2
    assert type(net.conv_in) is PaddedConv2d and type(net.conv_out) is PaddedConv2d
    assert sum(type(m) is PaddedConv2d for m in net.modules()) == 2 and net.state_dict().keys() == keys
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), want, rtol=0, atol=0)
    plain = UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, attention_levels=None)
    assert type(dl.accel.set_module_forms(plain).conv_in) is PaddedConv2d
    unpadded = UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                    attention_levels=None)
    assert type(dl.accel.set_module_forms(unpadded, pad=False).conv_in) is torch.nn.Conv2d
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="multiple must be a positive integer"):
            pad_channels(unpadded, bad)


@pytest.mark.parametrize("padding", [0, 1])
def test_a_padded_downsampling_convolution_keeps_its_padding(padding, monkeypatch):
    """Downsample(padding=0) pads x right and bottom and convolves without padding (the original
    DDPM code's rule): its 3-channel convolution swapped for PaddedConv2d, computed in the padded
    form (forced, as on CUDA), keeps the layer's padding: the same function, float64."""
    torch.manual_seed(0)
    down = Downsample(3, padding=padding).double()
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        want = down(x)
        assert pad_channels(down) == 1 and type(down.conv) is PaddedConv2d
        forced = []
        monkeypatch.setattr(channels, "conv_padded_channels", lambda x_, conv, multiple=8: forced.append(conv)
                            or conv_padded_channels(x_, conv, multiple, force=True))
        got = down(x)
    assert forced == [down.conv] and down.conv.padding == (padding, padding)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN's convolutions need a GPU")
def test_channel_padded_convolutions_on_the_gpu_in_fp32_and_bf16(monkeypatch):
    """cuDNN: the first and last convolutions with channels padded to 8 against the layer's own,
    in fp32 (no TF32) and under bf16 autocast, channels_last, at a U-Net size."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    g = torch.Generator(device="cuda").manual_seed(0)
    for c_in, c_out in ((3, 64), (64, 3)):
        conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1).cuda().to(memory_format=torch.channels_last)
        x = torch.randn(8, c_in, 32, 32, device="cuda", generator=g).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(conv_padded_channels(x, conv), conv(x), rtol=1e-4, atol=1e-4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got, want_bf16 = conv_padded_channels(x, conv), conv(x)
        assert got.stride() == want_bf16.stride()
        torch.testing.assert_close(got.float(), want_bf16.float(), rtol=2e-2, atol=2e-2)
        padded = PaddedConv2d(c_in, c_out, 3, padding=1).cuda().to(memory_format=torch.channels_last)
        padded.load_state_dict(conv.state_dict())
        torch.testing.assert_close(padded(x), conv(x), rtol=1e-4, atol=1e-4)
