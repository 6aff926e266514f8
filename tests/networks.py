"""Test helpers for networks: the U-Net starts with zero-initialised layers, which carry no signal."""

import torch


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
