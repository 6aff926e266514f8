"""The whole optimizer step as one CUDA graph (``TrainConfig.cuda_graph``).

A small network's training step is thousands of short kernels; launching them from Python
can take longer than running them (docs/benchmarks.md has the measurement). A CUDA graph records the kernels once and replays
them with one launch. :class:`StepGraph` captures everything the trainer does in a step --
forward, backward, gradient clipping, AdamW, the EMA update -- as PyTorch's "whole-network
capture" recipe does (torch.cuda.graphs docs):

1. the first ``warmup`` steps run eagerly on a side stream (cuDNN autotuning, torch.compile,
   the optimizer's moment buffers: all of these must exist before capture);
2. one step is captured: recording runs no kernel, so that step is then replayed like all
   later ones;
3. each step copies its draws (data, noise, timesteps, labels) into the graph's static batch
   and replays.

A graph replays the same kernels on the same memory, so every number that changes from step
to step must live in device memory: the learning rate (``param_groups[i]["lr"]`` becomes a
0-dim device tensor that the LR scheduler fills in place) and the EMA decay d_k (a device
tensor filled before each replay). Python numbers read inside the step are frozen at capture,
so the loss must be a function of the batch's tensors (the built-in losses are; ``batch.step``
is the captured step's). The step's outputs (mean loss, gradient norm) are the graph's own
buffers, overwritten by the next replay.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from ..devices import graph_stream
from .loss import TrainBatch

__all__ = ["StepGraph"]

Update = Callable[[list, Tensor], tuple[Tensor, Tensor]]


def _clone_batch(b: TrainBatch) -> TrainBatch:
    """A copy whose tensors are new buffers (same shapes, dtypes and memory formats)."""
    return dataclasses.replace(b, **{f.name: getattr(b, f.name).clone() for f in dataclasses.fields(b)
                                     if isinstance(getattr(b, f.name), Tensor)})


def _copy_batch(dst: TrainBatch, src: TrainBatch) -> None:
    for f in dataclasses.fields(src):
        s, d = getattr(src, f.name), getattr(dst, f.name)
        if isinstance(s, Tensor):
            if not isinstance(d, Tensor) or d.shape != s.shape or d.dtype != s.dtype:
                raise ValueError(f"the step's batch field {f.name!r} changed shape or dtype after the CUDA "
                                 "graph was captured; a captured step needs fixed shapes (set cuda_graph: false)")
            d.copy_(s)
        elif (s is None) != (d is None):
            raise ValueError(f"the step's batch field {f.name!r} appeared or vanished after capture")


class StepGraph:
    """``update(batches, ema_decay)`` run eagerly for ``warmup`` steps, then captured and replayed.

    ``update`` is the trainer's step body: it zeroes the gradients (set to None), runs forward
    and backward over the micro-batches, clips, steps ``optimizer`` and updates the EMA with the
    0-dim tensor ``ema_decay``; it returns (mean loss, gradient norm) as device tensors.
    """

    def __init__(self, update: Update, optimizer: torch.optim.Optimizer, device: torch.device,
                 warmup: int = 3) -> None:
        if warmup < 1:
            raise ValueError(f"StepGraph needs warmup >= 1 eager step (the optimizer's state must exist "
                             f"before capture), got {warmup}")
        self.update, self.optimizer, self.device = update, optimizer, torch.device(device)
        self.warmup = self.warmup_left = warmup
        self.ema_decay = torch.zeros((), device=self.device)
        self.lrs: list[Optional[Tensor]] = []  # one per parameter group, made on the first step
        self.static: Optional[list[TrainBatch]] = None
        self.out: Optional[tuple[Tensor, Tensor]] = None
        self._replay: Optional[Callable[[], None]] = None
        self._side = None  # the warm-up and capture stream (CUDA: difflab's graph_stream)

    @property
    def captured(self) -> bool:
        return self._replay is not None

    def __call__(self, batches: list[TrainBatch], ema_decay: float) -> tuple[Tensor, Tensor]:
        self._sync_lrs()
        self.ema_decay.fill_(ema_decay)
        if self._replay is None and self.warmup_left > 0:
            self.warmup_left -= 1
            return self._eager(batches)
        if self._replay is None:
            self._check_state()
            self.static = [_clone_batch(b) for b in batches]
            self._replay = self._capture()
        elif len(batches) != len(self.static):
            raise ValueError("the number of micro-batches changed after the CUDA graph was captured")
        else:
            for dst, src in zip(self.static, batches):
                _copy_batch(dst, src)
        self._replay()
        return self.out

    def _sync_lrs(self) -> None:
        """Each group's learning rate as a device tensor the graph reads. A scheduler fills the
        tensor in place (torch >= 2.2); one that stores a float gets it copied in here."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self.lrs):
            if self._replay is not None:
                raise ValueError("optimizer parameter groups were added after the CUDA graph was captured")
            self.lrs += [None] * (len(groups) - len(self.lrs))
        for i, group in enumerate(groups):
            lr, mine = group["lr"], self.lrs[i]
            if mine is None:
                mine = self.lrs[i] = torch.tensor(float(lr), dtype=torch.float32, device=self.device)
            elif lr is not mine:
                mine.fill_(float(lr) if not isinstance(lr, Tensor) else lr)
            group["lr"] = mine

    def _check_state(self) -> None:
        """Every trained parameter must have its AdamW moments before capture: a state created
        inside the graph would be created (zeroed) again by every replay."""
        state = self.optimizer.state
        missing = sum(1 for g in self.optimizer.param_groups for p in g["params"]
                      if p.requires_grad and p not in state)
        if missing:
            raise ValueError(
                f"{missing} trained parameter(s) got no gradient in the {self.warmup} eager warm-up "
                "steps, so AdamW has no state for them to capture (a state made inside the CUDA graph "
                "would be reset by every replay). Freeze unused parameters (requires_grad_(False)) "
                "or set cuda_graph: false"
            )

    # ---- the CUDA parts (a CPU test replaces these two)
    def _eager(self, batches: list[TrainBatch]) -> tuple[Tensor, Tensor]:
        """One step on a side stream, as capture requires of the steps before it."""
        main = torch.cuda.current_stream(self.device)
        if self._side is None:  # difflab's one graph stream: warm-up and capture on it (one cuBLAS
            self._side = graph_stream(self.device)  # workspace for all of difflab's graphs)
        side = self._side
        side.wait_stream(main)
        with torch.cuda.stream(side), warnings.catch_warnings():
            # capturable AdamW warns when it steps uncaptured; here that is the point
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            out = self.update(batches, self.ema_decay)
        main.wait_stream(side)
        return out

    def _capture(self) -> Callable[[], None]:
        """Record one step on the static batch; returns the replay function."""
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated in the graph's memory
        try:  # on the trainer's device, which need not be the current one (device: cuda:1)
            with torch.cuda.device(self.device), torch.cuda.graph(graph, stream=graph_stream(self.device)):
                self.out = self.update(self.static, self.ema_decay)
        except Exception as err:
            raise RuntimeError(
                f"capturing the training step as a CUDA graph failed ({type(err).__name__}: {err}). "
                "Something in the step waits for the host or changes shape: a custom loss that reads "
                "a value with .item()/float() or builds CPU tensors, or fp16 loss scaling. Set "
                "cuda_graph: false (or make the loss a pure function of the batch's tensors)"
            ) from err

        def replay() -> None:
            with torch.cuda.device(self.device):
                graph.replay()

        return replay
