"""The U-Net's cross-attention to text (``UNet(context_dim=...)``, :class:`CrossAttentionBlock`):
the block against masked multi-head attention written out per head, padding invariance, the
zero-initialised start (the network without its text), where the blocks go, bad input, and the
speed layer (channels_last, the GroupNorm and upsampling swaps, per-call CUDA graphs emulated on
the CPU) computing the same function with a context."""

import math

import pytest
import torch
import torch.nn.functional as F

import difflab as dl
from difflab.accel import model as model_mod
from difflab.accel.graphs import CapturedCall
from difflab.models.unet import CrossAttentionBlock, UNet
from graph_emulator import RecordedGraph
from networks import perturb

D = 6  # the text embeddings' width
SMALL = dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4, context_dim=D)


def small(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**SMALL, **kw})


def text(B=2, L=5, seed=1, lengths=(2, 5)):
    """Token embeddings [B, L, D] and a padding mask whose row b holds lengths[b] real tokens."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    return torch.randn(B, L, D, generator=g), mask


def image(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 1, 8, 8, generator=g), torch.tensor([10, 700])


def cross_blocks(model):
    return [m for m in model.modules() if isinstance(m, CrossAttentionBlock)]


# ---------------------------------------------------------------- the block's equation

def reference_cross_attention(block: CrossAttentionBlock, x, context, mask):
    """x + W_o concat_h softmax(q_h k_h^T / sqrt(d) + M) v_h, written out with einsum per head."""
    B, C, H, W = x.shape
    n = block.num_heads
    d = C // n
    g = block.norm
    tokens = F.group_norm(x, g.num_groups, g.weight, g.bias, g.eps).reshape(B, C, H * W).transpose(1, 2)
    q = tokens @ block.q.weight.T
    k = context @ block.k.weight.T
    v = context @ block.v.weight.T
    heads = []
    for i in range(n):
        part = slice(i * d, (i + 1) * d)
        logits = torch.einsum("bqd,bkd->bqk", q[..., part], k[..., part]) / math.sqrt(d)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(torch.einsum("bqk,bkd->bqd", logits.softmax(dim=-1), v[..., part]))
    out = torch.cat(heads, dim=-1) @ block.proj_out.weight.T + block.proj_out.bias
    return x + out.transpose(1, 2).reshape(B, C, H, W)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_the_block_is_masked_multi_head_attention(heads):
    torch.manual_seed(0)
    block = perturb(CrossAttentionBlock(8, D, num_heads=heads, norm_groups=2), scale=0.3).double()
    with torch.no_grad():
        block.norm.weight.normal_(1.0, 0.2), block.norm.bias.normal_(0.0, 0.2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 4, 5, generator=g, dtype=torch.float64)
    context = torch.randn(3, 7, D, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0], [1] * 7]).bool()
    torch.testing.assert_close(block(x, context, mask), reference_cross_attention(block, x, context, mask),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(block(x, context), reference_cross_attention(block, x, context, None),
                               rtol=1e-10, atol=1e-10)
    # NHWC memory: the tokens are a view of it, the output channels_last again, the same numbers
    nhwc = x.contiguous(memory_format=torch.channels_last)
    out = block(nhwc, context, mask)
    torch.testing.assert_close(out, block(x, context, mask), rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_block_starts_as_the_identity_and_has_no_qkv_bias():
    block = CrossAttentionBlock(8, D, num_heads=2, norm_groups=2)
    x = torch.randn(2, 8, 4, 4)
    context, mask = text()
    assert torch.equal(block(x, context, mask), x)
    assert block.q.bias is None and block.k.bias is None and block.v.bias is None
    assert block.k.in_features == block.v.in_features == D and block.k.out_features == 8


# ---------------------------------------------------------------- the network

def test_padding_tokens_change_nothing():
    """Tokens the mask marks as padding get weight exactly zero: appending more of them, with any
    (finite) values, or changing the values of those there, leaves the output as it was."""
    model = perturb(small(attention_levels=(1,)), scale=0.2).eval()
    x, t = image()
    context, mask = text(L=4, lengths=(2, 4))
    want = model(x, t, context=context, context_mask=mask)
    g = torch.Generator().manual_seed(5)
    longer = torch.cat([context, 100 * torch.randn(2, 3, D, generator=g)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    longer[0, 2:4] = 50 * torch.randn(2, D, generator=g)  # row 0's own padding, new values
    torch.testing.assert_close(model(x, t, context=longer, context_mask=longer_mask), want, rtol=1e-6, atol=1e-6)
    # no mask: every token real; the same as a mask of all True
    full = torch.ones(2, 4, dtype=torch.bool)
    torch.testing.assert_close(model(x, t, context=context), model(x, t, context=context, context_mask=full),
                               rtol=0, atol=0)


def test_at_initialisation_the_network_is_the_one_without_text():
    """proj_out starts at zero, so with every other weight given signal the network computes, bit for
    bit, the same U-Net built without context_dim holding the same weights (whose state dict is the
    text network's less exactly the cross-attention blocks')."""
    model = small(num_classes=3, attention_levels=(1,))
    for block in cross_blocks(model):
        assert not block.proj_out.weight.any() and not block.proj_out.bias.any()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # signal through every zero-initialised layer but the cross-attention outputs
        for name, p in model.named_parameters():
            if not p.any() and ".proj_out." not in name and not name.startswith("mid_cross.proj_out"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    plain = UNet(**{**SMALL, "context_dim": None, "num_classes": 3, "attention_levels": (1,)})
    state = model.state_dict()
    text_keys = {k for k in state if ".cross." in k or k.startswith("mid_cross.")}
    assert set(state) - set(plain.state_dict()) == text_keys and set(plain.state_dict()) <= set(state)
    assert len(text_keys) == 4 * 7  # level 1: one step down, two up; the middle; norm (2), q, k, v, proj_out (2)
    plain.load_state_dict({k: v for k, v in state.items() if k not in text_keys})
    x, t = image()
    context, mask = text()
    labels = torch.tensor([0, 3])
    want = plain(x, t, labels)
    assert want.abs().max() > 1e-3  # (a non-trivial function)
    assert torch.equal(model(x, t, labels, context=context, context_mask=mask), want)
    assert torch.equal(model(x, t, labels, context=torch.randn_like(context)), want)


def test_an_unmasked_token_steers_the_output_once_proj_out_learns():
    model = small()
    for block in cross_blocks(model):
        with torch.no_grad():
            block.proj_out.weight.normal_(0.0, 0.3)
    perturb(model)  # the other zero-initialised layers (conv_out, the residual blocks' conv2)
    x, t = image()
    context, mask = text(lengths=(2, 5))
    before = model(x, t, context=context, context_mask=mask)
    real, pad = context.clone(), context.clone()
    real[0, 1] += 1.0  # a real token of text 0
    pad[0, 3] += 1.0  # a padding token of text 0
    after = model(x, t, context=real, context_mask=mask)
    assert (after[0] - before[0]).abs().max() > 1e-4
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=0)  # text 1 is another sample
    torch.testing.assert_close(model(x, t, context=pad, context_mask=mask), before, rtol=1e-6, atol=1e-6)


def test_labels_and_text_combine():
    model = perturb(small(num_classes=4), scale=0.2)
    x, t = image()
    context, mask = text()
    out = model(x, t, torch.tensor([1, 2]), context=context, context_mask=mask)
    assert (out - model(x, t, torch.tensor([3, 2]), context=context, context_mask=mask))[0].abs().max() > 1e-4
    assert (out - model(x, t, torch.tensor([1, 2]), context=context.flip(0), context_mask=mask))[0].abs().max() > 1e-4
    assert model(x, t, context=context, context_mask=mask).shape == x.shape  # no labels: the null label


def test_the_gradient_reaches_the_real_tokens_only():
    model = perturb(small(), scale=0.2)
    x, t = image()
    context, mask = text(lengths=(2, 5))
    context.requires_grad_(True)
    model(x, t, context=context, context_mask=mask).square().sum().backward()
    grad = context.grad
    assert grad[mask].abs().amin(dim=-1).gt(0).all()  # every real token gets a gradient
    assert not grad[~mask].any()  # padding: exactly none
    for block in cross_blocks(model):
        assert block.k.weight.grad.abs().max() > 0 and block.v.weight.grad.abs().max() > 0


def test_default_and_chosen_levels():
    """Default: the self-attention levels if there are any, else every level below full resolution;
    the middle always; heads by the U-Net's rule."""
    three = dict(channel_mult=(1, 1, 2))
    assert small(attention_levels=(0,)).cross_attention_levels == (0,)
    assert small(**three).cross_attention_levels == (1, 2)
    assert small(**three, attention_levels=[]).cross_attention_levels == (1, 2)
    one = small(channel_mult=(1,))
    assert one.cross_attention_levels == () and len(cross_blocks(one)) == 1 and one.mid_cross is not None
    assert small(**three, cross_attention_levels=()).cross_attention_levels == ()
    chosen = small(**three, image_size=8, cross_attention_resolutions=(8, 2))
    assert chosen.cross_attention_levels == (0, 2)
    # level 0 has one step down and two up, level 2 the same, the middle one: 7 blocks
    assert len(cross_blocks(chosen)) == 7
    assert chosen(*image(), context=text()[0]).shape == (2, 1, 8, 8)
    assert {b.num_heads for b in cross_blocks(small(head_dim=4, cross_attention_levels=(0, 1)))} == {2, 4}  # 8, 16
    assert {b.num_heads for b in cross_blocks(small(num_heads=2))} == {2}
    no_text = UNet(**{**SMALL, "context_dim": None})
    assert no_text.context_dim is None and no_text.mid_cross is None and not cross_blocks(no_text)


def test_config_rebuilds_the_text_network():
    model = small(cross_attention_levels=(0,))
    again = UNet(**model.config)
    again.load_state_dict(model.state_dict())
    assert again.context_dim == D and again.cross_attention_levels == (0,)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("kw, match", [
    (dict(context_dim=None, cross_attention_levels=(1,)), "needs context_dim"),
    (dict(context_dim=None, cross_attention_resolutions=(4,)), "needs context_dim"),
    (dict(context_dim=0), "context_dim"),
    (dict(context_dim=6.5), "context_dim"),
    (dict(cross_attention_levels=(2,)), r"cross_attention_levels must be level indices in 0 \.\. 1"),
    (dict(cross_attention_levels=1), "cross_attention_levels must be a list"),
    (dict(cross_attention_resolutions=(4,)), "cross_attention_resolutions needs image_size"),
    (dict(cross_attention_resolutions=(3,), image_size=8), r"cross_attention_resolutions \[3\] are not"),
    (dict(num_heads=3), "num_heads=3 must divide"),
])
def test_bad_construction_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_bad_text_input_is_named():
    model = small()
    x, t = image()
    context, mask = text()
    bad = [
        (dict(), "cross-attends to text .*pass context=\\[B, L, 6\\]"),
        (dict(context_mask=mask), "pass context="),
        (dict(context=context[:1]), r"B = 2.*got \(1, 5, 6\)"),
        (dict(context=context[..., :4]), r"\[B, L, 6\].*got \(2, 5, 4\)"),
        (dict(context=context[0]), r"got \(5, 6\)"),
        (dict(context=context[:, :0]), "L >= 1"),
        (dict(context=torch.zeros(2, 5, D, dtype=torch.long)), "floating-point token embeddings.*token ids"),
        (dict(context=context, context_mask=mask.long()), r"bool tensor \[B, L\] = \[2, 5\].*m\.bool\(\)"),
        (dict(context=context, context_mask=mask[:, :3]), r"bool tensor \[B, L\]"),
        (dict(context=context, context_mask=[[True] * 5] * 2), "got list"),
        (dict(context=context, context_mask=torch.tensor([[True] * 5, [False] * 5])),
         r"rows \[1\] mask every token.*start token"),
        (dict(context=context.to("meta")), "context is on meta but x on cpu"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            model(x, t, **kwargs)
    plain = UNet(**{**SMALL, "context_dim": None})
    for kwargs in (dict(context=context), dict(context_mask=mask)):
        with pytest.raises(ValueError, match="takes no text context .*context_dim"):
            plain(x, t, **kwargs)
    with pytest.raises(ValueError, match="CrossAttentionBlock attends to text"):
        cross_blocks(model)[0](torch.zeros(2, 8, 8, 8), None)


def test_a_context_of_another_float_dtype_is_cast_to_the_network():
    model = perturb(small(), scale=0.2)
    x, t = image()
    context, mask = text()
    want = model(x, t, context=context, context_mask=mask)
    torch.testing.assert_close(model(x, t, context=context.double(), context_mask=mask), want, rtol=0, atol=0)
    wide = model.double()(x.double(), t, context=context, context_mask=mask)  # a float32 text, a float64 net
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide.float(), want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the speed layer

def test_the_speed_layer_runs_the_text_network():
    """accelerate's module swaps (NHWC GroupNorm, folded upsampling) and channels_last compute the
    same function with the context passed through the wrapper's keywords."""
    model = perturb(small(attention_levels=(1,), num_classes=3), scale=0.2).eval()
    x, t = image()
    context, mask = text()
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        want = model(x, t, labels, context=context, context_mask=mask)
        fast = dl.accel.accelerate(model, channels_last=True, group_norm="always", upsample="subpixel")
        got = fast(x, t, labels, context=context, context_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass context="):
        fast(x, t, labels)


class _CPUCapture(CapturedCall):
    """CapturedCall with its CUDA parts replaced by tests/graph_emulator.py (as tests/accel does)."""

    captures = 0

    def _warm_up(self, n):
        for _ in range(n):
            self.fn(*self.inputs)

    def _capture(self):
        type(self).captures += 1
        self.recorded = RecordedGraph(strict=False)
        self.out = self.recorded.capture(lambda: self.fn(*self.inputs))

    def _replay(self):
        self.recorded.replay()


def test_per_call_graphs_copy_the_context_in(monkeypatch):
    """cuda_graph=True: the context and its mask are inputs of the captured call, copied into its
    static buffers, so a replay with another text computes with that text."""
    monkeypatch.setattr(model_mod, "graphs_supported", lambda device: True)
    monkeypatch.setattr(model_mod, "CapturedCall", _CPUCapture)
    model = perturb(small(), scale=0.2).eval()
    fast = dl.accel.accelerate(model, cuda_graph=True)
    x, t = image()
    first, mask = text(seed=1)
    second, other = text(seed=2, lengths=(4, 1))
    with torch.no_grad():
        for context, m in ((first, mask), (second, other), (first, other)):
            torch.testing.assert_close(fast(x, t, context=context, context_mask=m),
                                       model(x, t, context=context, context_mask=m), rtol=1e-5, atol=1e-5)
    assert _CPUCapture.captures == 1


def test_the_text_network_compiles_as_one_graph():
    """Under torch.compile the mask's host-side row check is skipped (it would split the graph):
    fullgraph tracing succeeds and computes the eager function."""
    model = perturb(small(attention_levels=(1,), num_classes=3), scale=0.2).eval()
    x, t = image()
    context, mask = text()
    labels = torch.tensor([0, 1])
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, labels, context=context, context_mask=mask),
                                   model(x, t, labels, context=context, context_mask=mask), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the pooled text embedding
def test_pooled_context_adds_the_mean_of_the_real_tokens_to_the_time_embedding():
    pooled = perturb(small(pooled_context=True), scale=0.3).eval()
    seen = []
    pooled.context_embed.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x, t = image()
    c, m = text(lengths=(2, 5))
    out = pooled(x, t, context=c, context_mask=m)
    torch.testing.assert_close(seen[-1][0], c[0, :2].mean(0)) and torch.testing.assert_close(seen[-1][1], c[1].mean(0))
    # padding with any values changes nothing; no mask: every token is real
    c2 = torch.cat([c, 100 * torch.randn(2, 3, D)], 1)
    m2 = torch.cat([m, torch.zeros(2, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(pooled(x, t, context=c2, context_mask=m2), out, rtol=1e-5, atol=1e-5)
    pooled(x, t, context=c)
    torch.testing.assert_close(seen[-1], c.mean(1))
    # with W_p = 0 and b_p = 0 it is the network without the pooled path, the same other weights
    plain = small()
    state = {k: v for k, v in pooled.state_dict().items() if not k.startswith("context_embed.")}
    plain.load_state_dict(state)
    with torch.no_grad():
        pooled.context_embed.weight.zero_(), pooled.context_embed.bias.zero_()
    torch.testing.assert_close(pooled(x, t, context=c, context_mask=m), plain.eval()(x, t, context=c, context_mask=m))


def test_pooled_context_needs_text():
    with pytest.raises(ValueError, match="pooled_context .*needs context_dim"):
        UNet(**{**SMALL, "context_dim": None}, pooled_context=True)
    with pytest.raises(ValueError, match="pooled_context must be"):
        small(pooled_context="yes")
