"""Group normalization on the NHWC view: torch's function, channels_last kept, no copies."""

import pytest
import torch
import torch.nn.functional as F

from difflab.models import norm
from difflab.models.norm import GroupNorm, group_norm_nhwc, nhwc_group_norm, set_nhwc_group_norm
from difflab.models.unet import UNet


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, 16, 5, 7, generator=g) * 2 + 1).contiguous(memory_format=torch.channels_last)


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


def test_group_norm_module_modes(x):
    m = GroupNorm(4, 16)
    torch.nn.init.normal_(m.weight)
    ref = torch.nn.GroupNorm(4, 16)
    ref.load_state_dict(m.state_dict())  # same parameters, same keys
    calls = []
    real = norm.group_norm_nhwc
    norm.group_norm_nhwc = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        assert norm._mode == "never"
        torch.testing.assert_close(m(x), ref(x))
        assert not calls
        with nhwc_group_norm("always"):
            torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
            assert calls == [1]
            m(x.contiguous())  # NCHW input: torch's kernel
            assert calls == [1]
        with nhwc_group_norm("compile"):  # eager here: torch's kernel
            m(x)
            assert calls == [1]
    finally:
        norm.group_norm_nhwc = real
    assert norm._mode == "never"
    with pytest.raises(ValueError, match="never, compile, always"):
        set_nhwc_group_norm("sometimes")
    with pytest.raises(ValueError, match="16 channels do not split into 5 groups"):
        group_norm_nhwc(x, 5)


def test_unet_compiles_with_nhwc_group_norm_in_one_graph():
    """The 'compile' mode as torch.compile sees it: one graph, same output as eager."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
               image_size=8, norm_groups=4).eval().to(memory_format=torch.channels_last)
    for p in net.parameters():
        if not p.any():
            p.data.normal_(0, 0.1)
    x = torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([3, 500])
    with torch.no_grad():
        want = net(x, t)
        with nhwc_group_norm("compile"):
            compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
            got = compiled(x, t)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


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
