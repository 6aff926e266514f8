"""The U-Net's upsampling convolutions, conv3x3(nearest_2x(x)), in their three forms, timed.

    python benchmarks/upsampling.py                      # GPU: the layers, then the network
    python benchmarks/upsampling.py --no-network         # the layers alone (seconds)
    python benchmarks/upsampling.py --device cpu --tiny  # CPU smoke run

Why: the H100 profile of difflab's fastest sampling row (docs/benchmarks/profile.txt) has two
Inductor kernels at about 150 us each, once a forward pass, named after the sub-pixel form's
gather of its four phases (``..._unsafe_view_cat_clone_permute_view...`` and
``...add_cat_convolution_repeat_select_s...``): about 7x what their memory traffic needs, and
14.5 ms of the 246.6 ms batch. The transposed form writes the interleaved output from the
convolution itself. Which is fastest on a GPU is a measurement, so this times each form:

- the layers alone at the network's upsampling shapes, eager and compiled (Inductor), each checked
  against the plain form in float32;
- the whole network's forward pass (``--network``, default on CUDA) with each form, the way the
  fastest sampling row runs it (bf16 weights, channels_last, compiled, a CUDA graph per call,
  difflab's Triton GroupNorm where triton is installed).

The fastest form overall is the one to pass as ``difflab.accel.accelerate(..., upsample=FORM)``
(or to export as DIFFLAB_UPSAMPLE_CONV, which ``difflab.accel.set_module_forms`` reads when the
argument is left open). Results as JSON (``--out``), written after every measurement.

Measured (H200, 2026-11-26, docs/benchmarks/upsampling.json): the network's forward pass
4.577 ms sub-pixel, 4.409 ms transposed, 4.433 ms plain, so the U-Net now takes the transposed
form (transposed against plain is within that run's noise; against sub-pixel it is not, and on
the CPU transposed is much the fastest with the backward). The layers alone are launch-bound at
these sizes (no CUDA graph around them) and say little. Since that run: the forms are timed in
rotating rounds rather than one block each; the fp32 check runs without TF32; the outputs come
from a perturbed network (a fresh one's output layer is zero, so that run's
``max_abs_diff_vs_plain`` of 0 checked nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from throughput import NETWORKS  # noqa: E402  (the same network as the throughput rows)

import difflab.accel.upsample as accel_up  # noqa: E402
from difflab.accel import accelerate  # noqa: E402
from difflab.files import atomic_write_text  # noqa: E402
from difflab.models.unet import UNet, Upsample  # noqa: E402

FORMS = accel_up.UPSAMPLE_FORMS


def layer_fn(form: str):
    """The layer in one form, as a function of (x, weight, bias)."""
    return {"plain": lambda x, w, b: F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1),
            "subpixel": accel_up.upsample_conv3x3,
            "transposed": accel_up.upsample_conv3x3_transposed}[form]


def upsample_shapes(net: dict, batch: int) -> list[tuple[int, int, int, int]]:
    """(B, C, H, W) of the inputs of the network's upsampling convolutions, in forward order."""
    model = UNet(**net).eval()
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.append((batch, *args[0].shape[1:])))
             for m in model.modules() if isinstance(m, Upsample) and m.conv is not None]
    size = net.get("image_size", 32)
    with torch.no_grad():
        model(torch.zeros(1, net.get("in_channels", 3), size, size), torch.zeros(1, dtype=torch.long))
    for h in hooks:
        h.remove()
    return shapes


def time_ms(fn, iters: int, repeats: int, device: torch.device) -> float:
    """Median over ``repeats`` of the mean milliseconds of ``iters`` calls, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


@contextlib.contextmanager
def full_fp32():
    """float32 convolutions without TF32 (cuDNN's default on), for the checks against plain."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def time_layers(shapes, device, dtype, modes: tuple, iters: int, repeats: int, result: dict, out) -> None:
    """Each form at each shape, eager and/or compiled (``modes``: False, True), against plain in float32."""
    g = torch.Generator(device="cpu").manual_seed(0)
    for B, C, H, W in sorted(set(shapes)):
        x32 = torch.randn(B, C, H, W, generator=g).to(device).contiguous(memory_format=torch.channels_last)
        w32 = (torch.randn(C, C, 3, 3, generator=g) / (3 * C ** 0.5)).to(device)
        b32 = torch.randn(C, generator=g).to(device)
        with torch.no_grad():
            with full_fp32():
                want = layer_fn("plain")(x32, w32, b32)
                diffs = {form: (layer_fn(form)(x32, w32, b32) - want).abs().max().item() for form in FORMS}
            x, w, b = x32.to(dtype), w32.to(dtype), b32.to(dtype)
            for form in FORMS:
                diff = diffs[form]
                for compiled in modes:
                    fn = layer_fn(form)
                    if compiled:
                        torch._dynamo.reset()
                        fn = torch.compile(fn, fullgraph=True)
                    ms = time_ms(lambda: fn(x, w, b), iters, repeats, device)
                    # the least traffic: read x and the weights, write the output once
                    bytes_ = (x.numel() + w.numel() + 4 * x.numel()) * x.element_size()
                    row = {"shape": [B, C, H, W], "calls": shapes.count((B, C, H, W)), "form": form,
                           "compiled": compiled, "us_per_call": 1e3 * ms, "max_abs_diff_fp32": diff,
                           "least_traffic_gb_per_s": bytes_ / (ms * 1e-3) / 1e9}
                    result["layers"].append(row)
                    print(f"  {B} x {C} x {H} x {W} (x{row['calls']})  {form:<10} "
                          f"{'compiled' if compiled else 'eager':<9} {row['us_per_call']:9.1f} us  "
                          f"fp32 diff {diff:.1e}", flush=True)
                    write(result, out)


def time_network(net: dict, batch: int, device, iters: int, repeats: int, result: dict, out) -> None:
    """The whole forward pass per form, as the fastest sampling row runs the network on CUDA (bf16
    weights, channels_last, compiled, a CUDA graph per call, the Triton GroupNorm where triton is
    installed); on a CPU float32 and channels_last alone."""
    if device.type == "cuda":
        triton_ok = True
        try:
            import triton  # noqa: F401
        except ImportError:
            triton_ok = False
        opts = dict(precision="bf16", channels_last=True, compile=True, cuda_graph=True,
                    group_norm="triton" if triton_ok else None)
    else:
        opts = dict(channels_last=True)
    base = UNet(**net).eval()
    size, ch = net.get("image_size", 32), net.get("in_channels", 3)
    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():  # off the zero-initialised output layers, so that the outputs can be compared
        for p in base.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    base.to(device)
    x = torch.randn(batch, ch, size, size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    outputs, fast, times = {}, {}, {form: [] for form in FORMS}
    torch._dynamo.reset()
    try:
        for form in FORMS:  # each a copy of the network with its own form (and its compile and graphs)
            model = copy.deepcopy(base).to(torch.bfloat16 if device.type == "cuda" else torch.float32)
            fm = fast[form] = accelerate(model, upsample=form, **opts)
            t0 = time.perf_counter()
            with torch.no_grad():
                outputs[form] = fm(x, t).float()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result["network"].append({"form": form, "first_call_s": time.perf_counter() - t0,
                                      "options": {k: v for k, v in opts.items() if v is not None}})
        # then timed in rounds, the forms in a rotating order (drift and order effects spread alike)
        for r in range(repeats):
            for form in FORMS[r % len(FORMS):] + FORMS[:r % len(FORMS)]:
                fm = fast[form]
                with torch.no_grad():
                    times[form].append(time_ms(lambda: fm(x, t), iters, 1, device))
    finally:
        for fm in fast.values():
            fm.release()  # the captured graphs' memory
    for row in result["network"]:
        ms = times[row["form"]]
        row.update(ms_per_forward=statistics.median(ms), ms_per_forward_runs=ms,
                   max_abs_diff_vs_plain=(outputs[row["form"]] - outputs["plain"]).abs().max().item())
        print(f"  network forward, batch {batch}: {row['form']:<10} {row['ms_per_forward']:8.3f} ms "
              f"(runs {min(ms):.3f}-{max(ms):.3f}; first call {row['first_call_s']:.1f} s)", flush=True)
    write(result, out)


def write(result: dict, out) -> None:
    if out:
        atomic_write_text(Path(out), json.dumps(result, indent=1))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny network at batch 2 (a smoke run)")
    ap.add_argument("--batch", type=int, default=None, help="default 128 (tiny: 2)")
    ap.add_argument("--iters", type=int, default=None, help="calls per timed run (default 50; tiny: 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="the layers eager only")
    ap.add_argument("--network", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the whole forward pass per form (default: on CUDA)")
    ap.add_argument("--out", default=None, help="JSON results (written after every measurement)")
    args = ap.parse_args(argv)
    for name in ("batch", "iters", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    device = torch.device(args.device)
    net = NETWORKS["tiny" if args.tiny else "ddpm_cifar10"]
    batch = args.batch or (2 if args.tiny else 128)
    iters = args.iters or (2 if args.tiny else 50)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    network = args.network if args.network is not None else device.type == "cuda"
    result = {"meta": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "torch": torch.__version__, "network": "tiny" if args.tiny else "ddpm_cifar10",
                       "batch": batch, "dtype": str(dtype), "iters": iters, "repeats": args.repeats,
                       "command": "python benchmarks/upsampling.py " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:])},
              "layers": [], "network": []}
    shapes = upsample_shapes(net, batch)
    print(f"{result['meta']['device']}: the upsampling convolutions of {result['meta']['network']} "
          f"(inputs {sorted(set(shapes))}), {dtype}, channels_last", flush=True)
    # eager layers (seconds), the network (a compile per form), then the compiled layers
    time_layers(shapes, device, dtype, (False,), iters, args.repeats, result, args.out)
    if network:
        time_network(net, batch, device, iters, args.repeats, result, args.out)
    if not args.no_compile:
        time_layers(shapes, device, dtype, (True,), iters, args.repeats, result, args.out)
    return result


if __name__ == "__main__":
    main()
