"""The plain GroupNorm of difflab.models.norm: nn.GroupNorm with the U-Net's neighbours of the
norm as keywords, computed as written; and the group count check."""

import pytest
import torch
import torch.nn.functional as F

from difflab.models.norm import GroupNorm, check_groups


def definition(x, groups, weight, bias, eps, add=None, scale=None, shift=None, silu=False):
    """act((GN(x + add) gamma + beta)(1 + scale) + shift), group by group in float64."""
    B, C, H, W = x.shape
    x = x.double() if add is None else x.double() + add.double()
    xg = x.reshape(B, groups, -1)
    y = ((xg - xg.mean(-1, keepdim=True)) / (xg.var(-1, unbiased=False, keepdim=True) + eps).sqrt()).reshape(B, C, H, W)
    y = y * weight.double().reshape(C, 1, 1) + bias.double().reshape(C, 1, 1)
    if scale is not None:
        y = y * (1 + scale.double())
    if shift is not None:
        y = y + shift.double()
    return F.silu(y) if silu else y


def test_group_norm_is_torchs_module_with_the_same_state_dict():
    m = GroupNorm(4, 16)
    assert isinstance(m, torch.nn.GroupNorm)
    ref = torch.nn.GroupNorm(4, 16)
    assert m.state_dict().keys() == ref.state_dict().keys()
    torch.nn.init.normal_(m.weight)
    torch.nn.init.normal_(m.bias)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(3, 16, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)  # no keywords: torch's kernel, bit for bit


@pytest.mark.parametrize("keywords", ["add", "scale_shift", "add_scale_shift_silu", "silu"])
def test_keywords_compute_the_definition_with_gradients(keywords):
    """norm(x, add=e, scale=s, shift=b, silu=True) = SiLU(GN(x + e)(1 + s) + b), per image and
    channel operands ([B, C, 1, 1]), against the definition in float64, gradients included."""
    g = torch.Generator().manual_seed(1)
    m = GroupNorm(4, 8).double()
    with torch.no_grad():
        m.weight.copy_(torch.randn(8, generator=g, dtype=torch.float64))
        m.bias.copy_(torch.randn(8, generator=g, dtype=torch.float64))
    x = (torch.randn(2, 8, 3, 5, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    kw = {}
    if "add" in keywords:
        kw["add"] = torch.randn(2, 8, 1, 1, generator=g, dtype=torch.float64).requires_grad_(True)
    if "scale_shift" in keywords:
        kw["scale"] = torch.randn(2, 8, 1, 1, generator=g, dtype=torch.float64).requires_grad_(True)
        kw["shift"] = torch.randn(2, 8, 1, 1, generator=g, dtype=torch.float64).requires_grad_(True)
    kw["silu"] = "silu" in keywords
    got = m(x, **kw)
    want = definition(x, 4, m.weight, m.bias, m.eps, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = (x, m.weight, m.bias, *(t for t in kw.values() if isinstance(t, torch.Tensor)))
    probe = torch.randn(want.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * probe).sum(), inputs),
                    torch.autograd.grad((definition(x, 4, m.weight, m.bias, m.eps, **kw) * probe).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_check_groups_names_the_fix():
    check_groups(16, 4)
    check_groups(16, 1)
    with pytest.raises(ValueError, match="16 channels do not split into 5 groups; choose a number of groups "
                                         "that divides 16"):
        check_groups(16, 5)
    with pytest.raises(ValueError, match="8 channels do not split into 0 groups"):
        check_groups(8, 0)
