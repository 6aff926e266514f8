"""A network with some of its inputs bound: the model convention ``model(x_t, t, cond)`` again.

A super-resolution network takes a low-resolution image and a mask-conditioned one known data and
a mask beside (x_t, t, cond); the samplers and losses call only ``model(x_t, t, cond)``. A
:class:`BoundInputs` keeps those extra inputs for one sampling run or one loss (``WithLowRes``,
``WithKnown``) and passes on what the samplers read of the network it wraps.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..validation import model_dtype

__all__ = ["BoundInputs"]


class BoundInputs(nn.Module):
    """``model`` with inputs bound by a subclass (its ``forward``); ``bound`` names them in errors."""

    bound = "these inputs"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_classes = getattr(model, "num_classes", None)
        self.train(model.training)  # samplers toggle eval/train: keep the wrapped model's mode

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The wrapped model's input dtype (an accelerated 16-bit network's is float32)."""
        return model_dtype(self.model)

    def sampling_run(self, run, settings, x_T: Tensor, cond: Optional[Tensor], generator, callback) -> Tensor:
        """A sampling run as the wrapped model runs one (the samplers' hook): in its memory format,
        but never captured whole, since a captured run would keep the bound inputs for every later one."""
        inner = getattr(self.model, "sampling_run", None)
        if inner is None:
            return run(x_T, cond, generator, callback)
        if getattr(self.model, "cuda_graph", False) == "loop":
            raise ValueError(f"a run captured whole (cuda_graph='loop') would keep {self.bound} for every later "
                             "run; use cuda_graph=True (each network call captured)")
        return inner(run, settings, x_T, cond, generator, callback)
