"""A residual MLP denoiser for low-dimensional data (2D toy sets)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..validation import check_labels, is_int, is_real
from .embeddings import GuidanceEmbedding, LabelEmbedding, TimestepEmbedding, batch_timesteps

__all__ = ["MLPDenoiser"]


class _Block(nn.Module):
    """h + W2 SiLU(W1 SiLU(h) + W_e emb): a residual block with additive conditioning.

    No normalisation layer: a LayerNorm would discard the scale of x, and with it the
    near-linear behaviour eps ~ x_t that the network must extrapolate at high noise.
    """

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.fc2 = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.fc1(torch.nn.functional.silu(h)) + self.emb(emb))


class MLPDenoiser(nn.Module):
    """model(x_t, t[, cond]) for flat data [B, dim]: time (and label) embedding, residual MLP blocks.

    With ``num_classes=K`` it takes labels 0..K-1 and the null label K (API.md): an integer
    tensor [B] (checked against that range when it lives on the CPU, as in the UNet). With
    ``guidance_embed=True`` it also takes the guidance scale, ``model(x_t, t, cond, guidance=w)``,
    added to the time embedding (:class:`~.embeddings.GuidanceEmbedding`; guided distillation).
    With ``learn_sigma=True`` it outputs [B, 2 dim]: the prediction, then the variance
    interpolation v of improved DDPM (:func:`difflab.processes.call_model_with_variance`).
    """

    def __init__(
        self,
        dim: int = 2,
        width: int = 128,
        depth: int = 3,
        num_classes: Optional[int] = None,
        dropout: float = 0.0,
        guidance_embed: bool = False,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("width", width, 2), ("depth", depth, 1)):
            if not is_int(value) or value < low:
                raise ValueError(f"MLPDenoiser: {name} must be an integer >= {low}, got {value!r}")
        if num_classes is not None and (not is_int(num_classes) or num_classes < 1):
            raise ValueError(f"MLPDenoiser: num_classes must be None (unconditional) or an integer >= 1, "
                             f"got {num_classes!r}")
        if not is_real(dropout) or not 0 <= dropout < 1:
            raise ValueError(f"MLPDenoiser: dropout must be a probability in [0, 1), got {dropout!r}")
        if not isinstance(guidance_embed, bool):
            raise ValueError(f"MLPDenoiser: guidance_embed must be true or false, got {guidance_embed!r}")
        if guidance_embed and num_classes is None:
            raise ValueError("MLPDenoiser: guidance_embed needs a class-conditional model (num_classes=K): "
                             "guidance steers towards a label")
        if not isinstance(learn_sigma, bool):
            raise ValueError(f"MLPDenoiser: learn_sigma must be true or false, got {learn_sigma!r}")
        dim, width, depth = int(dim), int(width), int(depth)
        self.learn_sigma = learn_sigma
        num_classes = int(num_classes) if num_classes is not None else None
        self.dim, self.num_classes = dim, num_classes
        self.time_embed = TimestepEmbedding(width)
        self.label_embed = LabelEmbedding(num_classes, width) if num_classes else None
        self.guidance_embed = GuidanceEmbedding(width) if guidance_embed else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * dim if learn_sigma else dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def guidance_input(self) -> bool:
        """Whether the guidance scale is an input of the network (``guidance_embed=True``)."""
        return self.guidance_embed is not None

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None, guidance=None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPDenoiser(dim={self.dim}) takes x of shape [B, {self.dim}], got {tuple(x.shape)}")
        t = batch_timesteps(t, x)
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if cond is None:  # no label given: the unconditional model
                cond = t.new_full((x.shape[0],), self.num_classes, dtype=torch.long)
            else:  # integer labels [B] in 0 .. num_classes (range checked on the CPU only: no sync)
                cond = check_labels(self, cond, x.shape[0])
            emb = emb + self.label_embed(cond)
        elif cond is not None:
            raise ValueError("this MLPDenoiser is unconditional (num_classes=None) but got labels")
        if self.guidance_embed is not None:
            emb = emb + self.guidance_embed(guidance, x)
        elif guidance is not None:
            raise ValueError("this MLPDenoiser takes no guidance input (build it with guidance_embed=True); "
                             "guide it with dl.sample(..., guidance=w), which calls it twice per step")
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)

