"""A CPU stand-in for CUDA-graph capture that is faithful to what a graph freezes.

A CUDA graph records the kernels a piece of code launches, with their arguments, and replays
exactly those: no Python runs on replay, every number that was a Python value at capture stays
what it was, and every tensor is the same memory. :class:`RecordedGraph` does the same one level
up, with PyTorch's dispatcher: while the code runs once under a TorchDispatchMode it records each
aten call (the tensors by identity, everything else by value); ``replay()`` re-issues those calls
without running any Python of the captured code, and copies each call's fresh outputs into the
tensors the capture produced, so later calls (and whoever holds those tensors) read them.

What a real capture refuses, this refuses too (``strict=True``): reading a tensor's value on
the host (``.item()``, ``float(t)``, data-dependent Python branches) raises at capture. The
library reads values of CPU tensors only where a GPU run would skip the read (range checks of
timesteps and labels), so a CPU run of the real trainer uses ``strict=False``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

HOST_READS = {"_local_scalar_dense", "is_nonzero", "equal", "item",
              # data-dependent shapes: on a GPU the host reads the count (nonzero) first
              "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}


def _reads_the_host(func, args) -> bool:
    """Whether the op needs a value on the host: one of HOST_READS, or indexing with a boolean
    mask (x[x > 0], which a GPU runs through nonzero; the CPU's dispatcher shows only index)."""
    name = func.__name__.split(".")[0]
    if name in HOST_READS:
        return True
    if name in ("index", "index_put", "index_put_") and len(args) > 1:
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ())
    return False


class HostSyncInCapture(RuntimeError):
    pass


class _Recorder(TorchDispatchMode):
    def __init__(self, strict: bool) -> None:
        super().__init__()
        self.strict = strict
        self.calls: list[tuple[Any, tuple, dict, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.strict and _reads_the_host(func, args):
            raise HostSyncInCapture(f"{func} reads a tensor's value on the host during capture")
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


def _plain(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def _tensors(x) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


class RecordedGraph:
    """``g = RecordedGraph(); out = g.capture(fn)``, then ``g.replay()`` any number of times.

    Unlike a CUDA capture, ``capture`` runs ``fn`` once for real (the CPU has no record-only
    mode), so the step it computes is the capture's own; replays compute the later ones."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.calls: list = []
        self.replays = 0

    def capture(self, fn: Callable[[], Any]) -> Any:
        rec = _Recorder(self.strict)
        with rec:
            out = fn()
        self.calls = rec.calls
        return out

    def replay(self) -> None:
        """Re-issue the recorded calls on the same memory. They ran below autograd when recorded,
        so they run on detached aliases here (same storage, no autograd bookkeeping)."""
        with torch.no_grad():
            for func, args, kwargs, captured in self.calls:
                fresh = func(*tree_map(_plain, args), **tree_map(_plain, kwargs))
                for old, new in zip(_tensors(captured), _tensors(fresh)):
                    if old.data_ptr() != new.data_ptr():
                        old.detach().copy_(new)
        self.replays += 1
