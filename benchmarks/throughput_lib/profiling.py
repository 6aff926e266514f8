"""Where a row's time goes: torch.profiler over a few iterations, device (or CPU) time by kind of
kernel, written as a table per row (or every row's in one file); and the host-sync check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from .env import Env

_KINDS = (  # (kind, substrings of kernel/op names); first match wins -- a heuristic, the table is exact
    ("GroupNorm (difflab triton)", ("_gn_", "group_norm_act")),  # models/group_norm_triton.py's kernels
    ("fused (triton): norm", ("triton_per_fused_native_group_norm", "triton_red_fused_native_group_norm")),
    ("fused (triton): other", ("triton",)),
    ("optimizer + EMA", ("adam", "multi_tensor", "foreach", "lerp")),
    ("attention", ("flash", "fmha", "attention", "softmax", "sdpa")),
    ("normalization", ("group_norm", "groupnorm", "layer_norm", "batch_norm")),
    ("convolution", ("conv", "cudnn", "xmma", "implicit", "winograd", "dgrad", "wgrad", "fprop", "nhwc", "nchw")),
    ("matmul", ("gemm", "cutlass", "matmul", "addmm", "aten::mm", "aten::bmm", "aten::linear")),
    ("copy / layout", ("copy", "transpose", "permute", "contiguous", "aten::cat", "cat_", "memcpy", "memset",
                       "fill", "index")),
    ("elementwise", ("elementwise", "vectorized", "silu", "add", "mul", "div", "sub", "reduce", "pow", "mse")),
)


def _kind(name: str) -> str:
    low = name.lower()
    for kind, keys in _KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_case(case, env: Env, label: str) -> dict:
    """A few iterations under torch.profiler: per-kind device (or CPU) time, busy share, the table."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.cuda else [])
    env.sync()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(env.profile_iters):
            case.step()
        env.sync()
    wall = (time.perf_counter() - t0) / env.profile_iters
    events = prof.key_averages()
    per_iter, busy_ms = _time_by_kind(events, env)
    path, folder, one_file = _profile_path(env, label)
    _write_table(path, one_file, _summary_lines(env, label, wall, busy_ms, per_iter), _event_table(events, env))
    out = {"file": str(path), "wall_ms": wall * 1e3, "busy_ms": busy_ms, "by_kind_ms": per_iter}
    if env.trace:
        trace = folder / (f"{path.stem}-{label}.trace.json" if one_file else f"{label}.trace.json")
        prof.export_chrome_trace(str(trace))
        out["trace"] = str(trace)
    return out


def _time_by_kind(events, env: Env) -> tuple[dict[str, float], float]:
    """Milliseconds per iteration by kind (largest first), and their sum: device kernels' self
    time on a GPU, ops' self CPU time on a CPU."""
    from torch.autograd import DeviceType

    kinds: dict[str, float] = {}
    total = 0.0
    for e in events:
        if env.cuda:
            if e.device_type != DeviceType.CUDA:
                continue
            us = getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0)
        else:
            us = e.self_cpu_time_total
        kinds[_kind(e.key)] = kinds.get(_kind(e.key), 0.0) + us
        total += us
    per_iter = {k: v / 1e3 / env.profile_iters for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    return per_iter, total / 1e3 / env.profile_iters


def _event_table(events, env: Env) -> str:
    """torch.profiler's table, sorted by self device (or CPU) time, 40 rows."""
    sort = "self_device_time_total" if env.cuda else "self_cpu_time_total"
    try:
        return events.table(sort_by=sort, row_limit=40)
    except (KeyError, AttributeError):
        return events.table(sort_by="self_cuda_time_total" if env.cuda else sort, row_limit=40)


def _profile_path(env: Env, label: str) -> tuple[Path, Path, bool]:
    """The row's table file, its folder, and whether every row's table goes into that one file
    (``--profile FILE.txt``) instead of one file per row (``--profile DIR``)."""
    one_file = env.profile_dir.suffix == ".txt"
    folder = env.profile_dir.parent if one_file else env.profile_dir
    folder.mkdir(parents=True, exist_ok=True)
    return (env.profile_dir if one_file else folder / f"{label}.txt"), folder, one_file


def _summary_lines(env: Env, label: str, wall: float, busy_ms: float, per_iter: dict[str, float]) -> list[str]:
    unit = "GPU kernel" if env.cuda else "CPU op (self)"
    lines = [f"{label}: {env.profile_iters} iterations, wall {wall * 1e3:.2f} ms per iteration, "
             f"{unit} time {busy_ms:.2f} ms per iteration"
             + (f" (device busy {busy_ms / (wall * 1e3):.0%}: the rest is launch/host overhead)" if env.cuda else ""),
             "", f"{unit} time by kind (ms per iteration; kinds from kernel names, a heuristic):"]
    return lines + [f"  {k:<24} {v:9.3f}  {v / max(busy_ms, 1e-9):6.1%}" for k, v in per_iter.items()]


def _write_table(path: Path, one_file: bool, lines: list[str], table: str) -> None:
    text = "\n".join(lines) + "\n\n" + table + "\n"
    if one_file:
        with open(path, "a") as f:
            f.write(f"{'=' * 100}\n{text}\n")
    else:
        path.write_text(text)


def host_sync_check(case, env: Env) -> Optional[str]:
    """Run one more iteration with CUDA's sync debug mode set to raise: 'none', or the first sync."""
    if not env.cuda:
        return None
    env.sync()
    try:
        torch.cuda.set_sync_debug_mode("error")
        case.step()
    except RuntimeError as err:
        return str(err).strip().splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        env.sync()
    return "none"
