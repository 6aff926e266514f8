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
