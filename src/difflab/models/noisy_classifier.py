"""Noise-aware classifiers p(y | x_t, t): what classifier guidance differentiates (Dhariwal & Nichol 2021, sec. 4).

Guidance adds s grad_{x_t} log p(y | x_t) to the diffusion model's score, so the classifier must
read the noisy states x_t the sampler visits, at every noise level, and know the level: it takes
the process's own state and time input, exactly as the diffusion network does (API.md's model
convention, without labels),

    classifier(x_t, t) -> logits [B, K],   log p(y | x_t) = log_softmax(logits)_y

with x_t = a x the process's state and t = ``proc.timestep(sigma, B)`` (long on a DDPM grid, float
between grid steps or for continuous processes: the sinusoidal time embedding takes both).

:class:`NoisyClassifier` is a trained one: for flat data [B, D] (the 64 pixels of 8x8 digits, as the
digits configs feed their MLP) a residual MLP with the time embedding added in every block; for
images [B, C, H, W] the encoder half of the U-Net (its time-conditioned ResBlocks, downsampling
between levels) followed by attention pooling, the classifier of Dhariwal & Nichol (sec. 4, app. C).
:class:`MixtureClassifier` is the exact one for Gaussian-mixture data, the Bayes posterior over
the components (the test bed of guidance, as :mod:`.analytic` is of samplers).

**The input scaling.** A network's gradient is O(1) wherever it is not trained to be otherwise,
but guidance multiplies it by sigma^2 (VE frame; sigma up to 2e4 on the cosine schedule's last
step). The exact posterior of data of unit scale depends on the VE state x = x_t / a through
x / (1 + sigma^2) (for a Gaussian class, log p(y | x) = m_y . x / (sigma^2 + s^2) + ...), so its
gradient decays as 1 / sigma^2 and the shift sigma^2 grad stays bounded. Built with its process,
:class:`NoisyClassifier` reads that variable, u = x / (1 + sigma^2) = x_t / (a (1 + sigma^2)) --
sqrt(abar) x_t on the VP processes -- with sigma from the time input: the decay is built in
rather than learnt (an untrained direction at pure noise would otherwise shift x0 by thousands).

A classifier carries what it was trained for: ``data_shape``, ``num_classes`` and
``process_signature`` (the ``network_signature()`` of the process whose x_t it read); guidance
refuses to use it on other data or another process (:mod:`difflab.samplers.classifier_guidance`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..processes import Process
from ..validation import is_int, is_real, positive_int
from .analytic import GaussianMixtureDenoiser
from .embeddings import TimestepEmbedding, batch_timesteps
from .unet import ResBlock

__all__ = ["NoisyClassifier", "MixtureClassifier", "AttentionPool"]


class _MLPBlock(nn.Module):
    """h + W2 SiLU(LN(W1 SiLU(h) + W_e e)): a residual block, the time embedding e added inside.

    The LayerNorm (absent from the denoising MLP, which must keep the scale of x) keeps the
    logits' scale the same at every noise level: x_t's spread changes little but its content
    changes from data to noise, and the classifier only has to rank classes."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.fc2 = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.norm(self.fc1(F.silu(h)) + self.emb(emb)))


class AttentionPool(nn.Module):
    """ADM's attention pooling (Dhariwal & Nichol 2021, app. C; after CLIP's AttentionPool2d):
    the feature map's HW tokens and their mean, each with a learnt position embedding, attend
    (multi-head) with the mean as the only query; its output is the pooled [B, C] feature.
    Unlike global average pooling, it can weigh where in the image evidence lies."""

    def __init__(self, channels: int, tokens: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"AttentionPool: heads ({heads}) must divide the channels ({channels})")
        self.position = nn.Parameter(torch.randn(tokens + 1, channels) / math.sqrt(channels))
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, h: Tensor) -> Tensor:
        tokens = h.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1) + self.position.to(h.dtype)
        pooled, _ = self.attention(tokens[:, :1], tokens, tokens, need_weights=False)
        return pooled[:, 0]


class NoisyClassifier(nn.Module):
    """logits of p(y | x_t, t) for data of shape ``data_shape``: (D,) flat, (C, H, W) images.

    Flat data: x -> Linear(width) -> ``depth`` residual blocks (:class:`_MLPBlock`) with the time
    embedding -> SiLU -> Linear(K). Images: conv3x3(width) -> per level l = 0 .. len(mult) - 1 a
    U-Net ResBlock (:class:`~.unet.ResBlock`, time embedding added) of width * mult[l] channels,
    downsampled 2x between levels -> GroupNorm, SiLU -> :class:`AttentionPool` -> Linear(K).
    ``depth`` is the number of blocks (flat) or of ResBlocks per level (images).

    ``proc``: the process whose states it reads; it scales its input x_t to u = x_t / (a (1 + sigma^2))
    (module docstring) and sets ``process_signature`` (None without a process: the input is read
    as is, and guidance checks no process). ``scale_input=False`` reads x_t as is under a process
    too (the ablation of docs/guidance.md). ``config`` holds the other constructor arguments
    (saved beside the weights).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int,
        width: int = 128,
        depth: int = 2,
        mult: Sequence[int] = (1, 2),
        heads: int = 4,
        norm_groups: int = 8,
        dropout: float = 0.0,
        proc: Optional[Process] = None,
        scale_input: bool = True,
    ) -> None:
        super().__init__()
        if proc is not None and not isinstance(proc, Process):
            raise TypeError(f"NoisyClassifier: proc must be a process of dl.processes, got {type(proc).__name__}")
        if not isinstance(scale_input, bool):
            raise TypeError(f"NoisyClassifier: scale_input must be true or false, got {scale_input!r}")
        if isinstance(data_shape, (str, bytes)) or not isinstance(data_shape, Sequence) or not all(
                is_int(s) and s >= 1 for s in data_shape) or len(data_shape) not in (1, 3):
            raise ValueError(f"NoisyClassifier: data_shape must be (D,) for flat data or (C, H, W) for images, "
                             f"positive integers, got {data_shape!r}")
        num_classes = positive_int("NoisyClassifier: num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(f"NoisyClassifier: num_classes must be >= 2 (a classifier of one class guides nowhere), "
                             f"got {num_classes}")
        width, depth, heads = (positive_int(f"NoisyClassifier: {n}", v) for n, v in
                               (("width", width), ("depth", depth), ("heads", heads)))
        if not is_real(dropout) or not 0 <= dropout < 1:
            raise ValueError(f"NoisyClassifier: dropout must be a probability in [0, 1), got {dropout!r}")
        mult = tuple(positive_int("NoisyClassifier: mult", m) for m in mult)
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_classes = num_classes
        self.config = dict(data_shape=list(self.data_shape), num_classes=num_classes, width=width, depth=depth,
                           mult=list(mult), heads=heads, norm_groups=norm_groups, dropout=float(dropout),
                           scale_input=scale_input)
        self.proc, self.scale_input = proc, scale_input
        self.process_signature: Optional[tuple] = None if proc is None else proc.network_signature()
        self.time_embed = TimestepEmbedding(width)
        if len(self.data_shape) == 1:
            self.inp = nn.Linear(self.data_shape[0], width)
            self.blocks = nn.ModuleList(_MLPBlock(width, dropout) for _ in range(depth))
            self.head = nn.Sequential(nn.SiLU(), nn.Linear(width, num_classes))
            return
        C, H, W = self.data_shape
        if not mult:
            raise ValueError("NoisyClassifier: mult needs at least one level for images")
        if H % 2 ** (len(mult) - 1) or W % 2 ** (len(mult) - 1):
            raise ValueError(f"NoisyClassifier: images of {H}x{W} cannot be halved {len(mult) - 1} times "
                             f"(mult={list(mult)}); use fewer levels")
        channels = [width * m for m in mult]
        if any(c % norm_groups for c in channels) or any(c % heads for c in channels[-1:]):
            raise ValueError(f"NoisyClassifier: norm_groups ({norm_groups}) must divide every level's channels "
                             f"{channels} and heads ({heads}) the last")
        self.inp = nn.Conv2d(C, width, 3, padding=1)
        levels, ch = [], width
        for level, out in enumerate(channels):
            blocks = [ResBlock(ch if i == 0 else out, out, width, dropout, norm_groups) for i in range(depth)]
            if level < len(channels) - 1:
                blocks.append(ResBlock(out, out, width, dropout, norm_groups, resample="down"))
            levels += blocks
            ch = out
        self.blocks = nn.ModuleList(levels)
        side = 2 ** (len(mult) - 1)
        self.out_norm = nn.GroupNorm(norm_groups, ch)
        self.pool = AttentionPool(ch, (H // side) * (W // side), heads)
        self.head = nn.Linear(ch, num_classes)

    def forward(self, x_t: Tensor, t) -> Tensor:
        if not isinstance(x_t, Tensor) or tuple(x_t.shape[1:]) != self.data_shape:
            got = tuple(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
            raise ValueError(f"this NoisyClassifier reads states of shape [B, {', '.join(map(str, self.data_shape))}], "
                             f"got {got}: it was trained for data of shape {self.data_shape}")
        t = batch_timesteps(t, x_t)
        emb = self.time_embed(t)
        scaled = self.proc is not None and self.scale_input
        h = self.inp(x_t * self.input_scale(t).to(x_t.dtype) if scaled else x_t)
        if len(self.data_shape) == 1:
            for block in self.blocks:
                h = block(h, emb)
            return self.head(h)
        emb_act = F.silu(emb)
        for block in self.blocks:
            h = block(h, emb_act)
        return self.head(self.pool(F.silu(self.out_norm(h))))


    def input_scale(self, t: Tensor) -> Tensor:
        """c(t) = 1 / (a (1 + sigma^2)) at the time input t, shaped to broadcast over x_t: u = c x_t."""
        sigma = self.proc.sigma_of_timestep(t.detach().to(torch.float64).cpu())
        a = torch.as_tensor(self.proc.scale(sigma), dtype=torch.float64)
        c = 1.0 / (a * (1.0 + sigma**2))
        return c.to(t.device).view(-1, *([1] * len(self.data_shape)))


class MixtureClassifier(nn.Module):
    """The exact p(y | x_t) of Gaussian-mixture data, y the component (``mixture``'s classes):

        x_t | y = k ~ N(a m_k, diag(a^2 s_k^2 + sigma^2)),   a = proc.scale(sigma_VE), sigma = a sigma_VE
        log p(y = k | x_t) = log_softmax_k [log w_k + log N(x_t; a m_k, a^2 s_k^2 + sigma^2)]

    with sigma_VE = ``proc.sigma_of_timestep(t)``: the classifier convention at the mixture's
    process. Written independently of :class:`~.analytic.GaussianMixtureDenoiser` (it reads its
    means, variances and weights only), so that guidance by it can be checked against the mixture's
    conditional denoiser: by Bayes, grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)."""

    def __init__(self, mixture: GaussianMixtureDenoiser) -> None:
        super().__init__()
        if not isinstance(mixture, GaussianMixtureDenoiser):
            raise TypeError(f"mixture must be a dl.models.GaussianMixtureDenoiser, got {type(mixture).__name__}")
        self.proc: Process = mixture.proc
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("variances", mixture.variances.clone())
        self.register_buffer("log_weights", mixture.log_weights.clone())
        self.num_classes = int(self.means.shape[0])
        self.data_shape = None  # any shape of D = means.shape[1] values
        self.process_signature = self.proc.network_signature()

    def forward(self, x_t: Tensor, t) -> Tensor:
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        if x.shape[1] != self.means.shape[1]:
            raise ValueError(f"this mixture lives in D = {self.means.shape[1]} dimensions, got x_t of shape "
                             f"{tuple(x_t.shape)}")
        t = batch_timesteps(t, x_t)
        sigma_ve = self.proc.sigma_of_timestep(t.to(torch.float64).cpu()).to(x.device)
        a = torch.as_tensor(self.proc.scale(sigma_ve), dtype=torch.float64).to(x.device)[:, None, None]
        var = a**2 * self.variances[None] + (a * sigma_ve[:, None, None]) ** 2  # [B, K, D]
        diff = x[:, None, :] - a * self.means[None]
        log_lik = -0.5 * (diff**2 / var + var.log() + math.log(2 * math.pi)).sum(-1)  # [B, K]
        return torch.log_softmax(log_lik + self.log_weights, dim=1).to(x_t.dtype)
