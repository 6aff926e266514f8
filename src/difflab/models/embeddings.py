"""Embeddings of the diffusion time and of class labels."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..validation import is_real, positive_int

__all__ = ["SinusoidalEmbedding", "TimestepEmbedding", "GuidanceEmbedding", "LabelEmbedding", "batch_timesteps"]


def batch_timesteps(t, x: Tensor) -> Tensor:
    """t as one timestep per sample of x, [B]: a number or a 0-dim tensor is repeated; anything
    else but a real tensor of shape [B] is refused (a [1] once broadcast to every sample)."""
    if not isinstance(t, Tensor):
        t = torch.full((x.shape[0],), float(t), device=x.device)
    elif t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0] or t.dtype == torch.bool or t.is_complex():
        raise ValueError(
            f"t must be a tensor of shape [B] = [{x.shape[0]}] (long or float), got {t.dtype} {tuple(t.shape)}"
        )
    return t


class SinusoidalEmbedding(nn.Module):
    """emb(t)_i = sin(t w_i), emb(t)_{i+h} = cos(t w_i), w_i = max_period^(-i / (h - freq_shift)),
    h = dim / 2, i = 0 .. h-1  (Vaswani et al. 2017).

    ``freq_shift`` = 0 (the default) spaces the h frequencies from 1 down to max_period^(-(h-1)/h);
    the original DDPM code (Ho et al. 2020, TensorFlow) divides by h - 1, so its lowest frequency
    is exactly 1 / max_period: ``freq_shift=1`` (diffusers' ``downscale_freq_shift``, its
    UNet2DModel's ``freq_shift``). Continuous in t, so integer timesteps and fractional ones
    (between grid steps) embed alike.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, freq_shift: float = 0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be an even number >= 2, got {dim}")
        if not is_real(freq_shift) or not math.isfinite(freq_shift) or freq_shift >= dim // 2:
            raise ValueError(f"freq_shift must be a number below dim / 2 = {dim // 2} (the frequencies' "
                             f"denominator dim / 2 - freq_shift must be positive; 0: difflab's default, 1: the "
                             f"original DDPM code's), got {freq_shift!r}")
        self.dim, self.max_period, self.freq_shift = dim, max_period, freq_shift
        self.register_buffer("freqs", self._frequencies(None), persistent=False)  # (None: the default device)

    def _frequencies(self, device: Optional[torch.device]) -> Tensor:
        half = self.dim // 2
        steps = torch.arange(half, dtype=torch.float32, device=device)
        return torch.exp(-math.log(self.max_period) * steps / (half - self.freq_shift))

    def _apply(self, fn, recurse: bool = True):
        """Conversions (``model.to(torch.bfloat16)``, ``.half()``) keep the frequencies float32 (or
        float64): in bf16 the phases t w_i at t ~ 1000 would be off by up to ~2 radians."""
        super()._apply(fn, recurse)
        if self.freqs.dtype not in (torch.float32, torch.float64):
            self.freqs = self._frequencies(self.freqs.device)
        return self

    def forward(self, t: Tensor) -> Tensor:
        if t.ndim != 1:
            raise ValueError(f"t must have shape [B], got {tuple(t.shape)}")
        args = t.float()[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimestepEmbedding(nn.Sequential):
    """Sinusoidal features (:class:`SinusoidalEmbedding`, with its ``freq_shift``), then
    Linear-SiLU-Linear (the DDPM / ADM time MLP)."""

    def __init__(self, dim: int, freq_dim: Optional[int] = None, freq_shift: float = 0) -> None:
        freq_dim = freq_dim or dim
        super().__init__(SinusoidalEmbedding(freq_dim, freq_shift=freq_shift), nn.Linear(freq_dim, dim), nn.SiLU(),
                         nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        sinusoid, fc1, act, fc2 = self
        return fc2(act(fc1(sinusoid(t).to(fc1.weight.dtype))))  # float32 features; match a bf16 model


class GuidanceEmbedding(TimestepEmbedding):
    """The guidance scale w as a network input (latent consistency models, Luo et al. 2023, sec. 4.2):
    sinusoidal features of 100 w (the timestep's frequencies cover w in 0 .. 10), then Linear-SiLU-Linear
    with the last layer zero-initialised, so a network given this input computes what it did
    without it until training changes that (a student starts as its teacher)."""

    SCALE = 100.0

    def __init__(self, dim: int, freq_dim: Optional[int] = None) -> None:
        super().__init__(dim, freq_dim)
        nn.init.zeros_(self[-1].weight)
        nn.init.zeros_(self[-1].bias)

    def forward(self, guidance, x: Tensor) -> Tensor:
        """The embedding [B, dim] of w: a number, or a tensor [B] (one scale per sample of x); None is w = 1."""
        w = batch_timesteps(1.0 if guidance is None else guidance, x)
        if not w.is_floating_point():
            w = w.float()
        return super().forward(self.SCALE * w)


class LabelEmbedding(nn.Embedding):
    """Class labels 0..K-1 plus the null label K ("no label", for classifier-free guidance)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        num_classes = positive_int("num_classes", num_classes)
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes
