"""A row's memory: CUDA's allocator counters around its phases, the cuBLAS workspace every row is
charged, and the storages live tensors hold (what a row holds, or left behind).

A row's own peak is ``torch.cuda.max_memory_allocated`` from the row's start (building,
compiling, warm-up and CUDA-graph capture included: a graph allocates its working memory while
it is captured and nothing when it replays) less what was allocated when it started, plus one
cuBLAS workspace (see ``graph_stream_workspace``). All functions but the storage walk do
nothing on a CPU.
"""

from __future__ import annotations

import gc
import warnings
from typing import Optional

import torch
from torch import Tensor

from .env import Env


def graph_stream_workspace(env: Env) -> int:
    """Bytes cuBLAS holds for difflab's graph stream (``difflab.devices.graph_stream``: where the
    trainer and the sampler warm up and capture their CUDA graphs), allocated here, once, before
    any row: a workspace per stream for the life of the process, the same size as the default
    stream's, which the FLOP count allocated before the rows too."""
    if not env.cuda:
        return 0
    from difflab.devices import graph_stream

    env.free()
    before = torch.cuda.memory_allocated(env.device)
    side = graph_stream(env.device)
    side.wait_stream(torch.cuda.current_stream(env.device))
    with torch.cuda.stream(side):
        a = torch.ones(16, 16, device=env.device)
        for dtype in (torch.float32, torch.bfloat16):
            (a.to(dtype) @ a.to(dtype)).sum()
    torch.cuda.current_stream(env.device).wait_stream(side)
    env.sync()
    del a
    env.free()
    return torch.cuda.memory_allocated(env.device) - before


def start_row(env: Env, row: dict) -> None:
    """Before the row's case is built: a fresh peak, and what earlier rows left allocated
    (``allocated_before_bytes``, which the row's own figures leave out)."""
    if env.cuda:
        env.free()
        torch.cuda.reset_peak_memory_stats(env.device)
        row["allocated_before_bytes"] = torch.cuda.memory_allocated(env.device)


def after_warmup(env: Env, row: dict) -> Optional[int]:
    """After the warm-up: the peak of building, compiling, warming up and capturing (returned),
    and what stays allocated between iterations (weights, optimizer state, EMA, graph outputs,
    caches: the peak minus this is an iteration's working memory)."""
    if not env.cuda:
        return None
    setup_peak = torch.cuda.max_memory_allocated(env.device)
    torch.cuda.reset_peak_memory_stats(env.device)
    row["allocated_between_iterations_bytes"] = torch.cuda.memory_allocated(env.device)
    # of which tensors Python can see, by dtype (the rest: memory only a CUDA graph, a
    # compiled function or a library holds)
    row["held_visible_mib_by_dtype"] = _live_cuda_mib_by_dtype()
    return setup_peak


def after_timing(env: Env, row: dict, setup_peak: Optional[int]) -> None:
    """After the timed iterations: the row's peaks.

    A CUDA graph allocates its working memory once, while it is captured (in the warm-up);
    replays allocate nothing, so the timed steps alone would not count a graph's activations.
    The row's peak is therefore over everything from its start."""
    if not env.cuda:
        return
    row["peak_mem_steady_bytes"] = torch.cuda.max_memory_allocated(env.device)
    row["peak_mem_bytes"] = max(setup_peak, row["peak_mem_steady_bytes"])
    # every row is charged the one cuBLAS workspace its GEMMs use -- the default stream's
    # (eager and compiled steps, both libraries) or difflab's graph stream's (captured
    # ones) -- both allocated before the rows, so no row pays for it by running first
    row["peak_mem_own_bytes"] = row["peak_mem_bytes"] - row["allocated_before_bytes"] + env.graph_workspace


def record_leftover(env: Env, row: dict) -> None:
    """After the row's case is closed and collected: memory the row did not give back (it would
    count in every later row's raw peak), and its largest tensors when over 1 MiB."""
    if env.cuda and "allocated_before_bytes" in row:
        row["left_allocated_bytes"] = torch.cuda.memory_allocated(env.device) - row["allocated_before_bytes"]
        if row["left_allocated_bytes"] > 2**20:
            row["left_tensors"] = _live_cuda_tensors()


def _live_cuda_storages(device_type: str = "cuda") -> list[tuple[list, str, int]]:
    """(shape, dtype, bytes) of each storage on ``device_type`` that live Python tensors hold,
    each storage counted once (a view and its base are one)."""
    found = {}
    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                if isinstance(obj, Tensor) and obj.device.type == device_type:
                    st = obj.untyped_storage()
                    found.setdefault(st.data_ptr(), (list(obj.shape), str(obj.dtype).removeprefix("torch."),
                                                     st.nbytes()))
            except Exception:  # noqa: BLE001 - objects that fail isinstance/attribute access are not tensors
                continue
    return list(found.values())


def _live_cuda_tensors(top: int = 5) -> list[list]:
    """The largest CUDA tensors the garbage collector can see: [shape, dtype, MiB] (what a row
    left behind)."""
    big = sorted(_live_cuda_storages(), key=lambda v: -v[2])[:top]
    return [[shape, dtype, round(n / 2**20, 1)] for shape, dtype, n in big]


def _live_cuda_mib_by_dtype() -> dict[str, float]:
    """MiB of the CUDA storages live Python tensors hold, by dtype."""
    out: dict[str, float] = {}
    for _, dtype, n in _live_cuda_storages():
        out[dtype] = out.get(dtype, 0.0) + n / 2**20
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
