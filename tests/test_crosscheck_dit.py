"""difflab's DiT against diffusers' ``DiTTransformer2DModel``, an independent implementation of
Peebles & Xie (2023), with the same weights.

A small class-conditional DiT (4 channels, 16x16, patch 2, width 64, 2 blocks, 4 heads, 10
classes; learned sigma on and off) and the diffusers model in the same configuration: difflab's
weights, its zero-initialised layers first given random values (tests/networks.py ``perturb``)
so that the gates, the final layer and every modulation carry signal, are copied into diffusers'
model by ``diffusers_state_dict``, and both are run on the same random x, timesteps (integer and
fractional) and labels (the null label among them). The outputs agree to 1e-5 (on this CPU
bit-for-bit: the same operations in the same order).

The mapping (difflab -> diffusers):

- patch_embed -> pos_embed.proj (the same p x p convolution with stride p);
- time_embed.1 / .3 -> timestep_embedder.linear_1 / linear_2, label_embed -> class_embedder.
  embedding_table (K + 1 rows, the null label K last in both), copied into EVERY block's
  ``norm1.emb``: diffusers gives each block its own time and label embedders (and its final layer
  reads block 0's), where difflab, like the paper's code, computes c = emb(t) + emb(y) once;
- blocks.i.modulation.1 -> norm1.linear (AdaLayerNormZero: the same chunks, in the same order,
  shift, scale, gate for the attention, then for the MLP);
- attn.qkv (one fused Linear, output rows q | k | v) -> attn1.to_q, to_k, to_v (its thirds);
  attn.proj -> attn1.to_out.0; mlp.0 / mlp.2 -> ff.net.0.proj / ff.net.2 (GELU, tanh form);
- final.modulation.1 -> proj_out_1 (shift, scale), final.linear -> proj_out_2; both unpatchify
  tokens as (h, w, p, p, C), so the output channels need no permutation; with learned sigma both
  output 2C channels, the mean's C first (diffusers' out_channels = 2 in_channels; DiTPipeline
  keeps the first in_channels).

Conventions that differ, each shown below by a test:

1. Time features. diffusers' DiT embeds t with ``Timesteps(256, flip_sin_to_cos=True,
   downscale_freq_shift=1)``: [cos, sin](t w'_i), w'_i = 10000^(-i / (128 - 1)); difflab (and the
   paper's code in its frequencies) uses [sin, cos](t w_i), w_i = 10000^(-i / 128). Permuting the
   first time layer's columns cannot make up for it -- the frequencies themselves differ (only
   w_0 = w'_0 = 1) -- so the comparison replaces diffusers' ``time_proj`` in every block by
   diffusers' own ``Timesteps(256, flip_sin_to_cos=False, downscale_freq_shift=0)``, which computes
   difflab's features; the rest of diffusers' model runs as shipped.
2. Norm epsilon. diffusers' blocks normalise before the MLP with ``norm_eps`` (default 1e-5);
   the paper's code and difflab use 1e-6 everywhere (so does diffusers' AdaLayerNormZero). The
   diffusers model is built with ``norm_eps=1e-6``.
3. Positions at another resolution. At the training grid both use the same fixed 2-D sin-cos
   table (the first half of the channels encodes the column). On another grid diffusers'
   PatchEmbed interpolates, positions i * base / grid (PixArt's rule; base = the training grid);
   difflab extends the table, positions i (the paper's code has one size only). The models agree
   there when diffusers' ``base_size`` is set to the new grid.
4. Label dropout. diffusers drops labels inside the model in training mode (class_dropout_prob
   0.1); difflab's trainer drops them before the network. Compared in eval mode.
"""

import pytest
import torch
from networks import perturb

import difflab as dl
from difflab.models.dit import DiT, sincos_1d

diffusers = pytest.importorskip("diffusers")  # the test extra: pip install -e ".[test]"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

from diffusers import DiTTransformer2DModel  # noqa: E402
from diffusers.models.embeddings import Timesteps, get_2d_sincos_pos_embed  # noqa: E402

TOL = 1e-5
K, WIDTH, HEADS, DEPTH, SIZE, PATCH, FREQ = 10, 64, 4, 2, 16, 2, 256


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def diffusers_state_dict(ours: DiT) -> dict:
    """difflab's weights under diffusers' names (the module docstring's mapping)."""
    s = ours.state_dict()
    out = {"pos_embed.proj.weight": s["patch_embed.weight"], "pos_embed.proj.bias": s["patch_embed.bias"]}
    for i in range(len(ours.blocks)):
        theirs, mine = f"transformer_blocks.{i}.", f"blocks.{i}."
        out[theirs + "norm1.emb.class_embedder.embedding_table.weight"] = s["label_embed.weight"]
        for w in ("weight", "bias"):
            out[theirs + f"norm1.emb.timestep_embedder.linear_1.{w}"] = s[f"time_embed.1.{w}"]
            out[theirs + f"norm1.emb.timestep_embedder.linear_2.{w}"] = s[f"time_embed.3.{w}"]
            out[theirs + f"norm1.linear.{w}"] = s[mine + f"modulation.1.{w}"]
            q, k, v = s[mine + f"attn.qkv.{w}"].chunk(3)
            out[theirs + f"attn1.to_q.{w}"], out[theirs + f"attn1.to_k.{w}"], out[theirs + f"attn1.to_v.{w}"] = q, k, v
            out[theirs + f"attn1.to_out.0.{w}"] = s[mine + f"attn.proj.{w}"]
            out[theirs + f"ff.net.0.proj.{w}"] = s[mine + f"mlp.0.{w}"]
            out[theirs + f"ff.net.2.{w}"] = s[mine + f"mlp.2.{w}"]
    for w in ("weight", "bias"):
        out[f"proj_out_1.{w}"] = s[f"final.modulation.1.{w}"]
        out[f"proj_out_2.{w}"] = s[f"final.linear.{w}"]
    return out


def difflab_time_features(model: DiTTransformer2DModel) -> None:
    """Every block's time projection made difflab's [sin, cos] at frequencies 10000^(-i / 128)
    (convention 1 of the module docstring), with diffusers' own Timesteps module."""
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj = Timesteps(FREQ, flip_sin_to_cos=False, downscale_freq_shift=0)


def build(learn_sigma: bool, same_time_features: bool = True):
    torch.manual_seed(0)
    ours = perturb(DiT(in_channels=4, image_size=SIZE, patch_size=PATCH, hidden_size=WIDTH, depth=DEPTH,
                       num_heads=HEADS, num_classes=K, learn_sigma=learn_sigma)).eval()
    theirs = DiTTransformer2DModel(
        num_attention_heads=HEADS, attention_head_dim=WIDTH // HEADS, in_channels=4,
        out_channels=ours.out_channels, num_layers=DEPTH, sample_size=SIZE, patch_size=PATCH,
        num_embeds_ada_norm=K, norm_eps=1e-6,
    ).eval()
    theirs.load_state_dict(diffusers_state_dict(ours), strict=True)
    if same_time_features:
        difflab_time_features(theirs)
    return ours, theirs


def inputs(size: int = SIZE):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, size, size, generator=g)
    t = torch.tensor([0.0, 1.0, 37.0, 500.0, 999.0, 250.5])  # integer timesteps and a fractional one
    y = torch.tensor([0, 3, K - 1, K, K, 5])  # the null label K twice
    return x, t, y


@torch.no_grad()
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_dit_matches_diffusers(learn_sigma):
    ours, theirs = build(learn_sigma)
    x, t, y = inputs()
    a = ours(x, t, y)
    b = theirs(x, t, class_labels=y).sample
    assert a.shape == b.shape == (6, 4 * (1 + learn_sigma), SIZE, SIZE)
    assert max_diff(a, b) < TOL
    # not a match of near-zero outputs: every part of the input moves the output well past TOL
    assert a.abs().mean() > 0.05
    assert max_diff(ours(x, t, torch.full_like(y, K)), a) > 1e3 * TOL  # the labels
    assert max_diff(ours(x, t + 100, y), a) > 1e3 * TOL  # the time
    if learn_sigma:  # both halves (mean, variance) carry signal and agree
        assert a[:, 4:].abs().mean() > 0.05 and max_diff(a[:, 4:], b[:, 4:]) < TOL


def test_time_features_differ_by_more_than_a_permutation():
    """Convention 1: diffusers' DiT time features are [cos, sin] at frequencies 10000^(-i / 127),
    difflab's [sin, cos] at 10000^(-i / 128) (diffusers' Timesteps with shift 0 and no flip computes
    them); swapping the halves of the first time layer's columns leaves the models apart."""
    t = torch.tensor([0.0, 1.0, 37.0, 500.0, 999.0, 250.5])
    half = FREQ // 2
    i = torch.arange(half, dtype=torch.float64)
    shifted = t.double()[:, None] * torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) * i / (half - 1))
    theirs_default = Timesteps(FREQ, flip_sin_to_cos=True, downscale_freq_shift=1)(t)
    assert max_diff(theirs_default, torch.cat([shifted.cos(), shifted.sin()], 1)) < 1e-3  # float32 phases up to 999
    ours = dl.models.SinusoidalEmbedding(FREQ)(t)
    assert max_diff(ours, Timesteps(FREQ, flip_sin_to_cos=False, downscale_freq_shift=0)(t)) < 1e-6

    x, t, y = inputs()
    with torch.no_grad():
        model, theirs = build(False, same_time_features=False)
        a = model(x, t, y)
        assert max_diff(theirs(x, t, class_labels=y).sample, a) > 100 * TOL  # as shipped: apart
        for block in theirs.transformer_blocks:  # cos-first -> sin-first columns: still apart
            lin = block.norm1.emb.timestep_embedder.linear_1
            lin.weight.copy_(torch.cat([lin.weight[:, half:], lin.weight[:, :half]], 1))
        assert max_diff(theirs(x, t, class_labels=y).sample, a) > 100 * TOL


@torch.no_grad()
def test_positions():
    """Convention 3: the same table at the training grid; on another grid diffusers interpolates
    (positions i base / grid) and difflab extends (positions i); equal outputs with base = grid."""
    ours, theirs = build(False)
    grid = SIZE // PATCH
    assert max_diff(theirs.pos_embed.pos_embed[0], ours.pos_embed) < 1e-6
    # on a 4 x 4 grid (8 x 8 inputs): diffusers' positions are 2 i, the column in the first half
    small = grid // 2
    rows, cols = torch.meshgrid(torch.arange(small), torch.arange(small), indexing="ij")
    scale = grid / small
    interpolated = torch.cat([sincos_1d(WIDTH // 2, cols.flatten() * scale),
                              sincos_1d(WIDTH // 2, rows.flatten() * scale)], dim=1)
    theirs_small = get_2d_sincos_pos_embed(WIDTH, small, base_size=grid, interpolation_scale=1.0)
    assert max_diff(theirs_small, interpolated) < 1e-6
    x, t, y = inputs(size=SIZE // 2)
    a = ours(x, t, y)
    assert max_diff(theirs(x, t, class_labels=y).sample, a) > 100 * TOL
    theirs.pos_embed.base_size = small  # diffusers' positions i: difflab's
    assert max_diff(theirs(x, t, class_labels=y).sample, a) < TOL
