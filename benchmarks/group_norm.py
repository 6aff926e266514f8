"""GroupNorm + SiLU alone, at every shape the DDPM CIFAR-10 U-Net normalizes: how fast is each way
of computing it, and how near the memory bandwidth?

    python benchmarks/group_norm.py                      # GPU: batch 128, bf16, ~1 minute
    python benchmarks/group_norm.py --out gn.json        # also as JSON
    python benchmarks/group_norm.py --device cpu --tiny  # CPU smoke run (Triton's interpreter)

Why: in the H200 profile of compiled sampling (docs/benchmarks/profile_2026-11-26b.txt) about half of the
GPU time was in Inductor's fused GroupNorm kernels, moving data at about a tenth of the memory
bandwidth, in difflab and diffusers alike. This measures that one operation, without the rest of
the network, so the cause and the cure show in a minute instead of a whole throughput run.

The shapes come from the network itself (forward hooks on every GroupNorm, on the meta device).
Each variant computes y = SiLU(GN(x)) in bf16 as the U-Net does under autocast (GroupNorm and
SiLU in float32, the result cast to bf16 by the next convolution) for channels_last x:

- ``eager_nchw``  torch's kernel on NCHW memory (no layout copy: the eager reference);
- ``eager_nhwc``  torch's kernel on channels_last memory (two layout copies);
- ``compiled``    torch.compile of the same function (Inductor's fused kernels, as in the model);
- ``compiled_gn_nhwc``  torch.compile of difflab's NHWC-view formulation (``gn_nhwc`` rows);
- ``triton_tiled``, ``triton_looped``, ``triton_resident``, ``triton_resident2``  difflab's hand-written kernels
  (``difflab/accel/group_norm_triton.py``), large images by the tiled kernels (three launches, x read
  twice), by the looped one (one launch, the second read from L2 where it holds the slab) or
  by the resident one (one launch, one read: a program holds all positions of a narrow slab;
  resident2: with the registers capped so that two programs share an SM);
  an image of at most 8192 elements takes the single-pass kernel in each;
- ``triton_auto``  the same kernels as ``choose_kernels``' rule picks them shape by shape (what runs
  when DIFFLAB_GN_KERNEL is unset).

``--best-per-shape FILE PLAN`` writes the fastest correct way at each shape as the table that
``DIFFLAB_GN_PLAN=PLAN`` (or ``set_module_forms(..., gn_plan=PLAN)``) hands the kernels (per shape,
overriding the rule).

``--faster-kernel FILE`` prints which of them (auto, tiled, looped, resident, resident2) was fastest over a
forward pass in a JSON written by ``--out`` (benchmarks/gpu_session.sh sets DIFFLAB_GN_KERNEL
to it for the throughput rows, or leaves it unset for auto).

Per shape: microseconds per call (median of --repeats timings of --iters calls each; on a GPU
the calls are captured as one CUDA graph and its replays timed with CUDA events, since the
Python and dispatch around an eager call cost more than a small norm's GPU time), the effective bandwidth (x read once plus y written once, over the time: the least
traffic any implementation needs) and the largest difference from ``eager_nchw``. Then the
whole forward pass: the sum over shapes of calls x time, and x 50 for a 50-step DDIM batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # the Triton kernels in the interpreter (before difflab imports them)
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import NETWORKS  # noqa: E402  (the same network as the throughput rows)

from difflab.files import atomic_write_text  # noqa: E402
from difflab.accel.group_norm import group_norm_nhwc  # noqa: E402
from difflab.models.norm import GroupNorm  # noqa: E402
from difflab.models.unet import UNet  # noqa: E402

# HBM bandwidth (GB/s) by GPU name, the first match wins: for the "% of peak" column only.
HBM_GBPS = (("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("GH200", 4000.0), ("H200", 4800.0),
            ("H100", 3350.0), ("A100", 2039.0), ("B200", 8000.0), ("L40S", 864.0), ("RTX 4090", 1008.0))


def norm_shapes(net: dict, batch: int) -> Counter:
    """(C, H, W, groups) -> calls per forward pass, read off the U-Net by hooks (meta device)."""
    with torch.device("meta"):
        model = UNet(in_channels=3, **net)
    seen: Counter = Counter()
    for m in model.modules():
        if isinstance(m, GroupNorm):
            m.register_forward_pre_hook(lambda mod, args: seen.update([(*args[0].shape[1:], mod.num_groups)]))
    with torch.device("meta"), torch.no_grad():
        model(torch.empty(batch, 3, net["image_size"], net["image_size"]), torch.zeros(batch, dtype=torch.long))
    return seen


def variants(groups: int, weight, bias, compile_: bool, triton: bool) -> dict:
    """name -> (input layout, function) for SiLU(GN(x)) with these groups and affine."""
    cuda = weight.is_cuda

    def composite(x):  # the U-Net's eager computation under autocast, cast for the next conv
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return F.silu(F.group_norm(x, groups, weight, bias)).to(x.dtype)

    def nhwc_view(x):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return F.silu(group_norm_nhwc(x, groups, weight, bias)).to(x.dtype)

    out = {"eager_nchw": ("nchw", composite), "eager_nhwc": ("nhwc", composite)}
    if compile_:  # a fresh compile per shape: no recompilation limits, no dynamic shapes
        out["compiled"] = ("nhwc", torch.compile(composite, dynamic=False))
        out["compiled_gn_nhwc"] = ("nhwc", torch.compile(nhwc_view, dynamic=False))
    if triton:
        from difflab.accel import group_norm_triton as gnt

        def kernels(kernel):  # one way for large images; None: choose_kernels' rule (no per-shape plan)
            def fused(x, **operands):
                return gnt.group_norm_act(x, groups, weight, bias, silu=True, kernel=kernel, **operands)

            def fn(x):
                return fused(x)

            fn.fused = fused  # the U-Net's calls with the time embedding added: checked too
            return fn

        for kernel in gnt.KERNELS:
            out[f"triton_{kernel}"] = ("nhwc", kernels(kernel))
        out["triton_auto"] = ("nhwc", kernels(None))  # choose_kernels' rule, shape by shape
    return out


# Largest |difference| from eager_nchw a variant may show and still count as computing the same
# function: bf16 rounding of outputs of magnitude < 16 is at most 0.0625 in each of the two; a
# wrong statistic or a misplaced tile is off by O(1).
SAME_FUNCTION_ATOL = 0.25


def correct(row: dict) -> bool:
    """A row's variant computed the function: its differences from torch's kernel (the plain call,
    and for the Triton kernels the call with the time embedding added, a compiled specialization
    of its own) are finite and within SAME_FUNCTION_ATOL."""
    diffs = [row.get("max_abs_diff", math.nan)] + ([row["max_abs_diff_fused"]] if "max_abs_diff_fused" in row else [])
    return all(math.isfinite(d) and d <= SAME_FUNCTION_ATOL for d in diffs)


# The ways of difflab's Triton kernels for large images (group_norm_triton.KERNELS, which needs
# triton to import; tests check that the two agree)
WAYS = ("tiled", "looped", "resident", "resident2")


def fused_difference(fn, x, groups: int, weight, bias) -> float:
    """Largest |difference| of ``fn.fused`` from the definition in float32 with the time
    embedding added (norm2 of DDPM's blocks: a kernel specialization of its own, the one with the
    most registers; the operand in x's dtype, as the kernels read it). ADM's scale and shift,
    which the benchmarked network does not use, are left to the tests."""
    e = torch.randn(*x.shape[:2], generator=torch.Generator(device=x.device).manual_seed(1), device=x.device)
    e = e.to(x.dtype)
    want = F.silu(F.group_norm(x.float() + e.float()[:, :, None, None], groups, weight, bias))
    return (fn.fused(x, add=e).float() - want).abs().max().item()


def faster_kernel(result: dict) -> str:
    """The Triton kernels (one of WAYS, or "auto": choose_kernels' rule) with the shortest forward
    pass in a result, of those timed at every shape and within SAME_FUNCTION_ATOL of torch's
    kernel at each (a wrong kernel is not chosen however fast); on a tie the first of them."""
    totals = result.get("totals") or {}
    timed = {}
    for k in ("auto", *WAYS):
        rows = [r for r in result.get("rows", []) if r["variant"] == f"triton_{k}"]
        if f"triton_{k}" in totals and rows and all(correct(r) for r in rows):
            timed[k] = totals[f"triton_{k}"]["ms_per_forward"]
    if not timed:
        raise ValueError("no complete and correct timing of triton_auto or "
                         f"{', '.join('triton_' + w for w in WAYS)} in this result")
    return min(timed, key=timed.get)


def best_per_shape(result: dict) -> dict[str, str]:
    """For each shape of a result, the Triton way (one of WAYS) with the shortest
    call among those within SAME_FUNCTION_ATOL of torch's kernel there: {"C,G,HW": way}, the
    table ``DIFFLAB_GN_PLAN`` takes (accel/group_norm_triton.py's load_plan). A shape that no way computed
    correctly is left out (the rule decides it)."""
    best: dict[str, tuple[float, str]] = {}
    for r in result.get("rows", []):
        way = r["variant"].removeprefix("triton_")
        if way not in WAYS or "us_per_call" not in r:
            continue
        if not correct(r):  # (a NaN difference fails too)
            continue
        C, H, W = r["shape"]
        key = f"{C},{r['groups']},{H * W}"
        if key not in best or r["us_per_call"] < best[key][0]:
            best[key] = (r["us_per_call"], way)
    if not best:
        raise ValueError(f"no correct timing of {', '.join('triton_' + w for w in WAYS)} in this result")
    return {k: way for k, (_, way) in sorted(best.items())}


def time_call(fn, x, iters: int, repeats: int) -> tuple[float, bool]:
    """Median seconds per call, and whether it was timed as CUDA graph replays.

    On a GPU the ``iters`` calls are captured as one CUDA graph and the replays timed: a norm
    of the U-Net takes a few microseconds of GPU time, less than the Python and dispatch
    around one eager call, so eager timing would measure the host. The sampler replays graphs
    too (``cuda_graph=True``). Where a capture fails, the calls are timed eagerly."""
    if x.is_cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(x)  # warm-up off the capture: compilation, autotuning, Triton's JIT
        torch.cuda.current_stream().wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(iters):
                    fn(x)
            run, graphed = graph.replay, True
        except Exception:  # noqa: BLE001 -- not capturable: time the eager calls instead
            torch.cuda.synchronize()

            def run():
                for _ in range(iters):
                    fn(x)
            graphed = False
        run()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / iters)
        return statistics.median(times), graphed
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(x)
        times.append((time.perf_counter() - t0) / iters)
    return statistics.median(times), False


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="throughput.py's tiny network, batch 2 (CPU)")
    ap.add_argument("--batch", type=int, default=None, help="images per call (128; tiny 2)")
    ap.add_argument("--iters", type=int, default=None, help="calls per timing (50; CPU 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps, for the per-batch total")
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    ap.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                    help="only these variants (eager_nchw, the reference, is always run)")
    ap.add_argument("--faster-kernel", type=Path, default=None, metavar="JSON",
                    help="print auto, tiled, looped, resident or resident2, whichever was fastest in this "
                         "--out file, and exit")
    ap.add_argument("--best-per-shape", type=Path, nargs=2, default=None, metavar=("JSON", "PLAN"),
                    help="write the fastest correct Triton way per shape of this --out file as a "
                         "DIFFLAB_GN_PLAN table to PLAN, and exit")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.faster_kernel is not None:
        kernel = faster_kernel(json.loads(args.faster_kernel.read_text()))
        print(kernel)
        return {"faster_kernel": kernel}
    if args.best_per_shape is not None:
        source, plan_path = args.best_per_shape
        plan = best_per_shape(json.loads(source.read_text()))
        atomic_write_text(plan_path, json.dumps(plan, indent=1) + "\n")
        print(" ".join(f"{k}:{v}" for k, v in plan.items()))
        return {"plan": plan}
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    net = NETWORKS["tiny" if args.tiny else "ddpm_cifar10"]
    batch = args.batch or (2 if args.tiny else 128)
    iters = args.iters or (50 if cuda else 2)
    try:
        import triton  # noqa: F401
        has_triton = True
    except ImportError:
        has_triton = False
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = next((bw for key, bw in HBM_GBPS if key in name), None) if cuda else None
    dtype = torch.bfloat16 if cuda else torch.float32  # CPU: float32 (bf16 GroupNorm is slow there)

    shapes = norm_shapes(net, batch)
    print(f"{name}: SiLU(GroupNorm(x)) at the {sum(shapes.values())} GroupNorm calls of one forward pass "
          f"({len(shapes)} shapes), batch {batch}, {str(dtype)[6:]}, channels_last; peak {peak or '?'} GB/s")
    header = f"{'C x H x W / groups':>22} {'calls':>5} {'variant':>17} {'us/call':>9} {'GB/s':>7} {'% peak':>6} {'max diff':>9}"
    print(header)
    rows, per_forward = [], Counter()
    meta = {"device": name, "torch": torch.__version__, "batch": batch, "dtype": str(dtype),
            "network": "tiny" if args.tiny else "ddpm_cifar10", "iters": iters, "repeats": args.repeats,
            "peak_gbps": peak, "steps": args.steps,
            "command": "python benchmarks/group_norm.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    g = torch.Generator(device="cpu").manual_seed(0)
    for (C, H, W, G), calls in sorted(shapes.items()):
        x = (torch.randn(batch, C, H, W, generator=g) * 2 + 0.5).to(device, dtype)
        weight = torch.randn(C, generator=g).to(device)
        bias = torch.randn(C, generator=g).to(device)
        inputs = {"nchw": x.contiguous(), "nhwc": x.contiguous(memory_format=torch.channels_last)}
        fns = variants(G, weight, bias, compile_=not args.no_compile, triton=has_triton)
        if args.variants is not None:
            unknown = set(args.variants) - set(fns)
            if unknown:
                raise SystemExit(f"--variants: no variant {sorted(unknown)}; there are {sorted(fns)}")
            fns = {k: v for k, v in fns.items() if k == "eager_nchw" or k in args.variants}
        with torch.no_grad():
            ref = fns["eager_nchw"][1](inputs["nchw"]).float()
            for variant, (layout, fn) in fns.items():
                try:
                    y = fn(inputs[layout])
                    diff = (y.float() - ref).abs().max().item()
                    fused_diff = (fused_difference(fn, inputs[layout], G, weight, bias)
                                  if hasattr(fn, "fused") else None)
                    seconds, graphed = time_call(fn, inputs[layout], iters, args.repeats)
                except Exception as e:  # noqa: BLE001 -- a failing variant is a result, not the end
                    rows.append({"shape": [C, H, W], "groups": G, "calls": calls, "variant": variant,
                                 "error": f"{type(e).__name__}: {e}"[:300]})
                    print(f"{f'{C} x {H} x {W} / {G}':>22} {calls:>5} {variant:>17}  failed: {rows[-1]['error']}")
                    continue
                gbps = 2 * x.numel() * x.element_size() / seconds / 1e9
                rows.append({"shape": [C, H, W], "groups": G, "calls": calls, "variant": variant,
                             "us_per_call": seconds * 1e6, "effective_gbps": gbps,
                             "fraction_of_peak": gbps / peak if peak else None, "max_abs_diff": diff,
                             **({"max_abs_diff_fused": fused_diff} if fused_diff is not None else {}),
                             "cuda_graph": graphed})
                per_forward[variant] += calls * seconds
                pct = f"{100 * gbps / peak:5.1f}%" if peak else "     -"
                print(f"{f'{C} x {H} x {W} / {G}':>22} {calls:>5} {variant:>17} {seconds * 1e6:9.1f} "
                      f"{gbps:7.0f} {pct:>6} {diff:9.2e}{'' if graphed or not cuda else '  (eager: not capturable)'}")
        if args.out:  # after every shape: a run stopped by a time limit keeps what it measured
            atomic_write_text(args.out, json.dumps({"meta": meta, "rows": rows, "totals": None}, indent=1))
    complete = {v for v in per_forward if all(r["variant"] != v or "error" not in r for r in rows)}
    totals = {v: {"ms_per_forward": s * 1e3, "ms_per_sampled_batch": s * 1e3 * args.steps}
              for v, s in per_forward.items() if v in complete}
    print(f"\nAll GroupNorm + SiLU calls of one forward pass (and of a {args.steps}-step sampled batch):")
    for v, t in totals.items():
        print(f"  {v:>17}: {t['ms_per_forward']:8.3f} ms  ({t['ms_per_sampled_batch']:8.1f} ms)")
    result = {"meta": meta, "rows": rows, "totals": totals}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
