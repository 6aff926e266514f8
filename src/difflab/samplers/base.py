"""What every sampler shares: drawing noise reproducibly and reporting progress."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["randn", "randn_like", "Callback"]

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
