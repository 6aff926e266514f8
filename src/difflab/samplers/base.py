"""What every sampler shares: drawing noise reproducibly and reporting progress."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["randn", "randn_like", "Callback", "eval_mode", "model_device"]

# callback(step) with step = {"i": index, "sigma": noise level, "x": VE state, "denoised": x0 estimate}
Callback = Optional[Callable[[dict], None]]


def randn(shape, generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise; drawn on the generator's device, then moved, so a CPU generator
    gives the same numbers whatever device the sampler runs on."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def randn_like(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    return randn(x.shape, generator, x.device, x.dtype)


@contextlib.contextmanager
def eval_mode(model):
    """Sample with dropout off, and give the model back in the mode it came in."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def model_device(model, fallback: Optional[Tensor] = None) -> torch.device:
    """Where the model's parameters (or buffers) live; else ``fallback``'s device; else the CPU."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return fallback.device if fallback is not None else torch.device("cpu")
