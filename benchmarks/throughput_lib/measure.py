"""One row measured: build its case, warm up, time, and record memory, rates, FLOPs and checks.

``measure`` returns the row as a dict (JSON-ready); a failing row returns with an ``error``
instead of raising, so that it does not lose the others.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

from . import memory
from .cases import CASES
from .env import Env
from .networks import T, difflab_unet, diffusers_unet
from .profiling import host_sync_check, profile_case


def count_flops(env: Env, library: str) -> dict:
    """FLOPs per image of one training step (forward + backward) and of one forward pass,
    counted by torch.utils.flop_counter on an eager fp32 step at the benchmark's batch."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = (difflab_unet(env.net) if library == "difflab" else diffusers_unet(env.net)).to(env.device)
    out = {}
    for what, batch in (("train", env.batch), ("forward", env.sample_batch)):
        x = torch.randn((batch, *env.shape), device=env.device)
        t = torch.randint(0, T, (batch,), device=env.device)
        model.train(what == "train")
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(what == "train"):
            y = model(x, t)
            y = y if library == "difflab" else y.sample
            if what == "train":
                y.float().square().mean().backward()
        out[what] = counter.get_total_flops() / batch
    del model, x, y
    env.free()
    return out


def measure(spec: dict, env: Env, flops: dict, cases: dict = CASES,
            per_image: Optional[Callable[[dict, str, Env], float]] = None) -> dict:
    """The row ``spec`` measured in ``env``; ``flops``: ``count_flops`` of each library. Another
    benchmark's network (benchmarks/dit_throughput.py) hands its own ``cases`` ((library, what) ->
    a Case class) and ``per_image(flops[library], what, env)``, the FLOPs per image of a row
    (default ``_flops_per_image``: the U-Net's, from a training step and a forward pass)."""
    per_image = per_image or _flops_per_image
    lib, what, opts = spec["library"], spec["what"], spec["options"]
    row = {k: spec[k] for k in ("library", "what", "name", "reference")} | {"options": opts}
    # a file name of letters, digits, '.', '_' and '-' (what the device tool hands back): '+' -> '_'
    label = f"{what}-{lib}-{spec['name']}".replace("+", "_")
    case = None
    try:
        memory.start_row(env, row)
        t0 = time.perf_counter()
        case = cases[(lib, what)](env, opts)
        _warm_up(case, env, what)
        row["setup_and_warmup_s"] = time.perf_counter() - t0  # includes torch.compile and graph capture
        setup_peak = memory.after_warmup(env, row)
        iters = env.train_iters if what == "train" else 1
        times = _timed_runs(case, env, iters)
        memory.after_timing(env, row, setup_peak)
        row.update(_rates(case.images, iters, times, per_image(flops[lib], what, env), env))
        row.update(case.result())
        if what == "sample" and case.out is not None:
            row.update(_sample_check(case.out.float(), env.sample_reference, lib))
        if env.profile_dir is not None:
            row["profile"] = profile_case(case, env, label)
        row["host_syncs_in_iteration"] = host_sync_check(case, env)
    except Exception as err:  # noqa: BLE001 - one failing row must not lose the others
        traceback.print_exc()
        row["error"] = f"{type(err).__name__}: {err}"[:2000]
    finally:
        if case is not None:
            case.close()
        del case  # before the leftover is counted
        torch._dynamo.reset()
        env.free()
        memory.record_leftover(env, row)
    return row


def _warm_up(case, env: Env, what: str) -> None:
    for _ in range(env.train_warmup if what == "train" else env.sample_warmup):
        case.step()
    env.sync()


def _timed_runs(case, env: Env, iters: int) -> list[float]:
    """Seconds of each of ``env.repeats`` runs of ``iters`` iterations, synchronised at both ends."""
    times = []
    for _ in range(env.repeats):
        env.sync()
        t1 = time.perf_counter()
        for _ in range(iters):
            case.step()
        env.sync()
        times.append(time.perf_counter() - t1)
    return times


def _flops_per_image(flops: dict, what: str, env: Env) -> float:
    """A training row's: one step's (forward + backward); a sampling row's: ``sample_steps`` forwards."""
    return flops["train"] if what == "train" else flops["forward"] * env.sample_steps


def _rates(images: int, iters: int, times: list[float], fpi: float, env: Env) -> dict:
    """Images/s (the median run counts), ms per iteration, achieved TFLOP/s and MFU."""
    ips = [images * iters / s for s in times]
    row = {"images_per_s": statistics.median(ips), "images_per_s_runs": ips,
           "ms_per_iteration": 1e3 * statistics.median(times) / iters, "iterations_per_run": iters,
           "images_per_iteration": images, "flops_per_image": fpi}
    row["achieved_tflops"] = fpi * row["images_per_s"] / 1e12
    row["mfu"] = row["achieved_tflops"] / env.peak_tflops if env.peak_tflops else None
    return row


def _sample_check(out: Tensor, references: dict[str, Tensor], lib: str) -> dict:
    """Whether the samples are finite, and how far they are from the first sample batch of their
    library in this run (``references``, which the first one becomes). The max alone says little:
    low-precision rows drift apart over the steps, so the mean is recorded beside it."""
    ref = references.setdefault(lib, out.clone())
    return {"sample_finite": bool(torch.isfinite(out).all()),
            "max_abs_diff_vs_first_row": float((out - ref).abs().max()),
            "mean_abs_diff_vs_first_row": float((out - ref).abs().mean())}
