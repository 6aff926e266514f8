"""Test helpers for networks: the U-Net starts with zero-initialised layers, which carry no signal."""

import torch

from difflab import models


def perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Give the zero-initialised weights random values, so every path carries signal."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


class ConstantVariance(torch.nn.Module):
    """``base`` made a network that learns its variance (``learn_sigma``, improved DDPM): its
    prediction, then the variance interpolation v everywhere, along dim 1."""

    learn_sigma = True

    def __init__(self, base, v: float) -> None:
        super().__init__()
        self.base, self.v = base, v

    def forward(self, x, t, cond=None):
        out = self.base(x, t)
        return torch.cat([out, torch.full_like(out, self.v)], dim=1)


TEXT_WORDS = ["a", "bold", "7", "left", "on", "the", "thin", "3", "top"]


def tiny_text_model() -> torch.nn.Module:
    """A text model (a DiT on 8x8 images cross-attending to a 1-layer text encoder) with signal on
    every path, in eval mode: ``model.tokenizer.encode(["a bold 7 on the left"])`` conditions it."""
    torch.manual_seed(0)
    model = models.build("text_dit", vocab=TEXT_WORDS, max_length=6, text_width=16, text_depth=1, text_heads=2,
                         in_channels=1, image_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2)
    return perturb(model, scale=0.3).eval()
