"""The rows: every configuration of each library, and which of them a run measures, in which order.

A row is a dict: library ("difflab" or "diffusers"), what ("train" or "sample"), name, whether it
is one of the issue's reference configurations, and options (the speed options its case takes).
"""

from __future__ import annotations

import fnmatch
from typing import Optional

# What a row costs on a GPU before one of its kind has run (seconds: building the network,
# torch.compile on a 16-core host, warm-up, the timed runs, the profile), by (what, compiled).
# Only --time-budget uses them; once a row of a kind has run, the slowest such row counts instead.
ROW_COST_GUESS_S = {("train", True): 150.0, ("train", False): 30.0,
                    ("sample", True): 90.0, ("sample", False): 30.0}
TINY_ROW_COST_GUESS_S = 5.0


def _row(lib: str, what: str, name: str, reference: bool = False, **opts) -> dict:
    return {"library": lib, "what": what, "name": name, "reference": reference, "options": opts}


def row_key(row: dict) -> tuple[str, str, str]:
    """A row's identity in a results file: (library, what, name)."""
    return row["library"], row["what"], row["name"]


def row_specs(cpu: bool) -> list[dict]:
    """Every row: library, what, name, options, whether it is one of the issue's reference rows.

    Order: for each tier, diffusers first, then difflab, so slow drifts hit both alike.
    """
    if cpu:
        return _cpu_rows()
    return _train_ladder() + _train_graph_rows() + _sample_ladder() + _sample_triton_rows()


def _cpu_rows() -> list[dict]:
    """CUDA-only options (bf16 autocast in the trainer, compile, graphs) are left out."""
    return [
        _row("diffusers", "train", "fp32", True, precision="fp32"),
        _row("difflab", "train", "fp32", precision="fp32", fused=False),
        _row("diffusers", "sample", "fp32", True, precision="fp32"),
        _row("difflab", "sample", "fp32", precision="fp32"),
        _row("difflab", "sample", "fp32+cl", precision="fp32", channels_last=True),
        _row("difflab", "sample", "fp32+cl+gn_nhwc", precision="fp32", channels_last=True, gn_nhwc="always"),
    ]


def _train_ladder() -> list[dict]:
    """Training: the references, and difflab adding one option per row up to the compiled step."""
    return [
        _row("diffusers", "train", "fp32", True, precision="fp32"),
        _row("difflab", "train", "fp32", precision="fp32", fused=False),
        _row("diffusers", "train", "bf16", True, precision="bf16"),
        _row("difflab", "train", "bf16", precision="bf16", fused=False),
        _row("difflab", "train", "bf16+fused", precision="bf16", fused=True),
        _row("difflab", "train", "bf16+fused+cl", precision="bf16", fused=True, channels_last=True),
        _row("diffusers", "train", "bf16+compile", True, precision="bf16", compile=True),
        _row("difflab", "train", "bf16+fused+cl+compile", precision="bf16", fused=True, channels_last=True,
             compile="model"),
        _row("difflab", "train", "bf16+fused+cl+compile_step", precision="bf16", fused=True, channels_last=True,
             compile="step"),
    ]


def _train_graph_rows() -> list[dict]:
    """Training: the compiled step replayed as CUDA graphs, without the EMA copy, with GroupNorm on
    the NHWC view, with a smaller activation budget."""
    return [
        # the compiled step is host-bound (docs/benchmarks.md), so replay it as CUDA graphs; and
        # without channels_last, whose layout copies showed in the step's profile
        _row("difflab", "train", "bf16+fused+cl+compile_step+graphs", precision="bf16", fused=True,
             channels_last=True, compile="step", compile_options={"mode": "reduce-overhead"}),
        _row("difflab", "train", "bf16+fused+compile_step", precision="bf16", fused=True, compile="step"),
        # the trainer's own capture of the whole step (forward, backward, clip, AdamW, EMA): one graph
        _row("difflab", "train", "bf16+fused+cl+compile_step+step_graph", precision="bf16", fused=True,
             channels_last=True, compile="step", cuda_graph=True),
        _row("difflab", "train", "bf16+fused+compile_step+step_graph", precision="bf16", fused=True,
             compile="step", cuda_graph=True),
        _row("difflab", "train", "bf16+fused+cl+step_graph", precision="bf16", fused=True, channels_last=True,
             cuda_graph=True),
        # eager + graph, no layout option: the cheap canary whose options every captured row includes
        # (if it fails, they are skipped instead of each compiling first)
        _row("difflab", "train", "bf16+fused+step_graph", precision="bf16", fused=True, cuda_graph=True),
        # the same work as diffusers' step, which keeps no EMA (ema.decay 0: no copy, no update)
        _row("difflab", "train", "bf16+fused+cl+compile_step+step_graph+no_ema", precision="bf16", fused=True,
             channels_last=True, compile="step", cuda_graph=True, ema=False),
        _row("difflab", "train", "bf16+fused+compile_step+step_graph+no_ema", precision="bf16", fused=True,
             compile="step", cuda_graph=True, ema=False),
        # the partitioner keeps 90% of the activations it would keep, recomputing the rest in the
        # backward: a margin under diffusers' peak memory
        _row("difflab", "train", "bf16+fused+compile_step+step_graph+no_ema+amb0.9", precision="bf16", fused=True,
             compile="step", cuda_graph=True, ema=False, activation_memory_budget=0.9),
        # GroupNorm on the NHWC view (no layout copies; models/norm.py): eager, and as Inductor sees it
        _row("difflab", "train", "bf16+fused+cl+gn_nhwc", precision="bf16", fused=True, channels_last=True,
             gn_nhwc="always"),
        _row("difflab", "train", "bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc", precision="bf16",
             fused=True, channels_last=True, compile="step", cuda_graph=True, ema=False, gn_nhwc="compile"),
        _row("difflab", "train", "bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc+amb0.9", precision="bf16",
             fused=True, channels_last=True, compile="step", cuda_graph=True, ema=False, gn_nhwc="compile",
             activation_memory_budget=0.9),
        _row("diffusers", "train", "bf16+compile+cl+fused", precision="bf16", compile=True, channels_last=True,
             fused=True),
    ]


def _sample_ladder() -> list[dict]:
    """Sampling: the references, and difflab adding one option per row up to compile + CUDA graph."""
    return [
        _row("diffusers", "sample", "fp32", True, precision="fp32"),
        _row("difflab", "sample", "fp32", precision="fp32"),
        _row("diffusers", "sample", "bf16", True, precision="bf16"),
        _row("difflab", "sample", "bf16", precision="bf16"),
        _row("difflab", "sample", "bf16+cl", precision="bf16", channels_last=True),
        _row("diffusers", "sample", "bf16+compile", True, precision="bf16", compile=True),
        _row("difflab", "sample", "bf16+cl+compile", precision="bf16", channels_last=True, compile=True),
        _row("difflab", "sample", "bf16+cl+compile+graph", precision="bf16", channels_last=True, compile=True,
             cuda_graph=True),
        _row("difflab", "sample", "bf16+cl+compile+graph+gn_nhwc", precision="bf16", channels_last=True,
             compile=True, cuda_graph=True, gn_nhwc="compile"),
        _row("difflab", "sample", "bf16+cl+gn_nhwc", precision="bf16", channels_last=True, gn_nhwc="always"),
    ]


def _sample_triton_rows() -> list[dict]:
    """Sampling: difflab's Triton GroupNorm kernels, the whole run as one graph, the network stored
    in bf16, and Inductor's options (freezing, combo kernels, coordinate-descent tuning)."""
    return [
        # difflab's own GroupNorm kernels (models/group_norm_triton.py: two reads and one write of
        # the activations, the time embedding and SiLU fused in): compiled around them; eager around
        # them and captured (cuDNN adds the convolutions' bias in its epilogue, where under compile
        # Inductor adds it in a kernel of its own before the opaque norm); eager
        _row("difflab", "sample", "bf16+cl+compile+graph+gn_triton", precision="bf16", channels_last=True,
             compile=True, cuda_graph=True, gn_nhwc="triton"),
        _row("difflab", "sample", "bf16+cl+graph+gn_triton", precision="bf16", channels_last=True,
             cuda_graph=True, gn_nhwc="triton"),
        # the whole 50-step run as one CUDA graph (cuda_graph="loop"): no launch or host gap
        # between steps
        _row("difflab", "sample", "bf16+cl+compile+loop+gn_triton", precision="bf16", channels_last=True,
             compile=True, cuda_graph="loop", gn_nhwc="triton"),
        # the candidate best: the whole run as one graph around a frozen network (no gaps between
        # steps, no per-forward weight casts), with the Triton norms
        _row("difflab", "sample", "bf16+cl+compile_frozen+loop+gn_triton", precision="bf16", channels_last=True,
             compile={"options": {"freezing": True}}, cuda_graph="loop", gn_nhwc="triton"),
        # the same without freezing, the network stored in bf16 instead (no casts to fold, and half
        # the weights' memory, where freezing keeps bf16 copies beside the float32 weights); and
        # diffusers' network stored in bf16 as a reference of its own, since that is its users' way too
        _row("difflab", "sample", "bf16w+cl+compile+loop+gn_triton", precision="bf16", weights="bf16",
             channels_last=True, compile=True, cuda_graph="loop", gn_nhwc="triton"),
        _row("diffusers", "sample", "bf16w+compile", True, precision="bf16", weights="bf16", compile=True),
        _row("difflab", "sample", "bf16w+cl+compile+graph+gn_triton", precision="bf16", weights="bf16",
             channels_last=True, compile=True, cuda_graph=True, gn_nhwc="triton"),
        _row("difflab", "sample", "bf16+cl+gn_triton", precision="bf16", channels_last=True, gn_nhwc="triton"),
        # with the Triton norms, the next costs in the profile (docs/benchmarks.md) are the weight
        # casts of every forward (freezing does them once) and Inductor's other kernels
        _row("difflab", "sample", "bf16+cl+compile_frozen+graph+gn_triton", precision="bf16", channels_last=True,
             compile={"options": {"freezing": True}}, cuda_graph=True, gn_nhwc="triton"),
        _row("difflab", "sample", "bf16+cl+compile_cdt+graph+gn_triton", precision="bf16", channels_last=True,
             compile={"options": {"coordinate_descent_tuning": True}}, cuda_graph=True, gn_nhwc="triton"),
        # Inductor's combo kernels: independent small pointwise kernels (the weight casts of a
        # forward pass) launched as a few
        _row("difflab", "sample", "bf16+cl+compile_combo+graph+gn_triton", precision="bf16", channels_last=True,
             compile={"options": {"combo_kernels": True}}, cuda_graph=True, gn_nhwc="triton"),
        # Inductor's coordinate-descent tuning of its Triton kernels' launch configurations (its
        # fused GroupNorm kernels were far from the memory bandwidth); costs compile time only
        _row("difflab", "sample", "bf16+cl+compile_cdt+graph", precision="bf16", channels_last=True,
             compile={"options": {"coordinate_descent_tuning": True}}, cuda_graph=True),
        # Inductor's freezing: weights become constants, their bf16 casts and layouts computed once
        # at compile time instead of every call (for a finished model only: later weight updates
        # are not seen)
        _row("difflab", "sample", "bf16+cl+compile_frozen+graph", precision="bf16", channels_last=True,
             compile={"options": {"freezing": True}}, cuda_graph=True),
        _row("diffusers", "sample", "bf16+compile+cl", precision="bf16", compile=True, channels_last=True),
    ]


def select_rows(specs: list[dict], globs: Optional[list[str]]) -> list[dict]:
    """The rows matching any pattern (library/what/name), in the patterns' order: a row comes
    where the first pattern that matches it stands (so ``'a/b/c' '*'`` puts a/b/c first)."""
    if globs is None:
        return list(specs)
    out: list[dict] = []
    for g in globs:
        out += [s for s in specs if s not in out and fnmatch.fnmatch(f"{s['library']}/{s['what']}/{s['name']}", g)]
    return out


def row_kind(spec: dict) -> tuple[str, bool]:
    """What the time budget guesses a row's cost by: (what, compiled)."""
    return spec["what"], bool(spec["options"].get("compile"))


def doomed_by(spec: dict, failed: list[dict]) -> Optional[dict]:
    """A failed row of the same library and kind whose options ``spec`` all has (with the same
    values): ``spec`` would fail the same way, so it need not spend its compile time finding out."""
    for f in failed:
        if (f["library"], f["what"]) == (spec["library"], spec["what"]) and \
                all(spec["options"].get(k, object()) == v for k, v in f["options"].items()):
            return f
    return None


def skip_reason(spec: dict, failed: list[dict], slowest: dict, left: Optional[float], tiny: bool) -> Optional[str]:
    """Why ``spec`` is not measured in this run, or None: a failed row's options are all among its
    own, or (``left``: seconds of the time budget left) it should not end within the budget, judged
    by the slowest row of its kind so far (``slowest``) or a guess."""
    cause = doomed_by(spec, failed)
    if cause is not None:
        return f"row {cause['name']!r}, whose options it includes, failed"
    if left is None:
        return None
    need = slowest.get(row_kind(spec)) or (TINY_ROW_COST_GUESS_S if tiny else ROW_COST_GUESS_S[row_kind(spec)])
    if need > left:
        return f"needs ~{need:.0f} s, {max(left, 0):.0f} s of the budget left"
    return None
