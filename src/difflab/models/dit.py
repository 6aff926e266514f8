"""The diffusion transformer, DiT (Peebles & Xie 2023), for pixels and latents.

    x [B, C, H, W] -> patchify (a p x p convolution with stride p: T = HW / p^2 tokens of width D)
      -> + fixed 2-D sin-cos positions -> N transformer blocks, conditioned on t and the label y
      -> final layer (LayerNorm, Linear to p^2 C_out) -> unpatchify -> [B, C_out, H, W]

How t and y enter the blocks is the paper's ablation (sec. 3.2, fig. 5), ``conditioning=``:

- ``"adaln_zero"`` (the paper's choice): c = emb(t) + emb(y) regresses, per block, a shift beta,
  scale gamma and gate alpha for the attention and the MLP,
      x <- x + alpha_1 Attn(LN(x) (1 + gamma_1) + beta_1),   x <- x + alpha_2 MLP(LN(x) (1 + gamma_2) + beta_2),
  the regression zero-initialised, so every block starts as the identity and the network's output at zero;
- ``"adaln"``: the same without the gates (alpha = 1), the regression initialised like any layer;
- ``"cross_attention"``: emb(t) and emb(y) as a sequence of two tokens that a cross-attention layer,
  after the self-attention of each block, attends to;
- ``"in_context"``: emb(t) and emb(y) as two more tokens of the sequence, dropped after the last block.

``context_dim`` adds text conditioning beside any of these (PixArt-alpha's design): each block
cross-attends to text-embedding tokens ``context`` [B, L, context_dim] (``context_mask`` [B, L]: True where
a token is real, False where it pads), with a zero-initialised output projection.

Labels follow the U-Net's convention: 0..K-1 and the null label K for classifier-free guidance.
Attention is ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU).
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import check_labels, is_int, positive_int
from .embeddings import GuidanceEmbedding, LabelEmbedding, TimestepEmbedding, batch_timesteps

__all__ = ["DiT", "DiTBlock", "dit", "sincos_2d", "patchify", "unpatchify", "DIT_SIZES", "CONDITIONING"]

CONDITIONING = ("adaln_zero", "adaln", "cross_attention", "in_context")

# (depth, width D, heads) of the paper's table 1; "T" is a CPU size for 8x8 digits and 14x14 MNIST.
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16), "T": (4, 96, 4)}


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """[sin(pos w_i), cos(pos w_i)], w_i = 10000^(-i / (dim/2)), i < dim/2: [len(pos), dim] (float64)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D positions of a grid_h x grid_w token grid (row-major), [grid_h grid_w, dim] float32:
    the first half of the channels encodes the column, the second half the row (DiT's and MAE's
    ``get_2d_sincos_pos_embed``, whose meshgrid puts w first)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1).float()


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p p C]: each token a p x p patch, row-major, channels last."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: Tensor, p: int, h: int, w: int) -> Tensor:
    """The inverse of :func:`patchify`: [B, h w, p p C] -> [B, C, h p, w p]."""
    B, _, n = tokens.shape
    C = n // (p * p)
    x = tokens.reshape(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, h * p, w * p)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (1 + gamma) + beta, one (gamma, beta) per sample broadcast over the tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """W_o softmax(q k^T / sqrt(d)) v per head; q from x, k and v from ``context`` (None: from x,
    self-attention, one fused q-k-v projection). ``mask`` [B, L]: True where a key may be attended."""

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None) -> None:
        super().__init__()
        self.heads = heads
        self.cross = context_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Tensor:
        B, T, D = x.shape
        h = self.heads
        if self.cross:
            q = self.q(x).view(B, T, h, D // h).transpose(1, 2)
            k, v = self.kv(context).view(B, context.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self.qkv(x).view(B, T, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        return self.proj(a.transpose(1, 2).reshape(B, T, D))


class DiTBlock(nn.Module):
    """One transformer block: self-attention, (cross-attention), MLP (GELU, tanh form), each residual;
    conditioned as ``conditioning`` says (module docstring)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, conditioning: str = "adaln_zero",
                 cross_dim: Optional[int] = None) -> None:
        super().__init__()
        self.adaptive = conditioning in ("adaln_zero", "adaln")
        self.gated = conditioning == "adaln_zero"
        # adaptive norms take their scale and shift from c; the other variants learn their own
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not self.adaptive, eps=1e-6)
        self.attn = Attention(dim, heads)
        if cross_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross_attn = Attention(dim, heads, context_dim=cross_dim)
        else:
            self.norm_cross = self.cross_attn = None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not self.adaptive, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # (beta_1, gamma_1, alpha_1, beta_2, gamma_2, alpha_2) from c; adaLN has no alphas
        self.modulation = (nn.Sequential(nn.SiLU(), nn.Linear(dim, (6 if self.gated else 4) * dim))
                           if self.adaptive else None)

    def forward(self, x: Tensor, c: Tensor, context: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        if self.adaptive:
            m = self.modulation(c).chunk(6 if self.gated else 4, dim=1)
            if self.gated:
                shift1, scale1, gate1, shift2, scale2, gate2 = m
            else:
                (shift1, scale1, shift2, scale2), gate1, gate2 = m, None, None
            a = self.attn(modulate(self.norm1(x), shift1, scale1))
            x = x + (a if gate1 is None else gate1[:, None] * a)
        else:
            x = x + self.attn(self.norm1(x))
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, mask)
        if self.adaptive:
            h = self.mlp(modulate(self.norm2(x), shift2, scale2))
            return x + (h if gate2 is None else gate2[:, None] * h)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """LN(x) (1 + gamma) + beta (adaptive variants; a learned LayerNorm otherwise), then a linear map
    to p^2 C_out per token, zero-initialised (with the regression of gamma, beta), so the output starts at
    zero. (A learned LayerNorm keeps its initial gamma = 1: were it zero too, no gradient would reach it
    or the linear map, whose input it is.)"""

    def __init__(self, dim: int, out: int, adaptive: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=not adaptive, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim)) if adaptive else None
        self.linear = nn.Linear(dim, out)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        x = self.norm(x)
        if self.modulation is not None:
            shift, scale = self.modulation(c).chunk(2, dim=1)
            x = modulate(x, shift, scale)
        return self.linear(x)


class DiT(nn.Module):
    """model(x_t, t, cond=None) -> [B, C_out, H, W]: the diffusion transformer (module docstring).

    Args:
        in_channels: channels of x_t (4 for Stable Diffusion's latents, 1 for digits).
        image_size: the training resolution H = W; its positions are precomputed (any H, W divisible
            by the patch still runs, with positions computed for its grid).
        patch_size: p; H and W must be divisible by it. T = HW / p^2 tokens.
        hidden_size, depth, num_heads, mlp_ratio: the transformer's width D, blocks, heads, MLP width / D.
        num_classes: K for a class-conditional model (labels 0..K-1 and the null label K); None: none.
        conditioning: one of ``CONDITIONING`` (module docstring).
        learn_sigma: twice the output channels (mean and variance interpolation of improved DDPM,
            the paper's setting); the samplers read the first half only once learned variance lands.
        out_channels: the output's channels (default in_channels, doubled by learn_sigma).
        context_dim: width of text-embedding tokens to cross-attend to (None: no text).
        guidance_embed: the guidance scale w as an input (guided distillation), added to c.
    """

    def __init__(
        self,
        in_channels: int = 4,
        image_size: Optional[int] = 32,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: Optional[int] = None,
        conditioning: str = "adaln_zero",
        learn_sigma: bool = False,
        out_channels: Optional[int] = None,
        context_dim: Optional[int] = None,
        guidance_embed: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = positive_int("in_channels", in_channels)
        self.patch_size = p = positive_int("patch_size", patch_size)
        hidden_size, depth, num_heads = (positive_int(k, v) for k, v in
                                         (("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads)))
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"DiT: hidden_size={hidden_size} must be divisible by num_heads={num_heads} and by 4 "
                             "(the 2-D positions split it in four sin-cos parts)")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or int(hidden_size * mlp_ratio) < 1:
            raise ValueError(f"DiT: mlp_ratio must be a positive number giving the MLP at least one unit "
                             f"(hidden_size * mlp_ratio >= 1; the paper: 4), got {mlp_ratio!r}")
        if conditioning not in CONDITIONING:
            raise ValueError(f"DiT: conditioning must be one of {', '.join(CONDITIONING)}, got {conditioning!r}")
        for name, flag in (("learn_sigma", learn_sigma), ("guidance_embed", guidance_embed)):
            if not isinstance(flag, bool):
                raise ValueError(f"DiT: {name} must be true or false, got {flag!r}")
        if num_classes is not None:
            num_classes = positive_int("num_classes", num_classes)
        if guidance_embed and num_classes is None:
            raise ValueError("DiT: guidance_embed needs a class-conditional model (num_classes=K): guidance "
                             "steers towards a label")
        if image_size is not None:
            image_size = positive_int("image_size", image_size)
            if image_size % p:
                raise ValueError(f"DiT: image_size={image_size} is not divisible by patch_size={p}; choose a patch "
                                 f"that divides it (e.g. {max(d for d in (1, 2, 4, 8) if image_size % d == 0)}) "
                                 "or pad the images")
        if context_dim is not None:
            context_dim = positive_int("context_dim", context_dim)
        out = in_channels if out_channels is None else positive_int("out_channels", out_channels)
        self.out_channels = 2 * out if learn_sigma else out
        self.image_size, self.num_classes, self.conditioning = image_size, num_classes, conditioning
        self.learn_sigma, self.context_dim = learn_sigma, context_dim

        D = hidden_size
        self.patch_embed = nn.Conv2d(in_channels, D, p, stride=p)
        grid = (image_size // p) if image_size else 0
        self.register_buffer("pos_embed", sincos_2d(D, grid, grid), persistent=False)
        self.time_embed = TimestepEmbedding(D, freq_dim=256)
        self.label_embed = LabelEmbedding(num_classes, D) if num_classes is not None else None
        self.guidance_embed = GuidanceEmbedding(D, freq_dim=256) if guidance_embed else None
        self.context_proj = nn.Linear(context_dim, D) if context_dim is not None else None
        cross = D if (conditioning == "cross_attention" or context_dim is not None) else None
        self.blocks = nn.ModuleList(DiTBlock(D, num_heads, mlp_ratio, conditioning, cross) for _ in range(depth))
        self.final = FinalLayer(D, p * p * self.out_channels, adaptive=conditioning in ("adaln_zero", "adaln"))
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linear layers (the patch embedding as one), zero biases,
        N(0, 0.02) label and time embeddings; zero adaLN-Zero regressions, cross-attention outputs and
        final layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        for emb in (self.time_embed, self.guidance_embed):
            if emb is not None:
                nn.init.normal_(emb[1].weight, std=0.02)
                nn.init.normal_(emb[3].weight, std=0.02)
        zero = [self.final.linear] + ([self.final.modulation[-1]] if self.final.modulation is not None else [])
        if self.guidance_embed is not None:
            zero.append(self.guidance_embed[3])  # w starts as no input (GuidanceEmbedding's rule)
        for block in self.blocks:
            if block.gated:
                zero.append(block.modulation[-1])
            if block.cross_attn is not None:
                zero.append(block.cross_attn.proj)
        for m in zero:
            for param in m.parameters():
                nn.init.zeros_(param)

    @property
    def guidance_input(self) -> bool:
        """Whether the guidance scale is an input of the network (``guidance_embed=True``)."""
        return self.guidance_embed is not None

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"DiT(in_channels={self.in_channels}) takes x of shape [B, {self.in_channels}, H, W], "
                             f"got {got}")
        p = self.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"this DiT has patch_size={p}, so H and W must be divisible by {p}; got "
                             f"{x.shape[2]}x{x.shape[3]} (pad or resize the images, or use another patch size)")

    def _positions(self, h: int, w: int, like: Tensor) -> Tensor:
        if self.pos_embed.shape[0] == h * w and h == w:
            return self.pos_embed.to(like.dtype)
        return sincos_2d(self.pos_embed.shape[-1], h, w).to(like.device, like.dtype)

    def _conditions(self, t: Tensor, cond, guidance, x: Tensor) -> tuple[Tensor, Tensor]:
        """(c = emb(t) + emb(y) + emb(w), the condition tokens [B, 1 or 2, D]: emb(t) (+ emb(w)), emb(y))."""
        te = self.time_embed(t)
        if self.guidance_embed is not None:
            te = te + self.guidance_embed(guidance, x)
        elif guidance is not None:
            raise ValueError("this DiT takes no guidance input (build it with guidance_embed=True); guide it "
                             "with dl.sample(..., guidance=w), which calls it twice per step")
        if self.label_embed is None:
            if cond is not None:
                raise ValueError("this DiT is unconditional (num_classes=None) but got labels; build it with "
                                 "num_classes=K to use class labels")
            return te, te[:, None]
        if cond is None:  # no label: the null label K
            cond = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        else:  # integer labels [B] in 0 .. num_classes (range checked on the CPU only: no sync)
            cond = check_labels(self, cond, x.shape[0])
        ye = self.label_embed(cond)
        return te + ye, torch.stack([te, ye], dim=1)

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None, guidance=None, *,
                context: Optional[Tensor] = None, context_mask: Optional[Tensor] = None) -> Tensor:
        self._check(x)
        t = batch_timesteps(t, x)
        c, cond_tokens = self._conditions(t, cond, guidance, x)
        keys, mask = self._keys(cond_tokens, context, context_mask, x.shape[0])
        p = self.patch_size
        h, w = x.shape[2] // p, x.shape[3] // p
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, T, D]
        tokens = tokens + self._positions(h, w, tokens)
        extra = cond_tokens.shape[1] if self.conditioning == "in_context" else 0
        if extra:
            tokens = torch.cat([cond_tokens.to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens, c, keys, mask)
        return unpatchify(self.final(tokens[:, extra:], c), p, h, w)

    def _keys(self, cond_tokens: Tensor, context, context_mask, batch: int):
        """What the cross-attention layers attend to, and its mask: the condition tokens (the
        cross-attention variant), then the projected text tokens (``context_dim``)."""
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("this DiT takes no text context (build it with context_dim=...)")
            return (cond_tokens, None) if self.conditioning == "cross_attention" else (None, None)
        if not isinstance(context, Tensor) or context.ndim != 3 or context.shape[0] != batch \
                or context.shape[2] != self.context_dim:
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"this DiT cross-attends to text: pass context=[B, L, {self.context_dim}] (B = {batch}) "
                             f"token embeddings, got {got}")
        keys = self.context_proj(context)
        if context_mask is not None and (not isinstance(context_mask, Tensor) or context_mask.dtype != torch.bool
                                         or context_mask.shape != context.shape[:2]):
            got = (f"{context_mask.dtype} {tuple(context_mask.shape)}" if isinstance(context_mask, Tensor)
                   else type(context_mask).__name__)
            raise ValueError(f"context_mask must be a bool tensor [B, L] = {list(context.shape[:2])} (True: a real "
                             f"token), got {got}")
        if self.conditioning == "cross_attention":
            keys = torch.cat([cond_tokens.to(keys.dtype), keys], dim=1)
            if context_mask is not None:
                context_mask = torch.cat([context_mask.new_ones(batch, cond_tokens.shape[1]), context_mask], dim=1)
        return keys, context_mask


def dit(size: str = "S", patch_size: int = 2, **overrides) -> DiT:
    """A DiT of the paper's table 1 by size ("S", "B", "L", "XL"; "T" a CPU size) and patch (2, 4, 8):
    ``dit("XL", 2, num_classes=1000, learn_sigma=True)`` is DiT-XL/2 (675M parameters on 32x32x4 latents)."""
    if size not in DIT_SIZES:
        raise ValueError(f"DiT size must be one of {', '.join(DIT_SIZES)}, got {size!r}")
    if not is_int(patch_size):
        raise ValueError(f"patch_size must be an integer (2, 4 or 8 in the paper), got {patch_size!r}")
    depth, width, heads = DIT_SIZES[size]
    return DiT(**{"patch_size": patch_size, "depth": depth, "hidden_size": width, "num_heads": heads, **overrides})


def presets() -> dict:
    """Registry names of the presets: ``dit_s_2`` .. ``dit_xl_8`` and the CPU size ``dit_t_1``, ``dit_t_2``, ``dit_t_4``."""
    out = {f"dit_{s.lower()}_{p}": partial(dit, s, p) for s in ("S", "B", "L", "XL") for p in (2, 4, 8)}
    out.update({f"dit_t_{p}": partial(dit, "T", p) for p in (1, 2, 4)})
    return out
