"""CUDA graphs: a call captured once and replayed on static copies of its inputs."""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import Tensor, nn

from ..devices import graph_stream

__all__ = ["CapturedCall", "weights_fingerprint"]


class CapturedCall:
    """``fn(*inputs)`` captured once as a CUDA graph and replayed on static copies of its inputs.

    ``inputs`` are example tensors (None for an absent one); each call copies its tensors into
    the static inputs (clones of the examples: same shapes, dtypes and memory formats), replays
    and returns a copy of the static output, so a caller may keep earlier outputs. ``warmup``
    eager calls run first on difflab's graph stream (compilation, cuDNN autotuning, lazy
    initialisation: none of it may happen inside a capture). A network call per sampler step
    and a whole sampling run are both one of these.
    """

    def __init__(self, fn: Callable[..., Tensor], inputs: tuple, warmup: int = 2) -> None:
        self.fn = fn
        self.inputs = tuple(t.clone() if t is not None else None for t in inputs)  # clone keeps the format
        self.device = next(t.device for t in inputs if t is not None)
        self._warm_up(warmup)
        self._capture()

    # ---- the CUDA parts (a CPU test replaces these three)
    def _warm_up(self, n: int) -> None:
        side = graph_stream(self.device)  # difflab's one graph stream: no cuBLAS workspace per graph
        side.wait_stream(torch.cuda.current_stream(self.device))
        # the warm-up's random draws (a stochastic sampler's) are given back, so the first replay
        # draws what an uncaptured run seeded alike would
        with torch.random.fork_rng(devices=[self.device]), torch.cuda.stream(side):
            for _ in range(n):
                self.fn(*self.inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=graph_stream(self.device)):
            self.out = self.fn(*self.inputs)

    def _replay(self) -> None:
        self.graph.replay()

    def __call__(self, *inputs) -> Tensor:
        for static, value in zip(self.inputs, inputs):
            if static is not None:
                static.copy_(value)
        self._replay()
        return self.out.clone()


def weights_fingerprint(model: Callable) -> tuple:
    """Where, and in what dtype, a model's parameters and buffers are: a CUDA graph reads them at
    the addresses it was captured with, so a change makes its captures stale (() for a function)."""
    if not isinstance(model, nn.Module):
        return ()
    return tuple((t.data_ptr(), t.dtype) for t in itertools.chain(model.parameters(), model.buffers()))
