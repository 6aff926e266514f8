"""A space-time U-Net for clips (Ho et al. 2022, "Video Diffusion Models", Sec. 3).

    x [B, T, C, H, W] -> frames [B*T, C, H, W] -> the image U-Net's layers, each residual step
      followed by temporal layers that mix the T frames at every pixel -> [B, T, C, H, W]

The U-Net's spatial layers (:class:`~difflab.models.unet.UNet`: its convolutions, residual blocks,
spatial attention, down and up sampling, time and label embeddings) run on every frame as on an
image: the frames are the batch. After every residual step of every level (and after the middle's
attention) come two temporal layers, both residual and both acting along the frame axis only:

- a **temporal convolution**: h + Conv1d_t(SiLU(GN(h))), a kernel of ``temporal_kernel`` frames
  shared by all pixels (a Conv3d with kernel (k, 1, 1)), zeros beyond the clip's ends;
- **temporal attention**: h + W_o MultiHead(GN(h)) over the T frames of each pixel, with a learned
  relative position bias: the logit of query frame i for key frame j is
  q_i . k_j / sqrt(d) + b_head[j - i], one learned number per head and offset j - i in
  -(F-1) .. F-1, F = ``frames`` (:class:`RelativePositionBias`; Ho et al. use T5's bucketed
  relative embeddings, of which a table over every offset is the unbucketed form). The bias is
  the network's only sense of frame order besides the convolution: the attention itself is
  permutation-equivariant.

Both temporal layers end in a zero-initialised projection (the convolution's weights, the
attention's W_o), so a new network computes exactly the image U-Net on each frame, and a trained
image U-Net's weights (:meth:`VideoUNet.from_unet`) start a video model that samples what the image
model sampled, frame by frame, until the temporal layers learn to couple the frames.

**Joint image-video training** (Ho et al. Sec. 3.1): ``independent_frames`` marks frames that are
independent images rather than frames of the clip. Such a frame attends only to itself in every
temporal attention (the softmax over one key is 1, so the layer adds W_o v_i: a map of the frame
alone) and takes no part in the temporal convolutions (neither reads its neighbours nor is read by
them), while the other frames of the clip attend to each other. Each independent frame's output
is then a function of that frame alone: the image U-Net (with the attentions' per-frame W_o v,
zero at initialisation). ``True`` makes every frame independent, so single images
([B, 1, C, H, W], or images stacked as frames) train the spatial layers.

Layout: x and the output are [B, T, C, H, W], the layout of :func:`difflab.data.moving_digits`'s
clips, so a clip's frames are contiguous images and the per-frame batch [B*T, C, H, W] is a view.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..validation import check_labels, is_int, is_real, positive_int
from .embeddings import batch_timesteps
from .norm import GroupNorm
from .unet import Downsample, ResBlock, UNet, Upsample

__all__ = ["VideoUNet", "RelativePositionBias", "TemporalAttention", "TemporalConv", "IndependentFrames",
           "video_unet_tiny", "video_unet_mnist"]


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class RelativePositionBias(nn.Module):
    """b[h, i, j] = table[h, (j - i) + F - 1]: one learned logit bias per head and frame offset
    j - i in -(F-1) .. F-1 (``max_frames`` = F), added to the attention logits of query frame i for
    key frame j. It depends on i and j only through j - i (translation-invariant in time), so a
    clip of any length T <= F reads the same table. Zero-initialised: attention starts by content
    alone."""

    def __init__(self, num_heads: int, max_frames: int) -> None:
        super().__init__()
        self.num_heads = positive_int("num_heads", num_heads)
        self.max_frames = positive_int("max_frames", max_frames)
        self.table = nn.Parameter(torch.zeros(self.num_heads, 2 * self.max_frames - 1))

    def offsets(self, frames: int) -> Tensor:
        """[T, T] long: (j - i) + F - 1, the table column of query i and key j."""
        if not is_int(frames) or not 1 <= frames <= self.max_frames:
            raise ValueError(f"the relative position bias spans clips of 1 .. {self.max_frames} frames (offsets "
                             f"+-{self.max_frames - 1}), got {frames!r} frames")
        pos = torch.arange(frames, device=self.table.device)
        return pos[None, :] - pos[:, None] + self.max_frames - 1

    def forward(self, frames: int) -> Tensor:
        """The bias [heads, T, T] for a clip of T = ``frames`` frames."""
        return self.table[:, self.offsets(frames)]


def _allowed(independent: Tensor) -> Tensor:
    """[B, T, T] bool, which key frames j each query frame i may attend to: itself always, and any
    other frame when neither is an independent image (``independent`` [B, T] bool)."""
    clip = ~independent
    T = independent.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=independent.device)
    return eye | (clip[:, :, None] & clip[:, None, :])


class TemporalAttention(nn.Module):
    """h + W_o MultiHead(GN(h)) over the T frames of each pixel, with a relative position bias.

    Per pixel (b, y, x) the tokens are that pixel's features in the T frames, and per head

        a_i = sum_j softmax_j(q_i . k_j / sqrt(d) + bias[j - i] + m_ij) v_j,

    m_ij = 0 where frame i may attend to frame j and -inf where not (:func:`_allowed`: joint
    image-video training). GN normalises each frame on its own (over channels and pixels), so
    nothing but the attention mixes frames. W_o is zero-initialised: the layer starts as the
    identity.
    """

    def __init__(self, channels: int, num_heads: int, max_frames: int, norm_groups: int = 32,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"temporal attention: num_heads={num_heads} must divide the width {channels}")
        self.num_heads = num_heads
        self.norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.bias = RelativePositionBias(num_heads, max_frames)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, h: Tensor, frames: int, allowed: Optional[Tensor] = None) -> Tensor:
        """``h`` [B*T, C, H, W] (clip b's frames at rows b*T .. b*T + T-1); ``allowed`` None (every
        frame sees every frame) or [B, T, T] bool."""
        BT, C, H, W = h.shape
        B, T, heads = BT // frames, frames, self.num_heads
        tokens = self.norm(h).view(B, T, C, H * W).permute(0, 3, 1, 2)  # [B, HW, T, C]
        qkv = self.qkv(tokens).view(B, H * W, T, 3, heads, C // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each [B, HW, heads, T, d]
        bias = self.bias(T).to(q.dtype)  # [heads, T, T]
        if allowed is not None:  # [B, 1, heads, T, T]: -inf where a frame may not look
            bias = bias.masked_fill(~allowed[:, None, None], float("-inf"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, HW, heads, T, d]
        a = self.proj(a.permute(0, 1, 3, 2, 4).reshape(B, H * W, T, C))  # [B, HW, T, C]
        return h + a.permute(0, 2, 3, 1).reshape(BT, C, H, W)


class TemporalConv(nn.Module):
    """h + Conv_t(SiLU(GN(h))): a 1-D convolution over frames, ``kernel`` frames wide, the same
    weights at every pixel (a Conv3d with kernel (k, 1, 1) on [B, C, T, H, W]; zeros beyond the
    clip's first and last frames). Zero-initialised (weights and bias): the layer starts as the
    identity.

    ``clip`` [B, T] bool (None: all) marks the frames of the clip: the others (independent images)
    are read as zeros and get no update, so they neither see their neighbours nor are seen."""

    def __init__(self, channels: int, kernel: int = 3, norm_groups: int = 32, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.conv = _zero(nn.Conv3d(channels, channels, (kernel, 1, 1), padding=(kernel // 2, 0, 0)))

    def forward(self, h: Tensor, frames: int, clip: Optional[Tensor] = None) -> Tensor:
        BT, C, H, W = h.shape
        y = self.norm(h, silu=True).view(BT // frames, frames, C, H, W)
        keep = None if clip is None else clip[:, :, None, None, None].to(y.dtype)
        if keep is not None:
            y = y * keep
        y = self.conv(y.transpose(1, 2)).transpose(1, 2)  # [B, T, C, H, W]
        if keep is not None:
            y = y * keep
        return h + y.reshape(BT, C, H, W)


class _Temporal(nn.Module):
    """The temporal layers after one spatial step: convolution, then attention (either optional)."""

    def __init__(self, conv: Optional[TemporalConv], attn: Optional[TemporalAttention]) -> None:
        super().__init__()
        self.conv, self.attn = conv, attn

    def forward(self, h: Tensor, frames: int, independent: Optional[Tensor], allowed: Optional[Tensor],
                skip_conv: bool = False) -> Tensor:
        if self.conv is not None and not skip_conv:
            h = self.conv(h, frames, None if independent is None else ~independent)
        if self.attn is not None:
            h = self.attn(h, frames, allowed)
        return h


def _heads_of_dim(width: int, head_dim) -> int:
    head_dim = positive_int("head_dim", head_dim)
    if width % head_dim:
        raise ValueError(f"head_dim={head_dim} must divide every width with temporal attention (every level's); "
                         f"{width} is not divisible; or give temporal_heads")
    return width // head_dim


def _is_resampler(step: nn.Module) -> bool:
    """A step of the U-Net's paths that only resamples (a Downsample / Upsample, or ADM's resampling
    residual block): it takes no skip connection and gets no temporal layers."""
    return isinstance(step, (Downsample, Upsample)) or (isinstance(step, ResBlock) and step.resample is not None)


class VideoUNet(nn.Module):
    """model(x_t, t, cond=None, independent_frames=None) -> x_t's shape, x_t [B, T, C, H, W].

    Args:
        frames: F, the longest clip the network takes (its relative position tables span offsets
            -(F-1) .. F-1); clips of 1 .. F frames run.
        temporal_attention: temporal attention after every spatial step (Ho et al.).
        temporal_conv: a temporal convolution after every spatial step.
        temporal_kernel: the convolution's width in frames (odd).
        temporal_heads: heads of every temporal attention (must divide every level's width);
            defaults to the spatial attention's rule (``num_heads``, or ``head_dim``).
        independent_prob: in training mode, each clip's frames are made independent images
            (``independent_frames`` for that clip) with this probability, drawn from torch's
            generator as dropout's are: joint training of the spatial layers on frames alone
            within a video run (Ho et al. Sec. 3.1, with the clips' own frames as the images). 1
            trains the network as an image model per frame (the frame-by-frame baseline, sampled
            with :meth:`frame_by_frame`); 0 (the default) never. An explicit ``independent_frames``
            overrides it; in eval mode it is off.
        **unet: the spatial network's arguments, those of :class:`~difflab.models.unet.UNet`
            (in_channels, channels, channel_mult, num_res_blocks, attention_levels, image_size,
            num_classes, ...); its weights are ``spatial.*``.

    ``independent_frames``: None (every frame belongs to the clip), True (every frame is an
    independent image: each frame on its own), or a bool tensor [B] (per clip) or [B, T] (per
    frame) marking the independent images; see the module docstring.
    """

    def __init__(
        self,
        frames: int = 8,
        temporal_attention: bool = True,
        temporal_conv: bool = True,
        temporal_kernel: int = 3,
        temporal_heads: Optional[int] = None,
        independent_prob: float = 0.0,
        **unet,
    ) -> None:
        super().__init__()
        self.config = {"frames": frames, "temporal_attention": temporal_attention, "temporal_conv": temporal_conv,
                       "temporal_kernel": temporal_kernel, "temporal_heads": temporal_heads,
                       "independent_prob": independent_prob, **unet}
        self.frames = positive_int("frames (the longest clip the network takes)", frames)
        _flag("temporal_attention", temporal_attention)
        _flag("temporal_conv", temporal_conv)
        if not is_real(independent_prob) or not 0.0 <= independent_prob <= 1.0:
            raise ValueError(f"independent_prob must be a probability in [0, 1] (the share of clips trained as "
                             f"independent frames), got {independent_prob!r}")
        self.independent_prob = float(independent_prob)
        if not is_int(temporal_kernel) or temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be an odd number of frames >= 1 (3: each frame reads its two "
                             f"neighbours), got {temporal_kernel!r}")
        if unet.get("guidance_embed"):
            raise ValueError("VideoUNet takes no guidance_embed (the guidance scale as an input); guide it with "
                             "dl.sample(..., guidance=w)")
        if unet.get("context_dim") is not None:
            raise ValueError("VideoUNet takes no context_dim (text cross-attention): it conditions on class labels "
                             "only and passes no text to its spatial U-Net; drop context_dim")
        if unet.get("learn_sigma"):  # the samplers read [prediction, v] along dim 1, here the frames
            raise ValueError("VideoUNet does not learn the variance (learn_sigma): the processes split a "
                             "learned variance from the prediction along dim 1, which is a clip's frame axis; "
                             "drop learn_sigma")
        self.spatial = UNet(**unet)
        sp = self.spatial
        self.in_channels, self.out_channels = sp.in_channels, sp.out_channels
        self.image_size, self.num_classes = sp.image_size, sp.num_classes
        norm_groups, norm_eps = unet.get("norm_groups", 32), float(unet.get("norm_eps", 1e-5))
        if temporal_heads is None:
            head_dim = unet.get("head_dim")
            heads_for = (lambda w: _heads_of_dim(w, head_dim)) if head_dim is not None else \
                (lambda w: unet.get("num_heads", 1))
        else:
            temporal_heads = positive_int("temporal_heads", temporal_heads)
            heads_for = lambda w: temporal_heads  # noqa: E731

        def temporal(width: int) -> _Temporal:
            conv = TemporalConv(width, temporal_kernel, norm_groups, norm_eps) if temporal_conv else None
            attn = (TemporalAttention(width, heads_for(width), self.frames, norm_groups, norm_eps)
                    if temporal_attention else None)
            return _Temporal(conv, attn)

        # one set of temporal layers after each spatial step that is not a resampler, in forward order
        self.temporal_down = nn.ModuleList(temporal(s.res.conv2.out_channels) for s in sp.down if not _is_resampler(s))
        self.temporal_mid = temporal(sp.mid_res1.conv2.out_channels)
        self.temporal_up = nn.ModuleList(temporal(s.res.conv2.out_channels) for s in sp.up if not _is_resampler(s))

    @classmethod
    def from_unet(cls, unet: UNet, frames: int = 8, **temporal) -> "VideoUNet":
        """A video network whose spatial layers are ``unet``'s (its config and a copy of its
        weights), with new temporal layers: it computes ``unet`` on every frame until trained."""
        if not isinstance(unet, UNet):
            raise TypeError(f"from_unet takes a difflab UNet, got {type(unet).__name__}")
        model = cls(frames=frames, **temporal, **unet.config)
        model.spatial.load_state_dict(unet.state_dict())
        p = next(unet.parameters())
        return model.to(p.device, p.dtype)

    # ------------------------------------------------------------------ input checks
    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 5 or x.shape[2] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            hint = (" (a batch of images: x.unsqueeze(1) makes each a one-frame clip)"
                    if isinstance(x, Tensor) and x.ndim == 4 else "")
            raise ValueError(f"VideoUNet(in_channels={self.in_channels}) takes clips x of shape "
                             f"[B, T, {self.in_channels}, H, W], got {got}{hint}")
        if not 1 <= x.shape[1] <= self.frames:
            raise ValueError(f"this VideoUNet takes clips of 1 .. {self.frames} frames (frames={self.frames}: its "
                             f"relative position bias spans offsets up to {self.frames - 1}), got {x.shape[1]} "
                             f"frames; build it with frames={x.shape[1]} or cut the clips")
        f = 2 ** (self.spatial.num_levels - 1)
        if x.shape[3] % f or x.shape[4] % f:
            raise ValueError(f"this VideoUNet has {self.spatial.num_levels} levels, so H and W must be divisible "
                             f"by {f}; got {x.shape[3]}x{x.shape[4]} (pad the frames, or use fewer levels)")

    def _independent(self, independent, B: int, T: int, device) -> Optional[Tensor]:
        """``independent_frames`` as None (no frame independent) or a bool tensor [B, T]."""
        if independent is None or independent is False:
            return None
        if independent is True:
            return torch.ones(B, T, dtype=torch.bool, device=device)
        if not isinstance(independent, Tensor) or independent.dtype != torch.bool or \
                tuple(independent.shape) not in ((B,), (B, T)):
            got = (f"{independent.dtype} of shape {tuple(independent.shape)}" if isinstance(independent, Tensor)
                   else repr(independent))
            raise ValueError(f"independent_frames must be None, True, or a bool tensor of shape [B] = [{B}] (per "
                             f"clip) or [B, T] = [{B}, {T}] (per frame), got {got}")
        independent = independent.to(device)
        return independent[:, None].expand(B, T) if independent.ndim == 1 else independent

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None,
                independent_frames: Union[None, bool, Tensor] = None) -> Tensor:
        self._check(x)
        B, T, C, H, W = x.shape
        sp = self.spatial
        # each clip's time and label, repeated for its T frames (the embeddings are computed per
        # frame, B*T rows, as the image U-Net computes them for the same frames: the same numbers)
        t = batch_timesteps(t, x).repeat_interleave(T)
        emb = sp.time_embed(t)
        if self.num_classes is not None:
            labels = check_labels(self, cond, B, device=x.device)
            if labels is None:  # no labels: the null label (classifier-free guidance's unconditional branch)
                labels = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + sp.label_embed(labels.repeat_interleave(T))
        elif cond is not None:
            raise ValueError("this VideoUNet is unconditional (num_classes=None) but got labels; build it with "
                             "num_classes=K to use class labels")
        es = iter(sp.block_embeddings(F.silu(emb)))  # every residual block's, [B*T, ...] each
        if independent_frames is None and self.training and self.independent_prob > 0:
            # per clip, like dropout: [B] bool, True with probability independent_prob
            independent_frames = (True if self.independent_prob == 1.0 else
                                  torch.rand(B, device=x.device) < self.independent_prob)
        independent = self._independent(independent_frames, B, T, x.device)
        allowed = None if independent is None else _allowed(independent)
        skip_conv = independent_frames is True  # (with no frame of a clip left, every convolution adds zero)

        def mix(layers: _Temporal, h: Tensor) -> Tensor:
            return layers(h, T, independent, allowed, skip_conv)

        h = sp.conv_in(x.reshape(B * T, C, H, W))
        hs = [h]
        td = iter(self.temporal_down)
        for step in sp.down:
            if _is_resampler(step):
                h = step(h) if not isinstance(step, ResBlock) else step(h, e=next(es))
            else:
                h = mix(next(td), step(h, e=next(es)))
            hs.append(h)
        h = sp.mid_res1(h, e=next(es))
        if sp.mid_attn is not None:
            h = sp.mid_attn(h)
        h = mix(self.temporal_mid, h)
        h = sp.mid_res2(h, e=next(es))
        tu = iter(self.temporal_up)
        for step in sp.up:
            if _is_resampler(step):
                h = step(h) if not isinstance(step, ResBlock) else step(h, e=next(es))
            else:
                h = mix(next(tu), step(torch.cat([h, hs.pop()], dim=1), e=next(es)))
        out = sp.conv_out(sp.norm_out(h, silu=True))
        return out.view(B, T, *out.shape[1:])

    def frame_by_frame(self) -> "IndependentFrames":
        """This network with every frame independent (``independent_frames=True``): each frame
        denoised as an image, as a model of the convention ``model(x_t, t, cond)`` for the samplers."""
        return IndependentFrames(self)


class IndependentFrames(nn.Module):
    """``video(x, t, cond, independent_frames=True)``: a VideoUNet with its temporal layers masked
    out, so each frame is sampled as an image (the image-model baseline of a video model)."""

    def __init__(self, video: VideoUNet) -> None:
        super().__init__()
        self.model = video  # (``.model``: where difflab looks through a wrapper for the network)
        self.num_classes = video.num_classes

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        return self.model(x, t, cond, independent_frames=True)


def video_unet_tiny(num_classes: Optional[int] = None, **overrides) -> VideoUNet:
    """A CPU-sized space-time U-Net for 8-frame clips of 16x16 (moving sklearn digits).

    Spatial: channels 32, 64 at 16x16, 8x8; one residual block per level; spatial attention
    (2 heads) in the middle only; scale-shift conditioning. Temporal: a 3-frame convolution and
    attention (2 heads, relative bias over offsets +-7) after every residual step.
    """
    config = dict(frames=8, in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=None, image_size=16, num_heads=2, use_scale_shift_norm=True, norm_groups=8,
                  num_classes=num_classes)
    return VideoUNet(**{**config, **overrides})


def video_unet_mnist(num_classes: Optional[int] = None, **overrides) -> VideoUNet:
    """A GPU-sized space-time U-Net for 64x64 Moving MNIST clips of up to 16 frames.

    Spatial: channels 64, 128, 128, 256 at 64, 32, 16, 8; two residual blocks per level;
    attention (heads of 32 channels) at 16x16, 8x8 and in the middle; scale-shift conditioning,
    dropout 0.1. Temporal: a 3-frame convolution and attention (heads of 32 channels) after every
    residual step.
    """
    config = dict(frames=16, in_channels=1, channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
                  attention_levels=(2, 3), image_size=64, head_dim=32, dropout=0.1, use_scale_shift_norm=True,
                  num_classes=num_classes)
    return VideoUNet(**{**config, **overrides})
