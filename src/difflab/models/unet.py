"""The U-Net of DDPM (Ho et al. 2020, App. B) with the options of ADM (Dhariwal & Nichol 2021, Sec. 3).

    x -> conv_in -> [levels: ResBlock (+ attention) x num_res_blocks, downsample] -> middle
      -> [levels reversed: concat skip, ResBlock (+ attention) x (num_res_blocks + 1), upsample]
      -> GroupNorm, SiLU, conv_out

Level i works at resolution H / 2^i with ``channels * channel_mult[i]`` channels. The time
t enters through a sinusoidal embedding and an MLP (continuous in t, so long and float t
embed alike); a class label, when the model is conditional, adds its embedding to the time
embedding. Every residual block reads that embedding (additively as in DDPM, or as a
GroupNorm scale and shift as in ADM's ``use_scale_shift_norm``).

Text (latent diffusion, Rombach et al. 2022): with ``context_dim`` the network also takes token
embeddings ``context`` [B, L, context_dim] and their padding mask, and a cross-attention block
(:class:`CrossAttentionBlock`, the SpatialTransformer of latent diffusion reduced to its
cross-attention) follows the residual block (and its self-attention) of each step of the chosen
levels, on the way down and up; one more follows the middle's self-attention.

Initialisation (ADM's ``zero_module``): the final convolution, the second convolution of
every residual block and the output projection of every attention block (self- and
cross-attention) start at zero, so each block starts as the identity (or its 1x1 skip
projection), the network's output starts at zero, and the cross-attention of a text-conditioned
network starts as the identity (its pooled text embedding, ``pooled_context``, starts as a label
embedding does: the residual blocks read it from the first step).
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import is_int, is_real, positive_int
from .embeddings import GuidanceEmbedding, LabelEmbedding, TimestepEmbedding, batch_timesteps
from .norm import GroupNorm

__all__ = [
    "UNet",
    "ResBlock",
    "AttentionBlock",
    "CrossAttentionBlock",
    "Downsample",
    "Upsample",
    "unhooked",
    "unet_cifar10",
    "unet_mnist",
    "unet_tiny",
]

RESAMPLE_MODES = ("conv", "interp", "resblock")


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _down(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2)


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def unhooked(module: nn.Module, cls: type) -> bool:
    """``module`` is exactly ``cls`` and no hook would see its call (its own forward or backward
    hooks, or global module hooks): computing its function another way is then unobservable."""
    return type(module) is cls and not (
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
        or nn.modules.module._global_backward_hooks or nn.modules.module._global_backward_pre_hooks)


class ResBlock(nn.Module):
    """out = skip(x) + conv2(dropout(SiLU(norm2(conv1(SiLU(norm1(x))), e))))   (DDPM App. B; ADM Sec. 3)

    The embedding e = W_e SiLU(emb) conditions the block either additively (DDPM),
    norm2(h + e), or as a scale and shift (ADM's ``use_scale_shift_norm``),
    norm2(h) * (1 + s) + b with [s, b] = e. ``skip`` is a 1x1 convolution when the channel
    count changes, else the identity. ``resample="down" | "up"`` resamples h and x inside the
    block (ADM's ``resblock_updown``, from BigGAN). conv2 is zero-initialised, so the block
    starts as skip(x).

    ``forward(x, emb_act)`` takes the already activated embedding SiLU(emb), shared by all blocks;
    or ``forward(x, e=...)`` the block's projection :meth:`embedding` computed already (the U-Net
    computes every block's in one matrix product). ``norm_eps`` is both norms' eps.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        norm_groups: int = 32,
        use_scale_shift_norm: bool = False,
        resample: Optional[str] = None,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        norm_groups = positive_int("norm_groups", norm_groups)
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.norm1 = GroupNorm(norm_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels * (2 if use_scale_shift_norm else 1))
        self.norm2 = GroupNorm(norm_groups, out_channels, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def embedding_bias(self) -> Tensor:
        """The bias of :meth:`embedding`: emb_proj's, plus conv1's in the additive form."""
        if self.use_scale_shift_norm:
            return self.emb_proj.bias
        return self.emb_proj.bias + self.conv1.bias

    def embedding(self, emb_act: Tensor) -> Tensor:
        """e = W_e SiLU(emb) + b_e, [B, C] (scale-shift: [B, 2C] = [s, b]). In the additive form
        conv1's bias joins b_e: norm2(conv1(h) + e) needs one [B, C] add, not a pass over h."""
        e = self.emb_proj(emb_act)
        return e if self.use_scale_shift_norm else e + self.conv1.bias.to(e.dtype)

    def conv1_up(self, h: Tensor, bias: Optional[Tensor]) -> Tensor:
        """conv1(nearest_2x(h)) with ``bias`` (conv1's, or None where it joined the embedding);
        the speed layer swaps in folded forms of the same function (:mod:`difflab.accel.upsample`)."""
        return F.conv2d(_up(h), self.conv1.weight, bias, padding=1)

    def forward(self, x: Tensor, emb_act: Optional[Tensor] = None, *, e: Optional[Tensor] = None) -> Tensor:
        if (emb_act is None) == (e is None):
            raise ValueError("ResBlock takes the activated embedding emb_act or its projection e (one of them)")
        h = self.norm1(x, silu=True)
        up = self.resample == "up"  # conv1(up(h)) by conv1_up; skip(up(x)) = up(skip(x))
        if self.resample == "down":
            h, x = _down(h), _down(x)
        e = (self.embedding(emb_act) if e is None else e)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.conv1_up(h, self.conv1.bias) if up else self.conv1(h)
            h = self.norm2(h, scale=scale, shift=shift, silu=True)  # SiLU(norm2(h) (1 + s) + b)
        else:
            # conv1's bias is in e (embedding_bias), not a pass of its own over h (on a GPU,
            # torch.compile adds a convolution's bias in a kernel that a fused norm cannot join)
            h = (self.conv1_up(h, None) if up
                 else F.conv2d(h, self.conv1.weight, None, self.conv1.stride, self.conv1.padding))
            h = self.norm2(h, add=e, silu=True)  # SiLU(norm2(conv1(h) + e))
        h = self.conv2(self.dropout(h))
        skip = self.skip(x)  # a 1x1 convolution (or nothing): it commutes with nearest upsampling
        return (_up(skip) if up else skip) + h


class AttentionBlock(nn.Module):
    """x + W_o MultiHead(norm(x)) over the H*W positions (Vaswani et al. 2017; DDPM uses 1 head).

    softmax(q k^T / sqrt(d)) v per head by ``F.scaled_dot_product_attention`` (flash / memory
    efficient kernels on a GPU). The positions are the tokens: for a channels_last input the
    [B, H*W, C] token matrix is a view, no copy. W_o is zero-initialised (ADM). ``norm_eps``: the
    GroupNorm's eps.
    """

    def __init__(self, channels: int, num_heads: int = 1, norm_groups: int = 32, norm_eps: float = 1e-5) -> None:
        super().__init__()
        norm_groups = positive_int("norm_groups", norm_groups)
        self.num_heads = num_heads
        self.norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        qkv = self.qkv(tokens).view(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, HW, d]
        a = F.scaled_dot_product_attention(q, k, v)
        a = self.proj(a.transpose(1, 2).reshape(B, H * W, C))
        return x + a.transpose(1, 2).reshape(B, C, H, W)


class CrossAttentionBlock(nn.Module):
    """x + W_o MultiHead(q = W_q GN(x), k = W_k c, v = W_v c): the image positions attend to text tokens.

    Latent diffusion's SpatialTransformer (Rombach et al. 2022, Sec. 3.3) reduced to its
    cross-attention: the H*W positions of GN(x) are the queries, the L context tokens c
    [B, L, context_dim] (a text encoder's output) the keys and values, each by its own linear map
    to the block's C channels. Per head (d = C / heads),

        softmax(q k^T / sqrt(d) + M) v,   M[b, j] = 0 where mask[b, j] (a real token), -inf where it pads,

    so padding tokens get weight exactly zero and their values cannot reach the output
    (``F.scaled_dot_product_attention`` with the boolean mask broadcast [B, 1, 1, L]). A row of
    the mask must hold at least one True (the text encoder's start token): an all-padding row
    is 0/0, NaN. W_q, W_k, W_v have no bias, as in latent diffusion: a key bias adds q . b_k to
    every logit of a row, which the softmax cancels, and a value bias adds b_v to every output
    (the weights sum to 1), which W_o's bias already can. W_o (``proj_out``) is zero-initialised,
    so the block starts as the identity and a U-Net with text starts as the one without.
    ``forward(x, context, mask=None)``: mask [B, L] bool, None where no token pads.
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int = 1, norm_groups: int = 32,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        channels, context_dim = positive_int("channels", channels), positive_int("context_dim", context_dim)
        norm_groups, num_heads = positive_int("norm_groups", norm_groups), positive_int("num_heads", num_heads)
        if channels % num_heads:
            raise ValueError(f"CrossAttentionBlock: num_heads={num_heads} must divide channels={channels}")
        self.num_heads, self.context_dim = num_heads, context_dim
        self.norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.q = nn.Linear(channels, channels, bias=False)
        self.k = nn.Linear(context_dim, channels, bias=False)
        self.v = nn.Linear(context_dim, channels, bias=False)
        self.proj_out = _zero(nn.Linear(channels, channels))

    def forward(self, x: Tensor, context: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        if not isinstance(context, Tensor):  # (the U-Net checks shapes, dtypes and the mask once per call)
            raise ValueError(f"CrossAttentionBlock attends to text: pass context=[B, L, {self.context_dim}] token "
                             f"embeddings, got {type(context).__name__}")
        B, C, H, W = x.shape
        L, heads = context.shape[1], self.num_heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]; a view of channels_last memory
        q = self.q(tokens).view(B, H * W, heads, C // heads).transpose(1, 2)  # [B, heads, HW, d]
        k = self.k(context).view(B, L, heads, C // heads).transpose(1, 2)  # [B, heads, L, d]
        v = self.v(context).view(B, L, heads, C // heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        a = self.proj_out(a.transpose(1, 2).reshape(B, H * W, C))
        return x + a.transpose(1, 2).reshape(B, C, H, W)


def check_context(context, context_mask, x: Tensor, context_dim: int,
                  model: str = "UNet") -> tuple[Tensor, Optional[Tensor]]:
    """(context in x's dtype, context_mask) for a network that cross-attends to text, or ValueError
    naming the problem: context [B, L >= 1, context_dim] floating-point token embeddings (not token
    ids) on x's device; context_mask None or bool [B, L] (True: a real token) with a True in every row
    (an all-padding row would make the attention 0/0). The rows are read on the CPU only: on an
    accelerator the read would wait for the device (as :func:`~difflab.validation.check_labels`)."""
    B = x.shape[0]
    if not isinstance(context, Tensor) or context.ndim != 3 or context.shape[0] != B \
            or context.shape[2] != context_dim or context.shape[1] < 1:
        got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
        raise ValueError(f"this {model} cross-attends to text: pass context=[B, L, {context_dim}] (B = {B}, L >= 1) "
                         f"token embeddings, got {got}")
    if not context.is_floating_point():
        raise ValueError(f"context must hold floating-point token embeddings (the text encoder's output), got "
                         f"{context.dtype}: token ids go through the text encoder first")
    if context.device != x.device:
        raise ValueError(f"context is on {context.device} but x on {x.device}: move it with context.to(x.device)")
    if context_mask is not None:
        if not isinstance(context_mask, Tensor) or context_mask.dtype != torch.bool \
                or context_mask.shape != context.shape[:2]:
            got = (f"{context_mask.dtype} {tuple(context_mask.shape)}" if isinstance(context_mask, Tensor)
                   else type(context_mask).__name__)
            raise ValueError(f"context_mask must be a bool tensor [B, L] = {list(context.shape[:2])} (True: a real "
                             f"token, False: padding; an integer attention mask m as m.bool()), got {got}")
        if context_mask.device != x.device:
            raise ValueError(f"context_mask is on {context_mask.device} but x on {x.device}: move it with "
                             f"context_mask.to(x.device)")
        if context_mask.device.type == "cpu" and not torch.compiler.is_compiling():
            empty = (~context_mask.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"context_mask rows {empty[:8]} mask every token: each text needs at least one real "
                                 "token (the text encoder's start token; the empty caption is that token alone)")
    return context.to(x.dtype), context_mask


DOWNSAMPLE_PADDINGS = (1, 0)


def _check_downsample_padding(padding) -> None:
    if not is_int(padding) or padding not in DOWNSAMPLE_PADDINGS:
        raise ValueError(f"downsample_padding must be 1 (zeros on every side: difflab's default) or 0 (zeros on the "
                         f"right and bottom only: the original DDPM / TensorFlow code), got {padding!r}")


class Downsample(nn.Module):
    """Halve H and W: a 3x3 convolution with stride 2 (``with_conv``), else 2x2 average pooling.

    ``padding`` places the convolution's zeros on an even H x W input (output H/2 x W/2 either way):

    - 1 (difflab's default, as in ADM): one row and column of zeros on every side; output
      pixel (i, j) reads input rows and columns 2i-1 .. 2i+1, 2j-1 .. 2j+1;
    - 0 (the original DDPM code, TensorFlow's "SAME" for stride 2, diffusers'
      ``downsample_padding=0``): zeros on the right and bottom only, ``F.pad(x, (0, 1, 0, 1))`` then
      no padding; output pixel (i, j) reads rows and columns 2i .. 2i+2, 2j .. 2j+2. TF splits
      the padding a stride needs as (total // 2, total - total // 2), here (0, 1).

    The two differ by a one-pixel shift of the sampling grid: another function of the same weights.
    """

    def __init__(self, channels: int, with_conv: bool = True, padding: int = 1) -> None:
        super().__init__()
        _check_downsample_padding(padding)
        self.padding = int(padding)
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=self.padding) if with_conv else None

    def forward(self, x: Tensor, emb_act: Optional[Tensor] = None) -> Tensor:
        if self.conv is None:
            return _down(x)
        if self.padding == 0:  # TF "SAME": the stride's one row and column of zeros after the image
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 convolution (``with_conv``).
    The speed layer swaps in folded forms of the same function (:mod:`difflab.accel.upsample`)."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor, emb_act: Optional[Tensor] = None) -> Tensor:
        if self.conv is None:
            return _up(x)
        return self.conv(_up(x))


class _ResAttn(nn.Module):
    """A residual block, optionally followed by self-attention, then optionally by cross-attention
    to text (one step of a level).

    On the way up, each of these takes the concatenation of h and one skip connection.
    """

    def __init__(self, res: ResBlock, attn: Optional[AttentionBlock],
                 cross: Optional[CrossAttentionBlock] = None) -> None:
        super().__init__()
        self.res, self.attn, self.cross = res, attn, cross

    def forward(self, h: Tensor, emb_act: Optional[Tensor] = None, *, e: Optional[Tensor] = None,
                context: Optional[Tensor] = None, context_mask: Optional[Tensor] = None) -> Tensor:
        h = self.res(h, emb_act, e=e)
        if self.attn is not None:
            h = self.attn(h)
        return self.cross(h, context, context_mask) if _cross_attends(self) else h


def _cross_attends(step: nn.Module) -> bool:
    """A step of the down or up path with a cross-attention block (it takes the text context; a step
    unpickled from before text has no ``cross`` attribute)."""
    return isinstance(getattr(step, "cross", None), CrossAttentionBlock)


def _takes_embedding(step: nn.Module) -> bool:
    """A step of the down or up path that is (or holds) a residual block, not a plain resampler."""
    return isinstance(step, (_ResAttn, ResBlock))


def _plain(value):
    """An argument with its numpy integers as Python ints (lists and tuples alike), so the
    recorded config serializes; anything else as it is (the checks refuse what they must)."""
    if is_int(value):
        return int(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _int_sequence(name: str, value, example: str) -> tuple:
    """A list or tuple as a tuple (its entries are checked by the caller); anything else is refused."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of integers, e.g. {example}, got {value!r}")
    return tuple(value)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


@torch.compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    """torch.amp.is_autocast_available, a constant to torch.compile: Dynamo of torch 2.11 cannot
    trace the C function behind it (a graph break, an error with fullgraph=True)."""
    return torch.amp.is_autocast_available(device_type)


class UNet(nn.Module):
    """model(x_t, t, cond=None) -> x_t's shape: the DDPM / ADM U-Net.

    Args:
        in_channels: channels of x_t (add the low-resolution image's channels for a
            super-resolution model).
        out_channels: channels of the output; defaults to ``in_channels``.
        channels: base width; level i has ``channels * channel_mult[i]`` channels.
        channel_mult: one multiplier per level; H and W must be divisible by 2^(levels - 1).
        num_res_blocks: residual blocks per level on the way down (an int, or one per level);
            the way up has one more per level, which takes the skip of the downsampling step.
        attention_levels: indices of the levels (0 = full resolution) that get self-attention
            after each residual block (DDPM on CIFAR-10: (1,), i.e. 16x16); None: none.
        attention_resolutions: alternatively, the spatial sizes that get attention (DDPM: 16
            on 32x32 CIFAR-10); needs ``image_size``; when given, replaces attention_levels.
        image_size: the training resolution, recorded for samplers and used to place
            ``attention_resolutions``; any size divisible by 2^(levels - 1) still runs.
        dropout: dropout before the second convolution of each residual block.
        num_heads, head_dim: attention heads; ``head_dim`` (ADM's num_head_channels), when
            given, sets heads = channels // head_dim at each resolution instead.
        use_scale_shift_norm: ADM's scale-shift conditioning instead of DDPM's additive one.
        resample: "conv" (strided conv down, nearest + conv up: DDPM), "interp" (average pool /
            nearest, no parameters) or "resblock" (residual blocks that resample: ADM).
        mid_attention: self-attention between the two middle residual blocks (DDPM: yes).
        num_classes: K for a class-conditional model: labels 0..K-1 and the null label K;
            ``cond=None`` means the null label. None: unconditional (labels are rejected).
        norm_groups: GroupNorm groups; must divide every channel count.
        emb_dim: width of the time embedding; defaults to 4 * channels (DDPM).
        guidance_embed: the guidance scale as a network input (a guided distillation student).
        freq_shift: the time features' frequencies are 10000^(-i / (channels/2 - freq_shift))
            (:class:`~difflab.models.SinusoidalEmbedding`); 0, or 1 as in the original DDPM code.
        norm_eps: the eps of every GroupNorm (the original DDPM code's: 1e-6; torch's: 1e-5).
        downsample_padding: the strided downsampling convolution's padding (``resample="conv"``):
            1, every side; 0, right and bottom only, as in the original DDPM code (:class:`Downsample`).
        learn_sigma: twice the output channels: the prediction, then the variance interpolation
            v of improved DDPM (Nichol & Dhariwal 2021; :func:`difflab.processes.call_model_with_variance`).
        context_dim: the width of text token embeddings to cross-attend to (latent diffusion's text
            conditioning); None: no text. With it, :meth:`forward` requires ``context``.
        cross_attention_levels: the levels whose steps get a :class:`CrossAttentionBlock` after
            the residual block (and its self-attention), on the way down and up; the middle gets
            one after its self-attention whatever the levels. Default: the levels with
            self-attention (``attention_levels``) if there are any, else every level below full
            resolution (1 .. levels - 1): attention over the H*W positions of level 0 costs the
            most, and latent diffusion attends where it also self-attends. ``()``: the middle only.
        cross_attention_resolutions: alternatively the spatial sizes that get cross-attention
            (as ``attention_resolutions``; needs ``image_size``); when given, replaces the levels.
            Heads follow the self-attention's rule (``num_heads`` or ``head_dim``).
        pooled_context: also add W_p pool(c) to the time embedding, pool the mean of the real
            tokens (GLIDE's and Imagen's pooled text embedding beside the cross-attention): every
            residual block then sees the whole caption, as a class label's embedding is seen; the
            cross-attention alone reaches only the chosen levels' positions.

    The last three exist for the original DDPM checkpoints (converted to diffusers as
    google/ddpm-cifar10-32 and its siblings: freq_shift 1, norm_eps 1e-6, downsample_padding 0);
    their defaults are difflab's own and ADM's.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: Optional[int] = None,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: Union[int, Sequence[int]] = 2,
        attention_levels: Optional[Sequence[int]] = None,
        attention_resolutions: Optional[Sequence[int]] = None,
        image_size: Optional[int] = None,
        dropout: float = 0.0,
        num_heads: int = 1,
        head_dim: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        resample: str = "conv",
        mid_attention: bool = True,
        num_classes: Optional[int] = None,
        norm_groups: int = 32,
        emb_dim: Optional[int] = None,
        guidance_embed: bool = False,
        freq_shift: float = 0,
        norm_eps: float = 1e-5,
        downsample_padding: int = 1,
        learn_sigma: bool = False,
        context_dim: Optional[int] = None,
        cross_attention_levels: Optional[Sequence[int]] = None,
        cross_attention_resolutions: Optional[Sequence[int]] = None,
        pooled_context: bool = False,
    ) -> None:
        super().__init__()
        self.config = {k: _plain(v) for k, v in locals().items() if k not in ("self", "__class__")}
        in_channels = positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else positive_int("out_channels", out_channels)
        _flag("learn_sigma", learn_sigma)
        self.learn_sigma = learn_sigma
        if learn_sigma:  # [prediction, variance interpolation v] (improved DDPM)
            out_channels = 2 * out_channels
        channels = positive_int("channels", channels)
        channel_mult = _int_sequence("channel_mult", channel_mult, "(1, 2, 2, 2)")
        if not channel_mult:
            raise ValueError("channel_mult must list at least one level, e.g. (1, 2, 2, 2)")
        channel_mult = tuple(positive_int("each channel_mult entry", m) for m in channel_mult)
        levels = len(channel_mult)
        if is_int(num_res_blocks):
            num_res_blocks = (num_res_blocks,) * levels
        if isinstance(num_res_blocks, (str, bytes)) or not isinstance(num_res_blocks, (list, tuple)):
            raise ValueError(f"num_res_blocks must be a positive integer or one per level, e.g. 2 or (2, 2, 1), "
                             f"got {num_res_blocks!r}")
        num_res_blocks = tuple(num_res_blocks)
        if len(num_res_blocks) != levels:
            raise ValueError(
                f"num_res_blocks lists {len(num_res_blocks)} levels but channel_mult has {levels}; "
                "give an int or one entry per level"
            )
        num_res_blocks = tuple(positive_int("num_res_blocks", n) for n in num_res_blocks)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        _flag("use_scale_shift_norm", use_scale_shift_norm)
        _flag("mid_attention", mid_attention)
        if num_classes is not None:
            num_classes = positive_int("num_classes", num_classes)
        if emb_dim is not None:
            emb_dim = positive_int("emb_dim", emb_dim)
        norm_groups = positive_int("norm_groups", norm_groups)
        if not is_real(norm_eps) or not 0 < norm_eps < 1:
            raise ValueError(f"norm_eps must be a small positive number (the GroupNorms' eps: 1e-5 by default, 1e-6 "
                             f"in the original DDPM code), got {norm_eps!r}")
        _check_downsample_padding(downsample_padding)
        if downsample_padding != 1 and resample != "conv":
            raise ValueError(f"downsample_padding={downsample_padding!r} pads the strided convolution of "
                             f"resample='conv', which this U-Net (resample={resample!r}) does not have: drop it")
        norm_eps = float(norm_eps)
        if not isinstance(resample, str) or resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {', '.join(RESAMPLE_MODES)}, got {resample!r}")
        if image_size is not None:
            image_size = positive_int("image_size", image_size)
            if image_size % 2 ** (levels - 1):
                raise ValueError(
                    f"image_size={image_size} is not divisible by 2^(levels - 1) = {2 ** (levels - 1)} "
                    f"for channel_mult={channel_mult}"
                )
        attention_levels = self._attention_levels(attention_levels, attention_resolutions, image_size, levels)
        _flag("pooled_context", pooled_context)
        if context_dim is None:
            if pooled_context:
                raise ValueError("pooled_context adds the pooled text embedding to the time embedding, which needs "
                                 "context_dim (the width of the text embeddings)")
            if cross_attention_levels is not None or cross_attention_resolutions is not None:
                raise ValueError("cross_attention_levels / cross_attention_resolutions place cross-attention to "
                                 "text, which needs context_dim (the width of the text embeddings), e.g. "
                                 "context_dim=256")
            cross_levels = ()
        else:
            context_dim = positive_int("context_dim", context_dim)
            if cross_attention_levels is None and cross_attention_resolutions is None:
                cross_levels = attention_levels or tuple(range(1, levels))  # (the rule: the docstring's)
            else:
                cross_levels = self._attention_levels(cross_attention_levels, cross_attention_resolutions,
                                                      image_size, levels, "cross_attention")
        widths = [channels * m for m in channel_mult]
        for w in sorted({channels, *widths}):
            if w % norm_groups:
                raise ValueError(
                    f"norm_groups={norm_groups} must divide every channel count; {w} is not divisible "
                    f"(channels={channels}, channel_mult={channel_mult})"
                )
        attended = {widths[level] for level in attention_levels} | ({widths[-1]} if mid_attention else set())
        attended |= {widths[level] for level in cross_levels} | ({widths[-1]} if context_dim else set())
        heads = {w: self._heads(w, num_heads, head_dim) for w in sorted(attended)}  # widths with attention only
        emb_dim = emb_dim or 4 * channels

        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.num_levels, self.num_classes = levels, num_classes
        self.attention_levels = attention_levels
        self.context_dim, self.cross_attention_levels = context_dim, cross_levels
        try:
            self.time_embed = TimestepEmbedding(emb_dim, freq_dim=channels, freq_shift=freq_shift)
        except ValueError as err:  # (the embedding's own message names its width, channels)
            raise ValueError(f"UNet(channels={channels}, freq_shift={freq_shift!r}): {err}") from None
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.context_embed = nn.Linear(context_dim, emb_dim) if pooled_context else None
        if not isinstance(guidance_embed, bool):
            raise ValueError(f"guidance_embed must be true or false, got {guidance_embed!r}")
        if guidance_embed and num_classes is None:
            raise ValueError("guidance_embed needs a class-conditional UNet (num_classes=K): guidance steers "
                             "towards a label")
        # the guidance scale as an input (guided distillation), added to the time embedding
        self.guidance_embed = GuidanceEmbedding(emb_dim, freq_dim=channels) if guidance_embed else None

        def res(cin: int, cout: int, resample_: Optional[str] = None) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, norm_groups, use_scale_shift_norm, resample_, norm_eps)

        def step(cin: int, cout: int, level: int) -> _ResAttn:
            attn = AttentionBlock(cout, heads[cout], norm_groups, norm_eps) if level in attention_levels else None
            return _ResAttn(res(cin, cout), attn, cross(cout) if level in cross_levels else None)

        def cross(width: int) -> CrossAttentionBlock:
            return CrossAttentionBlock(width, context_dim, heads[width], norm_groups, norm_eps)

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [channels]  # channel counts of the skip connections, in push order
        ch = channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks[level]):
                self.down.append(step(ch, width, level))
                ch = width
                skips.append(ch)
            if level != levels - 1:
                if resample == "resblock":
                    self.down.append(res(ch, ch, "down"))
                else:
                    self.down.append(Downsample(ch, with_conv=resample == "conv", padding=downsample_padding))
                skips.append(ch)

        self.mid_res1 = res(ch, ch)
        self.mid_attn = AttentionBlock(ch, heads[ch], norm_groups, norm_eps) if mid_attention else None
        self.mid_cross = cross(ch) if context_dim is not None else None
        self.mid_res2 = res(ch, ch)

        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            width = widths[level]
            for _ in range(num_res_blocks[level] + 1):
                self.up.append(step(ch + skips.pop(), width, level))
                ch = width
            if level != 0:
                if resample == "resblock":
                    self.up.append(res(ch, ch, "up"))
                else:
                    self.up.append(Upsample(ch, with_conv=resample == "conv"))
        assert not skips

        self.norm_out = GroupNorm(norm_groups, ch, eps=norm_eps)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    @staticmethod
    def _attention_levels(levels_, resolutions, image_size, levels: int, name: str = "attention") -> tuple[int, ...]:
        """The level indices ``{name}_levels`` or ``{name}_resolutions`` place (sorted, distinct)."""
        if resolutions is not None:
            if image_size is None:
                raise ValueError(
                    f"{name}_resolutions needs image_size (the resolution of level 0), "
                    f"or give {name}_levels instead"
                )
            resolutions = _int_sequence(f"{name}_resolutions", resolutions, "(16,)")
            sizes = {image_size // 2**i: i for i in range(levels)}
            bad = [r for r in resolutions if not is_int(r) or r not in sizes]
            if bad:
                raise ValueError(
                    f"{name}_resolutions {bad} are not resolutions of this U-Net; with image_size="
                    f"{image_size} its levels work at {sorted(sizes, reverse=True)}"
                )
            return tuple(sorted({sizes[r] for r in resolutions}))
        if levels_ is None:
            return ()
        out = _int_sequence(f"{name}_levels", levels_, "(1,) or [] for none")
        for i in out:
            if not is_int(i) or not 0 <= i < levels:
                raise ValueError(
                    f"{name}_levels must be level indices in 0 .. {levels - 1}, got {levels_!r}"
                )
        return tuple(sorted({int(i) for i in out}))

    @staticmethod
    def _heads(width: int, num_heads: int, head_dim: Optional[int]) -> int:
        if head_dim is not None:
            head_dim = positive_int("head_dim", head_dim)
            if width % head_dim:
                raise ValueError(
                    f"head_dim={head_dim} must divide every attention width; {width} is not divisible"
                )
            return width // head_dim
        num_heads = positive_int("num_heads", num_heads)
        if width % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide every attention width; {width} is not divisible"
            )
        return num_heads

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"UNet(in_channels={self.in_channels}) takes x of shape [B, {self.in_channels}, H, W], got {got}"
            )
        f = 2 ** (self.num_levels - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"this UNet has {self.num_levels} levels, so H and W must be divisible by {f}; got "
                f"{x.shape[2]}x{x.shape[3]} (pad or resize the images, or use fewer levels)"
            )

    def _label(self, cond: Optional[Tensor], x: Tensor) -> Tensor:
        B = x.shape[0]
        if cond is None:
            return torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
        if (
            not isinstance(cond, Tensor)
            or cond.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8, torch.int8)
            or cond.shape != (B,)
        ):
            raise ValueError(
                f"cond must be an integer tensor of class labels with shape [{B}], got "
                f"{getattr(cond, 'dtype', type(cond).__name__)} of shape {tuple(getattr(cond, 'shape', ()))}"
            )
        # A range check needs the values on the host: cheap on the CPU, a sync on a GPU (skipped there).
        if cond.device.type == "cpu" and not torch.compiler.is_compiling():
            if bool((cond < 0).any()) or bool((cond > self.num_classes).any()):
                raise ValueError(
                    f"class labels must lie in 0 .. {self.num_classes - 1} (or {self.num_classes} for "
                    f"'no label'), got values in [{int(cond.min())}, {int(cond.max())}]"
                )
        return cond if cond.dtype in (torch.long, torch.int32) else cond.long()  # nn.Embedding: int32/64

    def res_blocks(self) -> list[ResBlock]:
        """The residual blocks in the order :meth:`forward` gives them their embeddings: the
        down path's, the two middle ones (whatever wraps them, e.g. torch.compile), the up path's."""
        def path(steps):
            return [s.res if isinstance(s, _ResAttn) else s for s in steps if _takes_embedding(s)]

        return [*path(self.down), self.mid_res1, self.mid_res2, *path(self.up)]

    def block_embeddings(self, emb_act: Tensor) -> tuple[Tensor, ...]:
        """Every residual block's e = W_e SiLU(emb) + b_e (:meth:`ResBlock.embedding`), in forward
        order, as one matrix product [W_e1; W_e2; ...] SiLU(emb): one GEMM (and one weight cast
        under autocast) instead of one small GEMM per block (22 in DDPM's CIFAR-10 net). Blocks
        whose emb_proj is not a plain nn.Linear, or has hooks (a wrapper, pruning, LoRA), project
        each by its own forward."""
        blocks = self.res_blocks()
        if not all(unhooked(b.emb_proj, nn.Linear) for b in blocks):
            return tuple(b.embedding(emb_act) for b in blocks)
        device = emb_act.device.type
        # The weights share one dtype: no autocast "promote" (it refuses bf16 weights under fp16 autocast)
        no_autocast = (torch.autocast(device, enabled=False) if _autocast_available(device)
                       and torch.is_autocast_enabled(device) else contextlib.nullcontext())
        with no_autocast:
            weight = torch.cat([b.emb_proj.weight for b in blocks])
            bias = torch.cat([b.embedding_bias() for b in blocks])
        return F.linear(emb_act, weight, bias).split([b.emb_proj.out_features for b in blocks], dim=1)

    @property
    def guidance_input(self) -> bool:
        """Whether the guidance scale is an input of the network (``guidance_embed=True``)."""
        return self.guidance_embed is not None

    def _text(self, context, context_mask, x: Tensor) -> dict:
        """The keyword arguments of the cross-attending steps: ``{}`` for a network without text
        (which refuses any), else the checked context and mask (:func:`check_context`)."""
        if self.context_dim is None:
            if context is not None or context_mask is not None:
                raise ValueError("this UNet takes no text context (build it with context_dim=... to cross-attend "
                                 "to text embeddings)")
            return {}
        if context is None:
            raise ValueError(f"this UNet cross-attends to text (context_dim={self.context_dim}): pass context=[B, L, "
                             f"{self.context_dim}] token embeddings (the empty caption's for 'no text')")
        context, context_mask = check_context(context, context_mask, x, self.context_dim)
        return {"context": context, "context_mask": context_mask}

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None, guidance=None, *,
                context: Optional[Tensor] = None, context_mask: Optional[Tensor] = None) -> Tensor:
        """The prediction for x_t at time t, [B, out_channels, H, W]; ``cond``: class labels [B]
        (None: the null label), ``guidance``: the scale of a guidance-embedding network; ``context``
        [B, L, context_dim] text token embeddings and ``context_mask`` [B, L] bool (True: a real
        token; None: all real) for a network built with ``context_dim`` (required there, refused
        elsewhere). Labels and text may be combined."""
        self._check(x)
        text = self._text(context, context_mask, x)
        t = batch_timesteps(t, x)
        emb = self.time_embed(t)
        if self.label_embed is not None:
            emb = emb + self.label_embed(self._label(cond, x))
        elif cond is not None:
            raise ValueError(
                "this UNet is unconditional (num_classes=None) but got labels; build it with "
                "num_classes=K to use class labels"
            )
        if self.context_embed is not None:  # the mean of the real tokens (all of them without a mask)
            c, m = text["context"], text["context_mask"]
            pooled = c.mean(1) if m is None else (c * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
            emb = emb + self.context_embed(pooled)
        if self.guidance_embed is not None:
            emb = emb + self.guidance_embed(guidance, x)
        elif guidance is not None:
            raise ValueError("this UNet takes no guidance input (build it with guidance_embed=True); guide it "
                             "with dl.sample(..., guidance=w), which calls it twice per step")
        es = iter(self.block_embeddings(F.silu(emb)))

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, e=next(es), **text) if _cross_attends(block) else (
                block(h, e=next(es)) if _takes_embedding(block) else block(h))
            hs.append(h)
        h = self.mid_res1(h, e=next(es))
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        if self.mid_cross is not None:
            h = self.mid_cross(h, text["context"], text["context_mask"])
        h = self.mid_res2(h, e=next(es))
        for block in self.up:
            if isinstance(block, _ResAttn):  # (up/downsampling steps take no skip)
                h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, e=next(es), **text) if _cross_attends(block) else (
                block(h, e=next(es)) if _takes_embedding(block) else block(h))
        return self.conv_out(self.norm_out(h, silu=True))


def unet_cifar10(**overrides) -> UNet:
    """DDPM's CIFAR-10 network (Ho et al. 2020, App. B): 35.7M parameters.

    ch=128, ch_mult=(1, 2, 2, 2), 2 residual blocks per level, attention at 16x16 (one head),
    dropout 0.1, additive time conditioning, conv resampling.
    """
    config = dict(
        in_channels=3,
        channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_levels=(1,),
        image_size=32,
        dropout=0.1,
        num_heads=1,
    )
    return UNet(**{**config, **overrides})


def unet_mnist(num_classes: Optional[int] = None, **overrides) -> UNet:
    """A small U-Net for 28x28 (or 32x32) grayscale digits.

    channels 64, 128, 128 at 28, 14, 7 (16, 8 at 32x32); 2 residual blocks per level; attention
    (4 heads of 32) at the lowest level and in the middle; ADM scale-shift conditioning;
    dropout 0.1 (t10k is only 10k images).
    """
    config = dict(
        in_channels=1,
        channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=(2,),
        image_size=28,
        dropout=0.1,
        head_dim=32,
        use_scale_shift_norm=True,
        num_classes=num_classes,
    )
    return UNet(**{**config, **overrides})


def unet_tiny(num_classes: Optional[int] = None, **overrides) -> UNet:
    """A CPU-sized U-Net for 8x8 images (scikit-learn's digits): 0.18M parameters.

    channels 16, 32 at 8x8, 4x4; one residual block per level; attention (2 heads) only in the
    middle (4x4); scale-shift conditioning; no dropout. About 4 MMAC per image forward.
    Class-conditional on digits (cosine schedule, eps, batch 128, lr 2e-3) it gives clean,
    recognisable digits after 1,000-1,500 steps, under a minute of one CPU core.
    """
    config = dict(
        in_channels=1,
        channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=None,
        image_size=8,
        dropout=0.0,
        num_heads=2,
        use_scale_shift_norm=True,
        norm_groups=4,
        num_classes=num_classes,
    )
    return UNet(**{**config, **overrides})
