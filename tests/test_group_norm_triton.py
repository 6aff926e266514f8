"""The fused GroupNorm kernels (Triton): against the definition in float64, inside the U-Net,
under torch.compile, and their refusals. Without a GPU they run in Triton's interpreter
(conftest sets TRITON_INTERPRET=1); the last test runs the compiled kernels on a GPU."""

import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scripts import load_script

pytest.importorskip("triton")

from difflab.models import norm  # noqa: E402
from difflab.models.norm import GroupNorm, nhwc_group_norm, set_nhwc_group_norm  # noqa: E402
from difflab.models.unet import UNet  # noqa: E402

gnt = pytest.importorskip("difflab.models.group_norm_triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def quiet_interpreter():
    # The interpreter's NumPy sigmoid overflows to inf (and gives the right 0) for very negative y.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "overflow encountered in exp", RuntimeWarning)
        yield


@pytest.fixture(autouse=True)
def full_float32():
    # On a GPU cuDNN's convolutions default to TF32 (10-bit mantissa): a 1e-7 difference in a
    # norm's output flips roundings in the next convolution and shows as 1e-3 at the U-Net's
    # output. The U-Net comparisons below are of the norms, so they run in full float32.
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def definition(x, groups, weight=None, bias=None, eps=1e-5, add=None, scale=None, shift=None, silu=False):
    """act((GN(x + add) gamma + beta)(1 + scale) + shift), group by group in float64."""
    B, C, H, W = x.shape
    x = x.double()
    if add is not None:
        x = x + add.double().reshape(-1, C, 1, 1)
    xg = x.reshape(B, groups, -1)
    mean, var = xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)
    y = ((xg - mean) / (var + eps).sqrt()).reshape(B, C, H, W)
    if weight is not None:
        y = y * weight.double().reshape(C, 1, 1)
    if bias is not None:
        y = y + bias.double().reshape(C, 1, 1)
    if scale is not None:
        y = y * (1 + scale.double().reshape(B, C, 1, 1))
    if shift is not None:
        y = y + shift.double().reshape(B, C, 1, 1)
    return F.silu(y) if silu else y


def nhwc(*shape, mean=0.0, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * std + mean).to(DEVICE).contiguous(memory_format=torch.channels_last)


def small_tiles(monkeypatch, kernel: str) -> None:
    """Every image through the tiled, looped or resident kernels; one that would be a single
    tile (at most 8192 elements) in tiles of 8 positions (the last one partial) and, looped or
    resident, programs 2 groups wide; the tiled statistics combined 2 tiles at a time (chunks
    merged too)."""
    monkeypatch.setattr(gnt, "SINGLE_PASS_MAX", 0)
    monkeypatch.setattr(gnt, "KERNEL", kernel)
    monkeypatch.setattr(gnt, "FINALIZE_CHUNK", 2)
    plan = gnt._plan

    def small(C, G, HW, B=1, kernel_=None):
        p = plan(C, G, HW, B, kernel_)
        if HW * C > 8192:  # large enough to be tiled (or cut in slabs) as it is
            return p
        if kernel == "resident":  # all positions in one program: slabs of two groups instead of tiles
            assert p["kernel"] == "resident" and p["BLOCK_HW"] >= HW
            p.update(BLOCK_G=min(p["BLOCK_G"], 2), NS=-(-G // min(p["BLOCK_G"], 2)))
            return p
        p.update(BLOCK_HW=min(p["BLOCK_HW"], 8))
        if kernel == "tiled":
            p.update(NB=-(-HW // p["BLOCK_HW"]))
            p.update(BLOCK_NB=min(gnt.triton.next_power_of_2(p["NB"]), gnt.FINALIZE_CHUNK))
        else:
            p.update(BLOCK_G=min(p["BLOCK_G"], 2), NS=-(-G // min(p["BLOCK_G"], 2)))
        return p

    monkeypatch.setattr(gnt, "_plan", small)


@pytest.mark.parametrize("B,C,H,W,G", [
    (2, 8, 5, 7, 4),      # 35 positions: one partial tile
    (2, 128, 32, 32, 32),  # the U-Net's first level: 32 tiles of 32 positions
    (3, 384, 4, 4, 32),   # 12 channels a group: not a power of two
    (2, 96, 3, 3, 32),    # 3 channels a group: 32 x 4 lanes
    (2, 72, 3, 5, 6),     # 6 groups of 12: 8 x 16 lanes, two groups of them padding
    (2, 60, 3, 5, 5),     # 5 groups of 12: looped, the last slab of two is half padding lanes
    (2, 64, 16, 16, 1),   # one group: layer norm over C, H, W
    (1, 12, 1, 1, 3),     # one position
])
@pytest.mark.parametrize("fused", ["plain", "affine", "add", "scale_shift"])
@pytest.mark.parametrize("path", ["auto", "tiled", "looped", "resident"])
def test_kernels_compute_the_definition(B, C, H, W, G, fused, path, monkeypatch):
    """Every shape four ways: as chosen (one kernel for an image of <= 8192 elements), forced
    through the resident kernel over slabs of two groups, and through the tiled and the looped
    kernels in small tiles (35, 15 and 9 positions: a
    partial last tile; 384, 96 and 72 channels: padding lanes in every kernel): the tiled
    statistics combined two tiles at a time (5 tiles: a partial last chunk), the looped ones
    over slabs of two groups (3 groups of 4, 5 groups of 12 channels: a partial slab, its
    padding group past the last channel)."""
    if path != "auto":
        small_tiles(monkeypatch, path)
        p = gnt._plan(C, G, H * W, B)
        assert p["kernel"] == path and (p["BLOCK_HW"] <= 8 or H * W > 64 or path == "resident")
        assert path == "tiled" or p["NS"] == -(-G // p["BLOCK_G"]) > 1 or G == 1
    elif C * H * W <= 4096:
        assert gnt._plan(C, G, H * W, B)["kernel"] == "single"
    x = nhwc(B, C, H, W, mean=1.0, std=2.0)
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    kw = {}
    if fused != "plain":
        kw.update(weight=r(C), bias=r(C), silu=True)
    if fused == "add":  # a slice of a wider tensor, as the U-Net's blocks' embeddings: rows C + 5 apart
        kw.update(add=r(B, C + 5)[:, 3:C + 3, None, None])
    if fused == "scale_shift":  # with a per-channel add (rows 0 apart), so the operands are copied
        kw.update(add=r(C, 1, 1), scale=r(B, C, 1, 1), shift=r(B, C))
    weight, bias = kw.pop("weight", None), kw.pop("bias", None)
    with torch.no_grad():
        y = gnt.group_norm_act(x, G, weight, bias, 1e-5, **kw)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), definition(x, G, weight, bias, **kw), rtol=1e-5, atol=2e-5)


def test_resident2_launches_the_resident_kernel_with_its_register_cap(monkeypatch):
    """The resident2 way runs the resident kernel with ptxas' register cap as a launch option
    (Triton's interpreter ignores it: what the cap does to the machine code is checked by the
    ahead-of-time compile below), and computes the definition."""
    monkeypatch.setattr(gnt, "KERNEL", "resident2")
    launches, kernel = [], gnt._gn_single_pass

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **options):
                launches.append((grid, options["num_warps"], options.get("maxnreg")))
                return kernel[grid](*args, **options)
            return launch

    monkeypatch.setattr(gnt, "_gn_single_pass", Recorder())
    B, C, G, H, W = 2, 128, 32, 32, 32
    x = nhwc(B, C, H, W, mean=1.0, std=2.0)
    g = torch.Generator().manual_seed(3)
    add, w, b = (torch.randn(*s, generator=g).to(DEVICE) for s in ((B, C), (C,), (C,)))
    with torch.no_grad():
        y = gnt.group_norm_act(x, G, w, b, add=add, silu=True)
    assert launches == [((B * 8,), 16, 64)]  # slabs of 4 groups (16 lanes) of all 1024 positions
    torch.testing.assert_close(y.double(), definition(x, G, w, b, add=add, silu=True), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("H,W", [(5, 7), (9, 9)])
def test_looped_statistics_over_tiles_longer_than_what_is_left(H, W, monkeypatch):
    """The looped kernel's running per-element statistics at its own tile size (64 positions at
    512 channels): 35 positions in one tile (29 rows that see no tile), 81 in a full and a
    partial tile; with the time embedding's add, against the definition."""
    monkeypatch.setattr(gnt, "KERNEL", "looped")
    B, C, G = 2, 512, 32
    assert gnt._plan(C, G, H * W, B)["BLOCK_HW"] == 64
    x = nhwc(B, C, H, W, mean=3.0, std=2.0)
    g = torch.Generator().manual_seed(1)
    add, w, b = (torch.randn(*s, generator=g).to(DEVICE) for s in ((B, C, 1, 1), (C,), (C,)))
    with torch.no_grad():
        y = gnt.group_norm_act(x, G, w, b, add=add, silu=True)
    torch.testing.assert_close(y.double(), definition(x, G, w, b, add=add, silu=True), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("C,G,H,W", [(256, 32, 4, 4), (96, 8, 3, 5), (512, 32, 1, 1)])
def test_resident_small_images_in_slabs_compute_the_definition(C, G, H, W, monkeypatch):
    """A small image (one program would hold it: the single-pass kernel) through the resident
    way at the real sizes: slabs of 64 lanes, so NS programs an image (C/G = 8, 12 and 16)."""
    monkeypatch.setattr(gnt, "KERNEL", "resident")
    p = gnt._plan(C, G, H * W, 3)
    assert p["kernel"] == "resident" and p["NS"] > 1 and p["BLOCK_HW"] * p["BLOCK_G"] * p["BLOCK_CG"] <= gnt.SINGLE_PASS_MAX
    x = nhwc(3, C, H, W, mean=1.0, std=2.0)
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(3, 3 * C, generator=g).to(DEVICE)
    w, b = torch.randn(C, generator=g).to(DEVICE), torch.randn(C, generator=g).to(DEVICE)
    scale, shift = wide[:, :C], wide[:, C:2 * C]
    with torch.no_grad():
        y = gnt.group_norm_act(x, G, w, b, scale=scale, shift=shift, silu=True)
    want = definition(x, G, w, b, scale=scale, shift=shift, silu=True)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=2e-5)


def test_the_custom_op_accepts_any_strides():
    """Inside a compiled graph Inductor hands the op its inputs with strides of its choosing:
    an NCHW x and a non-contiguous add give the same result."""
    x = nhwc(2, 16, 4, 4)
    add = torch.randn(16, 2).to(DEVICE).t()  # [2, 16], not contiguous
    w, b = torch.randn(16).to(DEVICE), torch.randn(16).to(DEVICE)
    with torch.no_grad():
        got = torch.ops.difflab.group_norm_act(x.contiguous(), 4, w, b, add, None, None, 1e-5, True)
    torch.testing.assert_close(got.double(), definition(x, 4, w, b, add=add, silu=True), rtol=1e-5, atol=2e-5)


def test_per_image_operands_are_read_in_place_when_their_rows_agree():
    """add, scale and shift are read as rows OS elements apart, without a copy, when they share
    OS: a slice of a wider tensor (the U-Net's blocks' embeddings: one product, split), chunks of
    one [B, 2C] (ADM's scale and shift), one row for every image (OS = 0). Else, or for rows
    past 32-bit offsets, they are copied dense. Each way computes the definition."""
    B, C = 3, 8
    e = torch.randn(B, 40).to(DEVICE)
    scale, shift = e[:, 4:20].chunk(2, dim=1)
    per_channel = gnt._per_image("add", torch.randn(C, 1, 1).to(DEVICE), B, C)
    for ops, os_, copied in (((e[:, 5:13], None, None), 40, False),
                             ((None, scale, shift), 40, False),
                             ((per_channel, None, None), 0, False),
                             ((per_channel, scale, None), C, True),        # rows 0 and 40 apart
                             ((e[:, 0:16:2], None, None), C, True)):       # channels 2 apart
        got, stride = gnt._operand_rows(ops, B, C)
        assert stride == os_
        for given, used in zip(ops, got):
            if given is not None:
                assert (used.data_ptr() != given.data_ptr()) == copied
                assert used.stride() == ((C, 1) if copied else given.stride())
        x = nhwc(B, C, 4, 4)
        with torch.no_grad():
            y = gnt.group_norm_act(x, 4, add=ops[0], scale=ops[1], shift=ops[2])
        want = definition(x, 4, add=ops[0], scale=ops[1], shift=ops[2])
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=2e-5)
    assert gnt._operand_rows((e[:1, :C], None, None), 1, C)[1] == C  # one image: any OS reads row 0
    # one image still needs its channels one after another: strided or broadcast channels are copied
    x1 = nhwc(1, C, 4, 4)
    for add in (e[:1, 0:16:2], torch.tensor(0.5).to(DEVICE).expand(1, C), torch.randn(16).to(DEVICE)[::2, None, None]):
        (used, _, _), _ = gnt._operand_rows((gnt._per_image("add", add, 1, C), None, None), 1, C)
        assert used.stride(1) == 1
        with torch.no_grad():
            y = gnt.group_norm_act(x1, 4, add=add, shift=add.reshape(1, C) if add.ndim == 2 else None)
        want = definition(x1, 4, add=add, shift=add.reshape(1, C) if add.ndim == 2 else None)
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=2e-5)
    huge = torch.empty_strided((B, C), (2**30, 1), device="meta")  # (B - 1) OS past 2^31: copied
    assert gnt._operand_rows((huge, None, None), B, C)[1] == C


@pytest.mark.parametrize("path", ["single", "tiled", "looped", "resident"])
def test_variance_has_no_cancellation_for_a_large_mean(path, monkeypatch):
    """x = 10^4 + N(0, 1): E[x^2] - E[x]^2 in float32 loses the variance entirely (both terms
    are 1e8, with float32 steps of 8); centred sums (and Chan's combination of tiles) keep it."""
    if path == "single":
        monkeypatch.setattr(gnt, "SINGLE_PASS_MAX", 16384)  # 256 positions x 64 channels
    else:
        monkeypatch.setattr(gnt, "SINGLE_PASS_MAX", 0)
        monkeypatch.setattr(gnt, "KERNEL", path)
        monkeypatch.setattr(gnt, "FINALIZE_CHUNK", 2)  # tiled: 4 tiles in 2 chunks, merged by Chan's rule
    assert gnt._plan(64, 8, 256, 2)["kernel"] == path
    x = nhwc(2, 64, 16, 16, mean=1e4, std=1.0)
    with torch.no_grad():
        y = gnt.group_norm_act(x, 8)
    want = definition(x, 8)  # the float32 input, exactly, in float64
    assert (y.double() - want).abs().max() < 5e-3  # float32 x itself carries 1e-3 of 1e4
    xg = x.reshape(2, 8, -1)
    naive_var = (xg * xg).mean(-1) - xg.mean(-1) ** 2
    assert (naive_var.double() - xg.double().var(-1, unbiased=False)).abs().max() > 0.5  # the trap is real


def test_bf16_input_gives_bf16_output_within_its_rounding():
    x = nhwc(2, 64, 8, 8, std=3.0).to(torch.bfloat16)
    w, b = torch.randn(64).to(DEVICE), torch.randn(64).to(DEVICE)
    with torch.no_grad():
        y = gnt.group_norm_act(x, 32, w, b, silu=True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), definition(x, 32, w, b, silu=True), rtol=2e-2, atol=2e-2)


def tiny_unet(scale_shift: bool) -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=3, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
               image_size=8, norm_groups=4, use_scale_shift_norm=scale_shift)
    for p in net.parameters():  # zero-initialised output convolutions would hide the blocks
        if not p.any():
            p.data.normal_(0, 0.1)
    return net.eval().to(DEVICE).to(memory_format=torch.channels_last)


@pytest.fixture
def kernel_calls(monkeypatch):
    set_nhwc_group_norm("triton")  # imports the kernels module into norm._kernels
    set_nhwc_group_norm("never")
    calls = []
    real = norm._kernels.group_norm_act
    monkeypatch.setattr(norm._kernels, "group_norm_act", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("scale_shift", [False, True])
def test_unet_samples_the_same_with_the_kernels(scale_shift, kernel_calls):
    """Every GroupNorm of the U-Net (2 per residual block, attention's, the output's) takes the
    kernels, with the time embedding's add or scale-shift and the SiLU fused in."""
    net = tiny_unet(scale_shift)
    x = nhwc(2, 3, 8, 8)
    t = torch.tensor([3, 700], device=DEVICE)
    with torch.no_grad():
        want = net(x, t)
        assert not kernel_calls
        with nhwc_group_norm("triton"):
            got = net(x, t)
    n_norms = sum(isinstance(m, GroupNorm) for m in net.modules())
    assert len(kernel_calls) == n_norms
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sampler_option_group_norm(kernel_calls):
    """dl.sample(..., group_norm="triton"): the kernels in every network call of the sampler,
    the same samples, the process-wide setting untouched; a bad mode is refused up front."""
    import difflab as dl

    net = tiny_unet(True)
    proc = dl.GaussianDiffusion(dl.schedules.linear())
    noise = nhwc(2, 3, 8, 8, seed=3)
    want = dl.sample(net, proc, (2, 3, 8, 8), "ddim", 3, noise=noise, channels_last=True)
    assert not kernel_calls
    got = dl.sample(net, proc, (2, 3, 8, 8), "ddim", 3, noise=noise, channels_last=True, group_norm="triton")
    n_norms = sum(isinstance(m, GroupNorm) for m in net.modules())
    assert len(kernel_calls) == 3 * n_norms and norm._mode == "never"
    # x0 = x - sigma eps: the first step multiplies the network's float32 rounding (~1e-6) by
    # sigma_T = sqrt((1 - abar_T) / abar_T) ~ 157
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="group_norm must be None or one of 'never', 'compile', 'always', 'triton'"):
        dl.sample(net, proc, (2, 3, 8, 8), "ddim", 3, noise=noise, group_norm="fast")
    with pytest.raises(ValueError, match="channels_last activations; pass channels_last=True"):
        dl.sample(net, proc, (2, 3, 8, 8), "ddim", 3, noise=noise, group_norm="triton")


def test_float64_keeps_its_precision(kernel_calls):
    """The kernels compute in float32; a float64 input takes the composite (float64 throughout,
    as torch's kernel), not a float64 result with float32 accuracy."""
    m = GroupNorm(4, 16).double()
    x = nhwc(2, 16, 4, 4, mean=3.0).double()
    add = torch.randn(2, 16, 1, 1, dtype=torch.float64).to(DEVICE)
    with torch.no_grad(), nhwc_group_norm("triton"):
        y = m(x, add=add, silu=True)
    assert y.dtype == torch.float64 and not kernel_calls
    want = definition(x, 4, m.weight, m.bias, eps=m.eps, add=add, silu=True)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_module_takes_the_kernels_only_for_what_they_compute(kernel_calls):
    """GroupNorm(x, add=...) in "triton" mode: a per-channel add ([B, C, 1, 1] or [C, 1, 1]) by
    the kernels; a full-size add or an NCHW x by the composite; all the same function."""
    m = GroupNorm(4, 8).to(DEVICE)
    x = nhwc(2, 8, 4, 4)
    cases = [(x, torch.randn(2, 8, 1, 1).to(DEVICE), True), (x, torch.randn(8, 1, 1).to(DEVICE), True),
             (x, torch.randn(2, 8, 4, 4).to(DEVICE), False), (x.contiguous(), None, False)]
    for inp, add, fused in cases:
        with torch.no_grad():
            want = m.double()(inp.double(), add=None if add is None else add.double(), silu=True)
            m.float()
            before = len(kernel_calls)
            with nhwc_group_norm("triton"):
                got = m(inp, add=add, silu=True)
        assert (len(kernel_calls) > before) == fused, (inp.shape, None if add is None else add.shape)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-5)


def test_training_takes_the_composite_and_gets_gradients(kernel_calls):
    """A gradient is needed: "triton" computes what "compile" does, and backward works."""
    net = tiny_unet(False).train()
    x = nhwc(2, 3, 8, 8)
    t = torch.tensor([3, 700], device=DEVICE)
    with nhwc_group_norm("triton"):
        net(x, t).square().mean().backward()
    assert not kernel_calls
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(RuntimeError, match="no backward.*torch.no_grad"):
        gnt.group_norm_act(x.requires_grad_(True), 1)


def test_unet_compiles_with_the_kernels_in_one_graph(kernel_calls):
    """torch.compile traces the custom op (its fake implementation) without a graph break, and
    Inductor's generated code calls it with inputs of the strides it chose (~15 s on a CPU)."""
    torch._dynamo.reset()  # earlier tests' compilations of UNet.forward count toward the recompile limit
    net = tiny_unet(False)
    x = nhwc(2, 3, 8, 8)
    t = torch.tensor([3, 700], device=DEVICE)
    with torch.no_grad():
        want = net(x, t)
        with nhwc_group_norm("triton"):
            got = torch.compile(net, fullgraph=True)(x, t)
    assert kernel_calls  # traced through the module, then run as the custom op
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_refusals(monkeypatch):
    x = nhwc(2, 8, 4, 4)
    with torch.no_grad():
        with pytest.raises(ValueError, match="8 channels do not split into 3 groups; choose a number of groups that divides 8"):
            gnt.group_norm_act(x, 3)
        with pytest.raises(ValueError, match="8 channels do not split into 0 groups"):
            gnt.group_norm_act(x, 0)
        with pytest.raises(ValueError, match=r"add must have shape \[2, 8\], \[2, 8, 1, 1\] or \[8, 1, 1\]"):
            gnt.group_norm_act(x, 4, add=torch.zeros(8, device=DEVICE))
        with pytest.raises(ValueError, match=r"shift must have shape"):
            gnt.group_norm_act(x, 4, shift=torch.zeros(3, 8, 1, 1, device=DEVICE))
        with pytest.raises(ValueError, match=r"weight must have shape \[8\]"):
            gnt.group_norm_act(x, 4, torch.ones(4, device=DEVICE))
        with pytest.raises(ValueError, match=r"must be \[B, C, H, W\]"):
            gnt.group_norm_act(x[0], 4)
        monkeypatch.setattr(gnt, "INTERPRETED", False)
        if DEVICE == "cpu":
            with pytest.raises(ValueError, match="CUDA tensors.*group_norm_nhwc"):
                gnt.group_norm_act(x, 4)
    monkeypatch.setattr(norm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs the triton package.*pip install triton"):
        set_nhwc_group_norm("triton")
    assert norm._mode == "never"


def test_an_empty_batch_or_image_gives_an_empty_output():
    """As torch's group_norm: no image, or images of no position, normalize to nothing (no
    kernel launched: a zero-size tile does not compile)."""
    for shape in ((0, 8, 4, 4), (2, 8, 0, 4)):
        x = nhwc(*shape)
        with torch.no_grad():
            y = gnt.group_norm_act(x, 4, silu=True)
        assert y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)


def test_plan_takes_the_looped_kernel_for_a_batch_and_the_tiled_for_a_few_large_images(monkeypatch):
    """The rule of _plan: one program for an image of <= 8192 elements; the resident way for a
    larger one of at most 8 x 8 positions; else the looped kernel
    when (image, slab) programs are plentiful -- the U-Net's batch of 128 at every larger level
    -- and the tiled kernels when they are not (one 256 x 256 image: 2 slabs, but 512 tiles) or
    when C/G is not a power of two (as measured on an H200);
    KERNEL (DIFFLAB_GN_KERNEL) overrides the rule for larger images, and "resident" for small
    ones too (the single-pass kernel in slabs: more programs for a batch)."""
    monkeypatch.setattr(gnt, "KERNEL", None)
    assert gnt._plan(256, 32, 16, 128)["kernel"] == "single"  # 4 x 4
    for C, HW in ((128, 1024), (256, 1024), (256, 256), (512, 256)):
        p = gnt._plan(C, 32, HW, 128)
        assert p["kernel"] == "looped" and p["NS"] * p["BLOCK_G"] >= 32, (C, HW)
        assert p["BLOCK_G"] * p["BLOCK_CG"] == gnt.SLAB_LANES  # 64 lanes: 128 bytes of a bf16 position
    for C in (256, 512):  # 8 x 8, too large for one program: resident (measured 1.7x, 2.0x looped on an H100)
        p = gnt._plan(C, 32, 64, 128)
        assert p["kernel"] == "resident" and p["BLOCK_HW"] == 64 and "maxnreg" not in p, C
    assert gnt._plan(512, 32, 64, 128, kernel="looped")["kernel"] == "looped"
    # only where measured: a batch of programs, C/G a power of two
    assert gnt._plan(256, 32, 64, 1)["kernel"] == "tiled" and gnt._plan(384, 32, 64, 128)["kernel"] == "tiled"
    for HW in (256, 1024):  # groups of 12 channels (the up path's 384 / 32): measured faster tiled
        assert gnt._plan(384, 32, HW, 128)["kernel"] == "tiled"
    assert gnt._plan(384, 32, 1024, 128, kernel="looped")["kernel"] == "looped"
    p = gnt._plan(128, 32, 256 * 256, 1)
    assert p["kernel"] == "tiled" and p["NB"] == 256 * 256 // p["BLOCK_HW"] == 2048
    monkeypatch.setattr(gnt, "KERNEL", "tiled")
    assert gnt._plan(128, 32, 1024, 128)["kernel"] == "tiled"
    assert gnt._plan(256, 32, 16, 128)["kernel"] == "single"
    # resident (on request): all positions of a slab in one program, at most RESIDENT_MAX elements
    monkeypatch.setattr(gnt, "KERNEL", "resident")
    for C, HW, lanes in ((128, 1024, 16), (384, 1024, 16), (256, 256, 64), (512, 64, 64)):
        p = gnt._plan(C, 32, HW, 128)
        assert p["kernel"] == "resident" and p["BLOCK_HW"] == HW and p["BLOCK_G"] * p["BLOCK_CG"] == lanes
        assert p["BLOCK_HW"] * lanes <= gnt.RESIDENT_MAX and p["NS"] * p["BLOCK_G"] >= 32
    assert gnt._plan(256, 32, 64 * 64, 128)["kernel"] == "looped"  # a group of 8 x 4096 does not fit: the rule
    p = gnt._plan(256, 32, 16, 128)  # 4 x 4: slabs of 64 lanes, 4 programs an image instead of 1
    assert p["kernel"] == "resident" and p["NS"] == 4 and p["BLOCK_G"] * p["BLOCK_CG"] == 64
    assert all("maxnreg" not in gnt._plan(C, 32, HW, 128) for C, HW in ((128, 1024), (256, 16)))
    # resident2: the resident programs, with a thread's registers capped so that two programs of
    # 16 warps share an SM's 65536 registers; programs of 4 warps (the small images) uncapped
    monkeypatch.setattr(gnt, "KERNEL", "resident2")
    for C, HW, cap in ((128, 1024, 64), (384, 1024, 64), (256, 256, 64), (256, 16, None), (256, 64 * 64, None)):
        p = gnt._plan(C, 32, HW, 128)
        assert p.pop("maxnreg", None) == cap and p == gnt._plan(C, 32, HW, 128, kernel="resident"), (C, HW)
        assert cap is None or 2 * p["num_warps"] * 32 * cap == gnt.REGISTERS_PER_SM


def test_a_per_shape_plan_picks_the_way_shape_by_shape(tmp_path, monkeypatch):
    """DIFFLAB_GN_PLAN's table (benchmarks/group_norm.py --best-per-shape) sets the way for the
    shapes it names; the rule keeps the others; KERNEL or an explicit kernel overrides it. A bad
    table is refused with the entry and the fix."""
    path = tmp_path / "plan.json"
    path.write_text('{"384,32,1024": "looped", "128,32,1024": "resident"}')
    plan = gnt.load_plan(path)
    assert plan == {(384, 32, 1024): "looped", (128, 32, 1024): "resident"}
    monkeypatch.setattr(gnt, "KERNEL", None)
    monkeypatch.setattr(gnt, "PLAN", plan)
    assert gnt._plan(384, 32, 1024, 128)["kernel"] == "looped"  # the rule says tiled here
    assert gnt._plan(128, 32, 1024, 128)["kernel"] == "resident"
    assert gnt._plan(256, 32, 1024, 128)["kernel"] == "looped"  # not in the table: the rule
    assert gnt._plan(384, 32, 1024, 128, kernel="tiled")["kernel"] == "tiled"
    monkeypatch.setattr(gnt, "KERNEL", "tiled")
    assert gnt._plan(128, 32, 1024, 128)["kernel"] == "tiled"
    for text, words in (('{"384,32": "looped"}', ["'384,32'", "C,G,HW"]),
                        ('{"384,32,1024": "fast"}', ["'fast'", "tiled, looped, resident"]),
                        ('["looped"]', ["JSON object"]), ("{", ["cannot read"])):
        path.write_text(text)
        with pytest.raises(ValueError) as err:
            gnt.load_plan(path)
        assert all(w in str(err.value) for w in words), str(err.value)


def test_the_environment_variable_names_the_kernels():
    code = "import difflab.models.group_norm_triton as g; print(g.KERNEL)"
    env = dict(os.environ, TRITON_INTERPRET="1", DIFFLAB_GN_KERNEL="looped")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "looped", done.stderr[-2000:]
    env["DIFFLAB_GN_KERNEL"] = ""
    plan = Path(tempfile.mkdtemp()) / "plan.json"
    plan.write_text('{"128,32,1024": "resident2"}')
    env["DIFFLAB_GN_PLAN"] = str(plan)
    code_plan = "import difflab.models.group_norm_triton as g; p = g._plan(128, 32, 1024, 128); print(p['kernel'], p['maxnreg'])"
    done = subprocess.run([sys.executable, "-c", code_plan], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "resident 64", done.stderr[-2000:]
    del env["DIFFLAB_GN_PLAN"]
    env["DIFFLAB_GN_KERNEL"] = "fast"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "DIFFLAB_GN_KERNEL must be one of tiled, looped, resident, resident2 (or unset), got 'fast'" \
        in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the next test compiles and runs them")
def test_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    """The interpreter runs Python, not the compiler: Triton's whole pipeline down to an sm_90
    cubin (ptxas comes with triton) for every specialization the CIFAR-10 U-Net launches catches
    what only a compile sees -- e.g. an image of one position, whose H*W of 1 Triton compiles
    in as a constant (a Python int has no .to())."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    script = Path(__file__).with_name("triton_aot.py")
    done = subprocess.run([sys.executable, str(script), "90"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    n = int(re.search(r"compiled (\d+) kernels for sm_90", done.stdout).group(1))
    assert n >= 40 and "_gn_single_pass" in done.stdout and "_gn_partial_stats" in done.stdout
    spills = re.findall(r"local-memory loads (\d+)", done.stdout)
    assert len(spills) == n and set(spills) == {"0"}  # no PTX-level spills to local memory
    # and none in the machine code either, except where resident2 caps the registers: there at
    # most a few values, each spilled once (the single-pass kernel has no loop)
    kernels = re.findall(r"maxnreg (\S+), .*registers (\d+), .*spilled loads (\d+)", done.stdout)
    assert len(kernels) == n
    assert all(cap == "-" and spilled == "0" or cap != "-" and int(spilled) <= 8 for cap, _, spilled in kernels)
    capped = [(int(cap), int(r)) for cap, r, _ in kernels if cap != "-"]
    assert capped and all(r <= cap for cap, r in capped)
    # Registers bound occupancy, and these kernels live on memory bandwidth: none above 128 a
    # thread (the 384-channel statistics kernel needed 157 when it summed groups with a [C, G]
    # indicator matrix; as [G, C/G] lanes, 48).
    regs = [int(r) for r in re.findall(r"registers (\d+)", done.stdout)]
    assert len(regs) == n and max(regs) <= 128, max(regs)


def test_the_ahead_of_time_compile_specializes_as_a_launch_does():
    """A launch marks every 16-byte aligned pointer and every integer divisible by 16 with
    tt.divisibility (BaseBackend.get_int_specialization), and that changes the code: vector
    loads, about half of _gn_apply's registers (ptxas, sm_90: 104 -> 48 at 128 channels). Without
    those marks triton_aot.py would compile, and check for spills, kernels that never run."""
    aot = load_script("tests/triton_aot.py")
    seen = {}
    for fn, signature, constexprs, attrs, _ in aot.specializations():
        divisible = {name for i, name in enumerate(signature) if (i,) in attrs}
        assert {n for n, t in signature.items() if t.startswith("*")} <= divisible, fn.__name__
        seen.setdefault(fn.__name__, []).append((divisible, constexprs))
    # the 32 x 32 level at 128 channels: H*W, C, G and 32 tiles all divisible by 16; 16 x 16: 8 tiles
    assert any({"HW", "C", "G", "NB"} <= d for d, _ in seen["_gn_partial_stats"])
    assert any({"HW", "C", "G"} <= d and "NB" not in d for d, _ in seen["_gn_partial_stats"])
    assert any(c.get("HW") == 1 and "HW" not in d for d, c in seen["_gn_single_pass"])  # a 1: a constant


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton kernels need a GPU")
def test_gpu_kernels_match_torch_at_the_unet_shapes_and_capture_in_a_graph(monkeypatch):
    """On the GPU: the CIFAR-10 U-Net's GroupNorm shapes in bf16 against torch's kernel, by the
    tiled and the looped kernels, and the compiled (Inductor) U-Net with the kernels captured
    in a CUDA graph."""
    for kernel in gnt.KERNELS:
        monkeypatch.setattr(gnt, "KERNEL", kernel)
        for C, S in [(128, 32), (256, 16), (256, 8), (384, 32), (512, 4)]:
            x = nhwc(128, C, S, S, std=2.0).to(torch.bfloat16)
            w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
            e = torch.randn(128, C, device="cuda").to(torch.bfloat16)  # the time embedding (norm2)
            with torch.no_grad():
                got = gnt.group_norm_act(x, 32, w, b, silu=True)
                want = F.silu(F.group_norm(x.float(), 32, w, b))
                got_add = gnt.group_norm_act(x, 32, w, b, add=e, silu=True)  # a specialization of its own
                want_add = F.silu(F.group_norm(x.float() + e.float()[:, :, None, None], 32, w, b))
            torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2, msg=lambda m: f"{kernel}: {m}")
            torch.testing.assert_close(got_add.float(), want_add, rtol=2e-2, atol=2e-2,
                                       msg=lambda m: f"{kernel} with add: {m}")
    monkeypatch.setattr(gnt, "KERNEL", None)
    net = tiny_unet(False)
    x = nhwc(4, 3, 8, 8)
    t = torch.tensor([3, 700, 10, 999], device="cuda")
    with torch.no_grad():
        want = net(x, t)
        with nhwc_group_norm("triton"):
            compiled = torch.compile(net, fullgraph=True)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    compiled(x, t)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = compiled(x, t)
            graph.replay()
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


def test_trainer_option_group_norm(tmp_path, kernel_calls, monkeypatch):
    """config group_norm: "triton" trains through torch's autograd path (the NHWC view where
    torch.compile traces, here eager: torch's kernel) and samples the grid by the kernels;
    the same run as "never"; null (the default) leaves the process-wide setting in force; a
    bad mode names the field."""
    from difflab.training import Trainer, TrainConfig, apply_overrides, read_checkpoint

    cfg = TrainConfig.from_dict(dict(
        model={"name": "unet", "kwargs": {"in_channels": 1, "channels": 16, "channel_mult": [1, 2],
                                          "num_res_blocks": 1, "attention_levels": [1], "image_size": 8,
                                          "dropout": 0.0, "norm_groups": 4}},
        diffusion={"schedule": "linear", "T": 100}, optim={"lr": 1e-3}, ema={"decay": 0.9},
        sample={"every": 0, "n": 2, "steps": 2}, batch_size=8, steps=3, log_every=1, ckpt_every=3,
        device=DEVICE, seed=0, channels_last=True, cond_drop_prob=0.0))
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    runs = {}
    for mode in ("never", "triton"):
        with Trainer(apply_overrides(cfg, [f"group_norm={mode}"]), tmp_path / mode, data=(images, None),
                     progress=False) as t:
            t.train()
        runs[mode] = read_checkpoint(tmp_path / mode)
        assert norm._mode == "never"  # the process-wide setting is left as it was
    n_norms = sum(isinstance(m, GroupNorm) for m in t.model.modules())
    assert len(kernel_calls) == 2 * n_norms  # the grid's two DDIM steps; no training step
    for k in runs["never"]["model"]:
        torch.testing.assert_close(runs["triton"]["model"][k], runs["never"]["model"][k], rtol=1e-5, atol=1e-6)
    assert any((tmp_path / "triton").rglob("*.png"))
    assert cfg.group_norm is None
    with nhwc_group_norm("triton"), Trainer(cfg, tmp_path / "inherit", data=(images, None), progress=False) as t:
        t.train()  # the process-wide "triton": the grid by the kernels again
    assert len(kernel_calls) == 4 * n_norms
    with pytest.raises(ValueError, match="config field 'group_norm'.*never, compile, always, triton"):
        apply_overrides(cfg, ["group_norm=fast"]).validate()
    monkeypatch.setattr(norm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="config field 'group_norm'.*needs the triton package"):
        apply_overrides(cfg, ["group_norm=triton"]).validate()
