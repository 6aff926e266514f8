"""Exponential moving average of weights (Polyak averaging), the weights one samples with."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """theta_ema <- d_k theta_ema + (1 - d_k) theta, with d_k = min(decay, (1 + k) / (warmup + k)).

    The warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates; warmup = 10 gives
    its (1 + k) / (10 + k)) lets early averages track the fast-moving weights; ``warmup=0``
    uses ``decay`` from the first step. The update is one fused foreach lerp over all tensors.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 10) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"EMA warmup must be >= 0, got {warmup}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        k = self.num_updates
        return self.decay if self.warmup == 0 else min(self.decay, (1 + k) / (self.warmup + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = [p.detach() for p in model.parameters()]
        dst = list(self.model.parameters())
        if len(src) != len(dst):
            raise ValueError("EMA.update got a model with a different set of parameters")
        floats = [(e, s) for e, s in zip(dst, src) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [s for _, s in floats], 1.0 - d)
        for e, s in zip(self.model.buffers(), model.buffers()):  # e.g. norm statistics: copy
            e.copy_(s)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup = state["decay"], state["warmup"]
        self.num_updates = state["num_updates"]
        self.model.load_state_dict(state["model"])
