"""Exponential moving average of weights (Polyak averaging), the weights one samples with."""

from __future__ import annotations

import copy
from typing import Union

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """theta_ema <- d_k theta_ema + (1 - d_k) theta, with d_k = min(decay, (1 + k) / (warmup + k)).

    The warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates; warmup = 10 gives
    its (1 + k) / (10 + k)) lets early averages track the fast-moving weights; ``warmup=0``
    uses ``decay`` from the first step. The update is one fused foreach lerp over all tensors.

    ``decay = 0`` averages nothing (theta_ema = theta after every step), so the EMA weights are
    the model's own: ``self.model`` is ``model`` itself, no copy is kept (a model's worth of
    memory saved) and updates do nothing. Sample from it in eval mode (the trainer does).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 10) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"EMA warmup must be >= 0, got {warmup}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.is_model = decay == 0  # no averaging: the model's own weights
        self.model = model if self.is_model else copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        k = self.num_updates
        return self.decay if self.warmup == 0 else min(self.decay, (1 + k) / (self.warmup + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step with the current decay d_k (then k <- k + 1)."""
        self.apply(model, self.current_decay())
        self.num_updates += 1

    @torch.no_grad()
    def apply(self, model: nn.Module, decay: Union[float, Tensor]) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta for a given d, without counting an update.

        ``decay`` may be a 0-dim tensor on the weights' device: the update then reads it there
        (three foreach kernels, d (theta_ema - theta) + theta), so a captured CUDA graph of the
        training step sees each step's d_k (the trainer fills the tensor before each replay).
        """
        if self.is_model:
            return
        src = [p.detach() for p in model.parameters()]
        dst = list(self.model.parameters())
        if len(src) != len(dst):
            raise ValueError("EMA.update got a model with a different set of parameters")
        floats = [(e, s) for e, s in zip(dst, src) if e.is_floating_point()]
        if floats:
            e_list, s_list = [e for e, _ in floats], [s for _, s in floats]
            if isinstance(decay, Tensor):
                torch._foreach_sub_(e_list, s_list)
                torch._foreach_mul_(e_list, decay)
                torch._foreach_add_(e_list, s_list)
            else:
                torch._foreach_lerp_(e_list, s_list, 1.0 - decay)
        for e, s in zip(self.model.buffers(), model.buffers()):  # e.g. norm statistics: copy
            e.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup = state["decay"], state["warmup"]
        self.num_updates = state["num_updates"]
        if not self.is_model:  # else they are the model's weights, loaded with the model
            self.model.load_state_dict(state["model"])
