"""Device names from users (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device) turned
into a usable ``torch.device``, or a clear error: the one check every entry point shares. And the
number of CPU threads chosen for the work (``choose_cpu_threads``: one for a small step)."""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import torch

__all__ = ["resolve_device", "graph_stream", "graphs_supported", "count_flops", "choose_cpu_threads",
           "use_cpu_threads", "SMALL_STEP_FLOPS"]

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


# ---------------------------------------------------------------------------- CPU threads
# The rule, in one place (the trainer and `difflab demo` use it): a CPU training step of fewer
# than SMALL_STEP_FLOPS floating-point operations (forward and backward of one micro-batch,
# about 3x the forward's matmul/convolution FLOPs) runs on ONE intra-op thread unless told
# otherwise; larger steps keep torch's default (one thread per physical core).
# Why: a small step is hundreds of ops of well under a millisecond each, where a second thread's
# synchronisation costs more than its share of the arithmetic, and when another process holds a
# core the two threads wait for each other at every op. Measured on a 2-core machine
# (docs/benchmarks.md, "CPU threads and the demo under load"): configs/digits.yaml's MLP (0.1-0.6
# GFLOP a step, the demo's 0.56) ran 0.3-1.3x as fast on 2 threads as on 1 on the quiet machine
# and 10-100x slower beside one busy process; U-Net steps of 8-100 GFLOP gained 1.3-1.9x from
# the second core on the quiet machine.
SMALL_STEP_FLOPS = 2e9

# torch's own choice when difflab was imported (OMP_NUM_THREADS, else the physical cores): what
# "torch's default" means below even after a small run set the process to one thread
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def count_flops(fn: Callable[[], object]) -> float:
    """The floating-point operations of ``fn()``'s matmuls and convolutions (torch's
    FlopCounterMode, which counts those, the bulk of a network's work); ``fn`` runs once."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def choose_cpu_threads(step_flops: Optional[float], requested: int = 0) -> tuple[int, str]:
    """``(threads, why)`` for CPU work of ``step_flops`` a step (None: unknown, torch's default).

    ``requested`` > 0 (a config's ``cpu_threads``, a ``--threads`` flag) wins; then an
    ``OMP_NUM_THREADS`` set in the environment; then the rule above (SMALL_STEP_FLOPS).
    """
    if requested:
        return int(requested), "as asked"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    if step_flops is not None and step_flops < SMALL_STEP_FLOPS:
        return 1, f"small model: {step_flops / 1e9:.2g} GFLOP a step"
    size = f"{step_flops / 1e9:.3g} GFLOP a step, " if step_flops is not None else ""
    return _TORCH_DEFAULT_THREADS, f"{size}torch's default"


def use_cpu_threads(step_flops: Optional[float], requested: int = 0, flag: str = "--threads") -> str:
    """Set torch's intra-op threads (process-wide) by ``choose_cpu_threads`` and return the one
    line that says so, e.g. ``cpu threads: 1 (small model: 0.56 GFLOP a step; --threads N to change)``."""
    threads, why = choose_cpu_threads(step_flops, requested)
    torch.set_num_threads(threads)
    return f"cpu threads: {threads} ({why}; {flag} N to change)"
