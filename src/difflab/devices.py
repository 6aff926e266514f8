"""Device names from users (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device) turned
into a usable ``torch.device``, or a clear error: the one check every entry point shares."""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["resolve_device", "graph_stream", "graphs_supported"]

DeviceLike = Union[str, torch.device, None]


def resolve_device(device: DeviceLike, name: str = "device", default: Optional[torch.device] = None) -> torch.device:
    """``device`` as a torch.device that exists here.

    None -> ``default`` (or "auto"); "auto" -> the first CUDA device if there is one, else the CPU.
    A CUDA device on a machine without CUDA, an index past the last GPU, or a name torch does not
    know raise ValueError naming ``name`` (the argument, flag or config field) and the fix.
    """
    if device is None:
        if default is not None:
            return torch.device(default)
        device = "auto"
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: unknown device {device!r}; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: got {str(device)!r} but CUDA is not available on this machine; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: got {str(device)!r} but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type not in ("cpu", "mps", "meta"):
        raise ValueError(f"{name}: unsupported device {device!r}; use auto, cpu, cuda or cuda:<index>")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name}: got {str(device)!r} but MPS is not available on this machine; use auto or cpu")
    return dev


def graphs_supported(device: torch.device) -> bool:
    """Can difflab capture CUDA graphs (a training step, sampler calls) on this device? CUDA only."""
    return device.type == "cuda"


_GRAPH_STREAMS: dict = {}


def graph_stream(device: Union[str, torch.device]) -> "torch.cuda.Stream":
    """The one side stream per CUDA device on which difflab warms up and captures its CUDA graphs
    (the trainer's captured step, the sampler's captured network calls).

    One stream, not one per graph: cuBLAS keeps a workspace per (handle, stream), allocated from
    PyTorch's caching allocator and held for the life of the process (torch's
    CublasHandlePool.cpp). A new stream for every sampler or trainer would each hold one more
    (docs/benchmarks.md has the memory measured), and warming up on one stream but capturing on
    torch's default capture stream held two.
    """
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _GRAPH_STREAMS:
        _GRAPH_STREAMS[index] = torch.cuda.Stream(device=torch.device("cuda", index))
    return _GRAPH_STREAMS[index]
