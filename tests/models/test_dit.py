"""The diffusion transformer (src/difflab/models/dit.py): its initial function exactly, its parts against
independent transcriptions and the paper's published sizes, every conditioning variant, bad input.

The whole network against diffusers' DiTTransformer2DModel with copied weights: tests/test_crosscheck_dit.py.
"""

import numpy as np
import pytest
import torch
from networks import perturb
from torch.utils.flop_counter import FlopCounterMode

import difflab as dl
from difflab.models import DiT, dit
from difflab.models.dit import CONDITIONING, patchify, sincos_2d, unpatchify

SMALL = dict(in_channels=2, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4)


def inputs(B=3, C=2, H=8, W=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, C, H, W, generator=g), torch.tensor([3, 400, 999])[:B]


def test_at_initialisation_every_block_is_the_identity_and_the_output_zero():
    """adaLN-Zero (Peebles & Xie, sec. 3.2): the regressed gates start at zero, so each block maps x to
    x exactly, for any tokens and condition; the zero final layer makes the output exactly zero.
    The text cross-attention's zero output projection keeps that with context_dim too."""
    torch.manual_seed(0)
    for kw in ({}, {"context_dim": 12}):
        model = DiT(**SMALL, num_classes=5, **kw)
        x, t = inputs()
        ctx = dict(context=torch.randn(3, 7, 12)) if kw else {}
        assert torch.equal(model(x, t, torch.tensor([0, 4, 5]), **ctx), torch.zeros_like(x))
        tokens, c = torch.randn(3, 16, 32), torch.randn(3, 32)
        keys = torch.randn(3, 7, 32) if kw else None
        for block in model.blocks:
            assert torch.equal(block(tokens, c, keys), tokens)


def test_the_other_variants_start_at_zero_output_but_not_at_identity_blocks():
    torch.manual_seed(0)
    x, t = inputs()
    for conditioning in ("adaln", "cross_attention", "in_context"):
        model = DiT(**SMALL, num_classes=5, conditioning=conditioning)
        assert torch.equal(model(x, t, torch.tensor([0, 1, 2])), torch.zeros_like(x))
        tokens, c = torch.randn(3, 16, 32), torch.randn(3, 32)
        keys = torch.randn(3, 2, 32) if conditioning == "cross_attention" else None
        assert not torch.allclose(model.blocks[0](tokens, c, keys), tokens)


def test_published_sizes_of_the_paper():
    """DiT-XL/2 on 256x256 images (32x32x4 latents, 1,000 classes, learned sigma) has 675,129,632
    parameters in the paper's code, which counts its fixed position table (a frozen nn.Parameter);
    and Gflops (multiply-adds, fvcore's count) of table 4: S/2 6.06, B/2 23.01, L/2 80.71, XL/2 118.64,
    XL/4 29.05, B/4 5.56, S/8 0.36 (torch's FlopCounterMode counts 2 flops per multiply-add)."""
    gflops = {("S", 2): 6.06, ("B", 2): 23.01, ("L", 2): 80.71, ("XL", 2): 118.64, ("XL", 4): 29.05,
              ("B", 4): 5.56, ("S", 8): 0.36}
    for (size, p), published in gflops.items():
        with torch.device("meta"):
            model = dit(size, p, in_channels=4, image_size=32, num_classes=1000, learn_sigma=True)
            x, t, y = torch.randn(1, 4, 32, 32), torch.ones(1), torch.zeros(1, dtype=torch.long)
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(x, t, y)
        assert out.shape == (1, 8, 32, 32)
        assert abs(counter.get_total_flops() / 2e9 - published) < 0.01 * published + 0.005, (size, p)
        if (size, p) == ("XL", 2):
            n = sum(q.numel() for q in model.parameters()) + model.pos_embed.numel()
            assert n == 675_129_632


def _mae_2d_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's / DiT's get_2d_sincos_pos_embed, transcribed in NumPy (meshgrid with w first)."""
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_positions_are_the_papers_sincos_table():
    for dim, grid in ((32, 4), (96, 16), (384, 16)):
        np.testing.assert_allclose(sincos_2d(dim, grid, grid).numpy(), _mae_2d_sincos(dim, grid), atol=1e-6)
    rect = sincos_2d(16, 2, 3)  # a 2 x 3 grid: column in the first half, row in the second
    np.testing.assert_allclose(rect[4], sincos_2d(16, 3, 3)[4])  # row 1, column 1 either way
    assert torch.equal(rect[:3, 8:], rect[:1, 8:].expand(3, 8)) and not torch.equal(rect[0, :8], rect[1, :8])


def test_patchify_is_the_patch_embedding_order_and_unpatchify_its_inverse():
    """The patch embedding (a p x p convolution, stride p) is a linear map of patchify's tokens: the
    same token order (row-major) and patch layout (p, p, C) unpatchify undoes."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 12)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 6, 48) and torch.equal(unpatchify(tokens, 4, 2, 3), x)
    assert torch.equal(tokens[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).flatten())  # row 0, column 1
    conv = torch.nn.Conv2d(3, 5, 4, stride=4)
    as_linear = conv.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (out, p, p, C)
    torch.testing.assert_close(conv(x).flatten(2).transpose(1, 2), tokens @ as_linear.T + conv.bias, atol=1e-5,
                               rtol=1e-5)


def test_block_equations():
    """x + alpha_1 Attn(LN(x)(1 + gamma_1) + beta_1), then x + alpha_2 MLP(LN(x)(1 + gamma_2) + beta_2), with
    Attn written out by hand (softmax(q k^T / sqrt(d)) v per head, W_o)."""
    torch.manual_seed(0)
    model = perturb(DiT(**SMALL, num_classes=3), 0.2)
    block = model.blocks[0]
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    shift1, scale1, gate1, shift2, scale2, gate2 = (v[:, None] for v in block.modulation(c).chunk(6, dim=1))

    def ln(h):
        return (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)

    def attn(h):
        q, k, v = block.attn.qkv(h).chunk(3, dim=-1)
        heads = lambda z: z.view(2, 16, 4, 8).transpose(1, 2)  # noqa: E731
        w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 8 ** 0.5, dim=-1)
        return block.attn.proj((w @ heads(v)).transpose(1, 2).reshape(2, 16, 32))

    h = x + gate1 * attn(ln(x) * (1 + scale1) + shift1)
    mlp = block.mlp
    expected = h + gate2 * mlp[2](torch.nn.functional.gelu(mlp[0](ln(h) * (1 + scale2) + shift2), approximate="tanh"))
    torch.testing.assert_close(block(x, c), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_each_variant_reads_time_and_label(conditioning):
    torch.manual_seed(0)
    model = perturb(DiT(**SMALL, num_classes=5, conditioning=conditioning), 0.2)
    x, t = inputs()
    y = torch.tensor([0, 1, 2])
    out = model(x, t, y)
    assert out.shape == x.shape and out.abs().max() > 1e-3
    assert not torch.allclose(out, model(x, t, torch.tensor([3, 4, 5])), atol=1e-6)  # 5: the null label
    assert not torch.allclose(out, model(x, t.flip(0), y), atol=1e-6)
    assert torch.equal(model(x, t), model(x, t, torch.tensor([5, 5, 5])))  # no label = the null label
    out.square().sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_from_initialisation_the_output_layer_learns(conditioning):
    """The zero output layer gets a gradient at the first step for every variant (its input, the last
    LayerNorm's output, must not start at zero), and one step makes the output depend on the input."""
    torch.manual_seed(0)
    model = DiT(**SMALL, num_classes=5, conditioning=conditioning)
    x, t = inputs()
    (model(x, t, torch.tensor([0, 1, 2])) - x).square().mean().backward()
    assert model.final.linear.weight.grad.abs().max() > 1e-4
    with torch.no_grad():
        model.final.linear.weight -= 0.1 * model.final.linear.weight.grad
    out = model(x, t, torch.tensor([0, 1, 2]))
    assert (out - out.mean(0)).abs().max() > 1e-4


def test_padded_text_tokens_are_ignored_and_text_reaches_the_output():
    torch.manual_seed(0)
    for conditioning in ("adaln_zero", "cross_attention"):
        model = perturb(DiT(**SMALL, num_classes=3, conditioning=conditioning, context_dim=6), 0.2)
        x, t = inputs(B=2)
        ctx = torch.randn(2, 5, 6)
        mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
        padded = ctx.clone()
        padded[0, 3:] = 100.0  # garbage under the mask
        out = model(x, t, context=ctx, context_mask=mask)
        torch.testing.assert_close(model(x, t, context=padded, context_mask=mask), out)
        torch.testing.assert_close(model(x[:1], t[:1], context=ctx[:1, :3]), out[:1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x, t, context=ctx.flip(1), context_mask=mask), out, atol=1e-5)


def test_guidance_input_starts_as_no_input():
    torch.manual_seed(0)
    model = DiT(**SMALL, num_classes=3, guidance_embed=True)
    perturb(model.blocks, 0.2), perturb(model.final, 0.2)
    x, t = inputs()
    assert model.guidance_input and not DiT(**SMALL, num_classes=3).guidance_input
    torch.testing.assert_close(model(x, t, torch.tensor([0, 1, 2]), guidance=3.0), model(x, t, torch.tensor([0, 1, 2])))
    perturb(model.guidance_embed, 0.2)
    assert not torch.allclose(model(x, t, torch.tensor([0, 1, 2]), guidance=3.0), model(x, t, torch.tensor([0, 1, 2])))


def test_other_resolutions_run_with_their_own_positions():
    torch.manual_seed(0)
    model = perturb(DiT(**SMALL), 0.2)
    x = torch.randn(2, 2, 8, 12)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2) + sincos_2d(32, 4, 6)
    c = model.time_embed(torch.tensor([5.0, 7.0]))
    for block in model.blocks:
        tokens = block(tokens, c)
    torch.testing.assert_close(model(x, torch.tensor([5.0, 7.0])), unpatchify(model.final(tokens, c), 2, 4, 6))


def test_learned_sigma_doubles_the_output_channels():
    model = DiT(**SMALL, learn_sigma=True)
    assert model.out_channels == 4 and model(*inputs()).shape == (3, 4, 8, 8)
    assert DiT(**SMALL, out_channels=1, learn_sigma=True).out_channels == 2


def test_presets_and_registry():
    with torch.device("meta"):
        for name, (depth, width, heads) in (("dit_s_2", (12, 384, 6)), ("dit_b_4", (12, 768, 12)),
                                            ("dit_l_8", (24, 1024, 16)), ("dit_xl_2", (28, 1152, 16))):
            model = dl.models.build(name, in_channels=4, image_size=32)
            assert (len(model.blocks), model.pos_embed.shape[1], model.blocks[0].attn.heads) == (depth, width, heads)
            assert model.patch_size == int(name[-1])
    tiny = dl.models.build("dit_t_2", in_channels=1, image_size=8, num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    assert tiny(x, torch.arange(4)).shape == x.shape and sum(p.numel() for p in tiny.parameters()) < 1e6
    assert isinstance(dl.models.build("dit", **SMALL), DiT)


def test_models_stored_in_bf16_and_autocast_and_compile():
    torch.manual_seed(0)
    model = perturb(DiT(**SMALL, num_classes=3), 0.2).eval()
    x, t = inputs()
    y = torch.tensor([0, 1, 2])
    ref = model(x, t, y)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, t, y), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    half = model.to(torch.bfloat16)(x.bfloat16(), t, y)
    assert half.dtype == torch.bfloat16 and (half.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_samples_through_every_sampler_and_the_speed_layer():
    """The model convention: dl.sample with guidance (two calls per step), and dl.accel.accelerate around it."""
    torch.manual_seed(0)
    proc = dl.GaussianDiffusion(dl.schedules.cosine(100))
    model = perturb(DiT(in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4,
                        num_classes=3), 0.1).eval()
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for sampler in ("ddim", "ddpm", "dpmpp_2m", "heun"):
        out = dl.sample(model, proc, noise.shape, noise=noise, sampler=sampler, steps=4, cond=torch.tensor([0, 1, 2]), guidance=2.0)
        assert out.shape == noise.shape and torch.isfinite(out).all()
    fast = dl.accel.accelerate(model, precision="bf16")
    ref = dl.sample(model, proc, noise.shape, noise=noise, steps=4, cond=torch.tensor([0, 1, 2]), guidance=2.0)
    out = dl.sample(fast, proc, noise.shape, noise=noise, steps=4, cond=torch.tensor([0, 1, 2]), guidance=2.0)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.02 * ref.abs().max()


@pytest.mark.parametrize("kw, match", [
    (dict(image_size=10, patch_size=4), "image_size=10 is not divisible by patch_size=4"),
    (dict(hidden_size=30, num_heads=4), "divisible by num_heads"),
    (dict(conditioning="film"), "conditioning must be one of"),
    (dict(guidance_embed=True), "needs a class-conditional"),
    (dict(learn_sigma="yes"), "learn_sigma must be true or false"),
    (dict(mlp_ratio=0.01), "at least one unit"),
])
def test_bad_config_gives_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        DiT(**{**SMALL, **kw})


def test_bad_input_gives_clear_errors():
    model = DiT(**SMALL, num_classes=3)
    x, t = inputs()
    with pytest.raises(ValueError, match="H and W must be divisible by 2"):
        model(torch.randn(3, 2, 7, 8), t)
    with pytest.raises(ValueError, match=r"takes x of shape \[B, 2, H, W\]"):
        model(torch.randn(3, 1, 8, 8), t)
    with pytest.raises(ValueError, match="class labels must lie in 0 .. 2"):
        model(x, t, torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match="unconditional"):
        DiT(**SMALL)(x, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="takes no text context"):
        model(x, t, context=torch.randn(3, 4, 6))
    with pytest.raises(ValueError, match=r"pass context=\[B, L, 6\]"):
        DiT(**SMALL, context_dim=6)(x, t)
    with pytest.raises(ValueError, match="context_mask must be a bool tensor"):
        DiT(**SMALL, context_dim=6)(x, t, context=torch.randn(3, 4, 6), context_mask=[[True] * 4] * 3)
    with pytest.raises(ValueError, match="takes no guidance input"):
        model(x, t, guidance=2.0)
    with pytest.raises(ValueError, match="DiT size must be one of"):
        dit("M", 2)
