"""Group normalization on the NHWC view (difflab.accel.group_norm): torch's function,
channels_last kept, no copies; and the module swaps that choose it, per model."""

import pytest
import torch
import torch.nn.functional as F

import difflab as dl
from difflab.accel import group_norm as accel_gn
from difflab.accel.group_norm import NHWCGroupNorm, group_norm_nhwc, set_group_norm
from difflab.models.norm import GroupNorm
from difflab.models.unet import UNet


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, 16, 5, 7, generator=g) * 2 + 1).contiguous(memory_format=torch.channels_last)


def small_unet(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
               image_size=8, norm_groups=4, **kw)
    for p in net.parameters():  # zero-initialised output convolutions would hide the blocks
        if not p.any():
            p.data.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_group_norm_nhwc_is_torchs_group_norm(x, groups):
    w, b = torch.randn(16), torch.randn(16)
    got = group_norm_nhwc(x, groups, w, b, eps=1e-5)
    want = F.group_norm(x.contiguous(), groups, w, b, eps=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == x.dtype
    # against the definition, group by group
    xg = x.contiguous().view(3, groups, -1).double()
    ref = ((xg - xg.mean(-1, keepdim=True)) / (xg.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()).view_as(x)
    torch.testing.assert_close(group_norm_nhwc(x, groups).double(), ref, rtol=1e-5, atol=1e-5)


def test_group_norm_nhwc_makes_no_copy_of_x(x):
    """The [B, HW, G, C/G] view shares x's memory: only the output is new memory."""
    seen = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with Spy():
        group_norm_nhwc(x, 4)
    assert not any(name.startswith(("clone", "_to_copy", "copy")) for name in seen), seen


def test_group_norm_nhwc_dtype_follows_autocast(x):
    """Under autocast group_norm runs (and returns) float32; without it, the input's dtype."""
    m = torch.nn.GroupNorm(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x.to(torch.bfloat16)
        assert group_norm_nhwc(h, 4, m.weight, m.bias).dtype == m(h).dtype
    h = x.double()
    assert group_norm_nhwc(h, 4).dtype == torch.float64


def test_group_norm_nhwc_gradients_are_torchs(x):
    """Training through it: the same gradients for the input, the scale and the shift."""
    x = x.double().contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    g = torch.randn(x.shape, dtype=torch.float64)
    grads = []
    for fn in (lambda x, w, b: group_norm_nhwc(x, 4, w, b), lambda x, w, b: F.group_norm(x.contiguous(), 4, w, b)):
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
        (fn(xs, ws, bs) * g).sum().backward()
        grads.append((xs.grad, ws.grad, bs.grad))
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)  # float64 throughout


def test_set_group_norm_modes_swap_the_class_and_keep_the_parameters(x, monkeypatch):
    """Each mode is a class swap of the model's own GroupNorms (the state dict keeps its keys
    and values): "always" takes the NHWC view for channels_last input, torch's kernel for NCHW;
    "compile" takes it only while torch.compile traces; "never" swaps back. Every mode computes
    torch's function; bad modes and Triton options without "triton" are refused by name."""
    m = GroupNorm(4, 16)
    torch.nn.init.normal_(m.weight)
    ref = torch.nn.GroupNorm(4, 16)
    ref.load_state_dict(m.state_dict())  # same parameters, same keys
    keys = {k: v.clone() for k, v in m.state_dict().items()}
    calls = []
    real = accel_gn.group_norm_nhwc
    monkeypatch.setattr(accel_gn, "group_norm_nhwc", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.testing.assert_close(m(x), ref(x))
    assert type(m) is GroupNorm and not calls
    assert set_group_norm(m, "always") == 1
    assert isinstance(m, NHWCGroupNorm) and m.when == "always"
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
    assert calls == [1]
    m(x.contiguous())  # NCHW input: torch's kernel
    assert calls == [1]
    assert set_group_norm(m, "compile") == 1 and m.when == "compile"
    torch.testing.assert_close(m(x), ref(x))  # eager here: torch's kernel
    assert calls == [1]
    assert m.state_dict().keys() == keys.keys() and all(torch.equal(m.state_dict()[k], v) for k, v in keys.items())
    set_group_norm(m, "never")
    assert type(m) is GroupNorm
    with pytest.raises(ValueError, match="group_norm must be one of never, compile, always, triton, got 'sometimes'"):
        set_group_norm(m, "sometimes")
    with pytest.raises(ValueError, match="need group_norm 'triton', got 'always'"):
        set_group_norm(m, "always", kernel="tiled")
    assert type(m) is GroupNorm  # a refusal swaps nothing
    with pytest.raises(ValueError, match="16 channels do not split into 5 groups"):
        group_norm_nhwc(x, 5)


def test_set_group_norm_swaps_every_norm_of_a_model_and_leaves_subclasses_alone():
    """All of a U-Net's norms (2 per residual block, attention's, the output's), the same
    state dict; a user's own GroupNorm subclass is not replaced by difflab's forms."""

    class MyNorm(GroupNorm):
        pass

    net = small_unet()
    n_norms = sum(isinstance(m, GroupNorm) for m in net.modules())
    before = net.state_dict()
    assert set_group_norm(net, "always") == n_norms > 4
    assert all(type(m) is NHWCGroupNorm for m in net.modules() if isinstance(m, GroupNorm))
    assert net.state_dict().keys() == before.keys()
    net.norm_out.__class__ = MyNorm
    assert set_group_norm(net, "never") == n_norms - 1 and type(net.norm_out) is MyNorm
    # through the speed layer's entry point, which leaves the norms alone unless asked
    net2 = small_unet()
    dl.accel.set_module_forms(net2)
    assert all(type(m) is GroupNorm for m in net2.modules() if isinstance(m, GroupNorm))
    dl.accel.set_module_forms(net2, group_norm="always")
    assert all(type(m) is NHWCGroupNorm and m.when == "always" for m in net2.modules() if isinstance(m, GroupNorm))
    with pytest.raises(ValueError, match="group_norm must be one of never, compile, always, triton"):
        dl.accel.set_module_forms(net2, group_norm="fast")


def test_unet_with_nhwc_group_norm_computes_the_same_function():
    """A channels_last U-Net whose norms all take the NHWC view: the same output as torch's."""
    net = small_unet().to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([3, 500])
    with torch.no_grad():
        want = net(x, t)
        set_group_norm(net, "always")
        got = net(x, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_nhwc_group_norm_keeps_the_models_norm_eps():
    """A U-Net built with norm_eps (0.5: a norm computed at torch's 1e-5 would show; the original
    DDPM code's is 1e-6) keeps it in every swapped norm: the same output as torch's kernel, and
    not the output of the same weights at eps 1e-5."""
    net = small_unet(norm_eps=0.5).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([3, 500])
    with torch.no_grad():
        want = net(x, t)
        other = small_unet().to(memory_format=torch.channels_last)(x, t)  # (the same weights, eps 1e-5)
        assert (want - other).abs().max() > 1e-2
        set_group_norm(net, "always")
        got = net(x, t)
    assert {type(m) for m in net.modules() if isinstance(m, GroupNorm)} == {NHWCGroupNorm}
    assert {m.eps for m in net.modules() if isinstance(m, GroupNorm)} == {0.5}
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_unet_compiles_with_nhwc_group_norm_in_one_graph(monkeypatch):
    """The 'compile' mode as torch.compile sees it: the NHWC view traced, one graph, the same
    output as eager."""
    net = small_unet().to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([3, 500])
    calls = []
    real = accel_gn.group_norm_nhwc
    monkeypatch.setattr(accel_gn, "group_norm_nhwc", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch._dynamo.reset()
    with torch.no_grad():
        want = net(x, t)
        set_group_norm(net, "compile")
        assert not calls  # eager: torch's kernel
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
        got = compiled(x, t)
    assert calls  # traced through the NHWC view
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


def test_a_bf16_unet_runs_under_fp16_autocast_with_nhwc_norms():
    """torch's CPU group_norm refuses mixed dtypes (fp16 activations, bf16 affine parameters);
    the NHWC view computes in float32 and runs: a U-Net stored in bf16, under fp16 autocast."""
    half = small_unet().to(torch.bfloat16, memory_format=torch.channels_last)
    x = torch.randn(3, 1, 8, 8).bfloat16().contiguous(memory_format=torch.channels_last)
    t = torch.tensor([1, 500, 999])
    set_group_norm(half, "always")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        out = half(x, t)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
