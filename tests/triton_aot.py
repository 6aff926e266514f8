"""Compile difflab's GroupNorm kernels ahead of time for a GPU target, without a GPU.

Run as a script, without TRITON_INTERPRET (the interpreter replaces the kernels by Python
functions): ``python tests/triton_aot.py 90`` compiles every specialization the DDPM CIFAR-10
U-Net launches (its 11 GroupNorm shapes x the fused variants it uses), plus one-position,
one-tile and 256x256 images, through Triton's whole pipeline (TTIR, TTGIR, LLVM IR, PTX, and ptxas to
cubin) for sm_90, and prints one line per kernel: its registers a thread and its local-memory
(spill) loads, in the PTX and in the machine code (ptxas spills where a register cap,
``maxnreg``, is below what the kernel needs). Used by tests/accel/test_group_norm_triton.py.
"""

import concurrent.futures
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from difflab.accel import group_norm_triton as gnt


def ints(**values) -> tuple[dict, dict]:
    """Triton's specialization of integer arguments: a 1 is compiled in as a constant (and one
    divisible by 16 is marked so, see ``aligned``)."""
    return ({k: "constexpr" if v == 1 else "i32" for k, v in values.items()},
            {k: v for k, v in values.items() if v == 1})


def aligned(signature: dict, **values) -> dict:
    """The ``tt.divisibility`` attributes a launch adds: every pointer (torch's allocations are
    16-byte aligned) and every integer argument divisible by 16 (Triton's BaseBackend rule:
    get_arg_specialization in 3.5, get_int_specialization from 3.6). They change the code
    (vector loads, about half the registers of _gn_apply), so the compiled kernels are the
    launched ones only with them."""
    return {(i,): [["tt.divisibility", 16]] for i, (name, ty) in enumerate(signature.items())
            if ty.startswith("*") or (ty == "i32" and values[name] % 16 == 0)}


def specializations():
    cifar = [(128, 16, 16), (128, 32, 32), (256, 4, 4), (256, 8, 8), (256, 16, 16), (256, 32, 32),
             (384, 16, 16), (384, 32, 32), (512, 4, 4), (512, 8, 8), (512, 16, 16)]
    shapes = [(c, 32, h * w) for c, h, w in cifar] + [(12, 3, 1), (8, 4, 35)]  # one position; C/G = 2
    shapes += [(128, 32, 256 * 256)]  # a 256x256 image: 2048 tiles, combined 64 at a time
    variants = [dict(HAS_ADD=False, HAS_SCALE=False, SILU=True),    # norm1, norm_out
                dict(HAS_ADD=True, HAS_SCALE=False, SILU=True),     # norm2 (DDPM)
                dict(HAS_ADD=False, HAS_SCALE=True, SILU=True),     # norm2 (ADM scale-shift)
                dict(HAS_ADD=False, HAS_SCALE=False, SILU=False)]   # attention's norm
    ptrs = {"add_ptr": "*bf16", "w_ptr": "*fp32", "bias_ptr": "*fp32", "scale_ptr": "*bf16",
            "shift_ptr": "*bf16", "y_ptr": "*bf16"}
    for C, G, HW in shapes:
        for kernel in gnt.KERNELS:  # any may run (a small image: single, or resident in slabs; main dedupes)
            yield from _kernels(plan(C, G, HW, kernel), C, G, HW, variants, ptrs)


def plan(C: int, G: int, HW: int, kernel: str) -> dict:
    """The launch plan for the U-Net's batch of 128, with the given kernels for large images."""
    return gnt.choose_kernels(C, G, HW, 128, kernel)


# The row stride of the per-image operands (add, scale, shift) the U-Net passes: slices of its one
# product of all blocks' embeddings, 4992 values a row in DDPM's CIFAR-10 net (divisible by 16,
# as is a dense row of C channels)
OS = 4992


def _kernels(p: dict, C: int, G: int, HW: int, variants: list, ptrs: dict):
    options = {"num_warps": p["num_warps"], **({"maxnreg": p["maxnreg"]} if "maxnreg" in p else {})}
    tiles = dict(BLOCK_HW=p["BLOCK_HW"], BLOCK_G=p["BLOCK_G"], BLOCK_CG=p["BLOCK_CG"], CG=C // G)
    for v in variants:
        flags = dict(HAS_ADD=v["HAS_ADD"], HAS_W=True, HAS_BIAS=True, HAS_SCALE=v["HAS_SCALE"],
                     HAS_SHIFT=v["HAS_SCALE"], SILU=v["SILU"])
        if p["kernel"] in ("single", "resident", "looped"):  # one kernel: the whole image, or slabs of it
            fn, extra = (gnt._gn_looped if p["kernel"] == "looped" else gnt._gn_single_pass), {"NS": p["NS"]}
            sig, const = ints(HW=HW, C=C, OS=OS, G=G, **extra)
            if fn is gnt._gn_single_pass:  # H*W is a compile-time constant of the single-pass kernel
                sig["HW"], const["HW"] = "constexpr", HW
            signature = {"x_ptr": "*bf16", **ptrs, **sig, "eps": "fp32",
                         **{k: "constexpr" for k in (*tiles, *flags)}}
            yield (fn, signature, {**const, **tiles, **flags}, aligned(signature, HW=HW, C=C, OS=OS, G=G, **extra),
                   options)
            continue
        sig, const = ints(HW=HW, C=C, OS=OS, G=G, NB=p["NB"])
        signature = {"x_ptr": "*bf16", "add_ptr": "*bf16", "part_ptr": "*fp32", **sig,
                     **{k: "constexpr" for k in ("CG", "HAS_ADD", "BLOCK_HW", "BLOCK_G", "BLOCK_CG")}}
        yield (gnt._gn_partial_stats, signature, {**const, **tiles, "HAS_ADD": v["HAS_ADD"]},
               aligned(signature, HW=HW, C=C, OS=OS, G=G, NB=p["NB"]), options)
        signature = {"x_ptr": "*bf16", "add_ptr": "*bf16", "stats_ptr": "*fp32", "w_ptr": "*fp32",
                     "bias_ptr": "*fp32", "scale_ptr": "*bf16", "shift_ptr": "*bf16", "y_ptr": "*bf16", **sig,
                     **{k: "constexpr" for k in (*tiles, *flags)}}
        yield (gnt._gn_apply, signature, {**const, **tiles, **flags},
               aligned(signature, HW=HW, C=C, OS=OS, G=G, NB=p["NB"]), options)
    if p["kernel"] == "tiled":
        sig, const = ints(HW=HW, G=G, NB=p["NB"])
        signature = {"part_ptr": "*fp32", "stats_ptr": "*fp32", **sig, "eps": "fp32",
                     **{k: "constexpr" for k in ("CG", "BLOCK_HW", "BLOCK_NB", "BLOCK_G")}}
        yield (gnt._gn_finalize_stats, signature,
               {**const, "CG": C // G, "BLOCK_HW": p["BLOCK_HW"], "BLOCK_NB": p["BLOCK_NB"], "BLOCK_G": p["BLOCK_G"]},
               aligned(signature, HW=HW, G=G, NB=p["NB"]), {"num_warps": 4})


def _cuobjdump(cubin: bytes, flag: str) -> str:
    """cuobjdump's output for a cubin (the tool comes with triton), or "" without it."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True).stdout


def registers(cubin: bytes) -> str:
    """Registers a thread of the kernel needs, or "?"."""
    found = re.search(r"REG:(\d+)", _cuobjdump(cubin, "-res-usage"))
    return found.group(1) if found else "?"


def spilled_loads(cubin: bytes) -> str:
    """Local-memory loads in the machine code (LDL: what ptxas spilled), or "?"."""
    sass = _cuobjdump(cubin, "-sass")
    return str(len(re.findall(r"\bLDL\b", sass))) if sass else "?"


def unique_specializations() -> list:
    """``specializations()`` without repeats (the same kernel, constants, signature and options)."""
    seen, unique = set(), []
    for spec in specializations():
        fn, signature, constexprs, attrs, options = spec
        key = (fn.__name__, tuple(sorted(constexprs.items())), tuple(sorted(signature.items())),
               tuple(sorted(attrs)), tuple(sorted(options.items())))
        if key not in seen:
            seen.add(key)
            unique.append(spec)
    return unique


def compile_one(arch: int, index: int) -> str:
    """Compile the ``index``-th unique specialization for sm_``arch``: its report line, or a FAILED line.
    By index, so a worker process rebuilds the (unpicklable) kernels itself."""
    fn, signature, constexprs, attrs, options = unique_specializations()[index]
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:  # noqa: BLE001 -- report which specialization, then fail
        return f"FAILED {fn.__name__} {constexprs}: {type(e).__name__}: {str(e)[-400:]}"
    ptx = compiled.asm["ptx"]
    divisible = [name for i, name in enumerate(signature) if (i,) in attrs]
    cubin = compiled.asm["cubin"]
    return (f"ok {fn.__name__} {constexprs} divisible by 16: {divisible} {options['num_warps']} warps, "
            f"maxnreg {options.get('maxnreg', '-')}, cubin {len(cubin)} B, registers {registers(cubin)}, "
            f"local-memory loads {ptx.count('ld.local')}, spilled loads {spilled_loads(cubin)}")


def main(arch: int) -> None:
    # One compile is one core's work for about a second (LLVM, then ptxas): the ~60 of them run in a
    # process per core, which halves the suite's longest test on CI's two cores.
    n = len(unique_specializations())
    workers = max(1, min(len(os.sched_getaffinity(0)), 8))
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        lines = list(pool.map(compile_one, [arch] * n, range(n)))
    for line in lines:
        print(line)
        if line.startswith("FAILED"):
            sys.exit(1)
    print(f"compiled {n} kernels for sm_{arch}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
