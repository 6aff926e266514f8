"""Training and sampling throughput: difflab's U-Net against diffusers' UNet2DModel, same run.

The network is DDPM's CIFAR-10 U-Net (Ho et al. 2020, App. B; 35,746,307 parameters in both
libraries: ch 128, mult (1, 2, 2, 2), 2 residual blocks per level, one-head attention at
16x16 and in the middle, dropout 0.1), on 32x32x3 images, batch 128. diffusers' side is the
configuration of google/ddpm-cifar10-32 (UNet2DModel, attention_head_dim None,
downsample_padding 0) with the same dropout. Both libraries run in this one process, on the
same device, batch and precision:

* train: images/s of the full optimizer step. difflab: ``Trainer.train_step`` -- what
  ``difflab train`` runs: draws, forward, eps-MSE, backward, grad-norm clipping at 1, AdamW,
  EMA update. diffusers: the step of its examples without the extras: DDPMScheduler.add_noise,
  UNet2DModel, MSE, backward, AdamW (no clipping, no EMA: difflab's step does strictly more).
* sample: images/s of a full 50-step DDIM batch. difflab: ``dl.sample(..., sampler="ddim",
  steps=50, clip_x0=1)``; diffusers: DDIMScheduler's loop as DDIMPipeline runs it
  (clip_sample as in the hub config).
* peak memory: the row's own, ``peak_mem_own_bytes`` = ``torch.cuda.max_memory_allocated`` from
  the row's start (building, compiling, warm-up and CUDA-graph capture included -- a graph
  allocates its working memory while it is captured and nothing when it replays) less what was
  allocated when it started (``allocated_before_bytes``: tensors earlier rows left behind, which
  the summary must not charge to whichever row happens to run later; ``left_allocated_bytes``
  and ``left_tensors`` name them), plus one cuBLAS workspace (``graph_stream_workspace_bytes``
  in the meta, 32 MiB on Hopper): each row's GEMMs run on one stream, the default one (eager
  and compiled steps) or difflab's graph stream (captured ones), and cuBLAS holds a workspace
  per stream for the life of the process. Both are allocated before the rows (the FLOP count,
  ``graph_stream_workspace``), so every row is charged the one it needs, whichever runs first. ``peak_mem_bytes`` is the raw peak, ``peak_mem_steady_bytes``
  the timed iterations alone; ``allocated_between_iterations_bytes``, "held" in --report (less
  ``allocated_before_bytes``), what stays allocated between iterations: weights, optimizer
  state, EMA, graph outputs),
  FLOPs per image (``torch.utils.flop_counter`` on one eager step: forward + backward for
  training, forward x steps for sampling) and MFU against the GPU's dense bf16 peak.

Configurations: diffusers in fp32 (TF32), bf16 autocast and bf16 + torch.compile -- the
issue's reference rows, the best of which is "diffusers' best" -- plus an informational row
with channels_last; difflab as a ladder that adds one optimisation per row (bf16, fused AdamW,
channels_last, torch.compile of the model / of the loss step; for sampling CUDA graphs), so
each row's ratio to diffusers' best shows that option's effect.

    python benchmarks/throughput.py                          # everything, GPU: ~10 min on an H100
    python benchmarks/throughput.py --what train             # one half; --merge adds to --out
    python benchmarks/throughput.py --what sample --merge
    python benchmarks/throughput.py --rows 'difflab/train/*' --profile prof/   # where time goes
    python benchmarks/throughput.py --rows 'diffusers/train/bf16+compile' '*' --time-budget 300
    python benchmarks/throughput.py --merge --missing        # the rows a budget skipped, later
    python benchmarks/throughput.py --device cpu             # tiny CPU configuration (CI)
    python benchmarks/throughput.py --report docs/benchmarks/throughput.json   # as Markdown

Prints a table and the ratios difflab / diffusers; writes JSON to --out after every row (a run
cut short keeps what it measured). ``--rows`` runs the rows in the order of its patterns, so the
ones that matter come first; with ``--time-budget`` a row starts only if it should end within the
budget (judged from the slowest row of its kind so far, or a guess), the others are listed as
skipped in the JSON, and ``--merge --missing`` measures them in a later run. A row whose options
include all of a failed row's is skipped too (it would fail the same way, after compiling). ``--profile DIR`` writes, per row, a torch.profiler table
with device time split by kind of kernel (and ``--trace`` a Chrome trace); ``--profile FILE.txt``
puts every row's table into that one file. On a CPU (or with
``--tiny``) the network shrinks (ch 16, mult (1, 2), 8x8 images, batch 4) so the whole script
runs in seconds; those numbers test the code path, not the libraries.
"""

from __future__ import annotations

import argparse
import copy
import contextlib
import fnmatch
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import difflab as dl
from difflab._files import atomic_write_text
from difflab.models.norm import set_nhwc_group_norm
from difflab.models.unet import UNet
from difflab.samplers.fast import release
from difflab.training import Trainer, TrainConfig
from difflab.training.config import DataConfig, DiffusionConfig, EMAConfig, ModelConfig, OptimConfig, SampleConfig

REPO = Path(__file__).resolve().parents[1]
T = 1000

# The DDPM CIFAR-10 network, in difflab's words (unet_cifar10) -- and a CPU-sized one.
NETWORKS = {
    "ddpm_cifar10": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels=(1,),
                         image_size=32, dropout=0.1, num_heads=1, norm_groups=32),
    "tiny": dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,),
                 image_size=8, dropout=0.1, num_heads=1, norm_groups=8),
}

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by GPU name; the first match wins.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
    ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1), ("L40", 181.0),
    ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 3090", 71.0),
)

TARGETS = {"train": 1.5, "sample": 2.0}  # difflab's best / diffusers' best (the issue's bar)

# What a row costs on a GPU before one of its kind has run (seconds: building the network,
# torch.compile on a 16-core host, warm-up, the timed runs, the profile), by (what, compiled).
# Only --time-budget uses them; once a row of a kind has run, the slowest such row counts instead.
ROW_COST_GUESS_S = {("train", True): 150.0, ("train", False): 30.0,
                    ("sample", True): 90.0, ("sample", False): 30.0}
TINY_ROW_COST_GUESS_S = 5.0


def row_kind(spec: dict) -> tuple[str, bool]:
    return spec["what"], bool(spec["options"].get("compile"))


def select_rows(specs: list[dict], globs: Optional[list[str]]) -> list[dict]:
    """The rows matching any pattern (library/what/name), in the patterns' order: a row comes
    where the first pattern that matches it stands (so ``'a/b/c' '*'`` puts a/b/c first)."""
    if globs is None:
        return list(specs)
    out: list[dict] = []
    for g in globs:
        out += [s for s in specs if s not in out and fnmatch.fnmatch(f"{s['library']}/{s['what']}/{s['name']}", g)]
    return out


def doomed_by(spec: dict, failed: list[dict]) -> Optional[dict]:
    """A failed row of the same library and kind whose options ``spec`` all has (with the same
    values): ``spec`` would fail the same way, so it need not spend its compile time finding out."""
    for f in failed:
        if (f["library"], f["what"]) == (spec["library"], spec["what"]) and \
                all(spec["options"].get(k, object()) == v for k, v in f["options"].items()):
            return f
    return None


def detect_peak_tflops(name: str) -> Optional[float]:
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


# ----------------------------------------------------------------------------- configurations
def row_specs(cpu: bool) -> list[dict]:
    """Every row: library, what, name, options, whether it is one of the issue's reference rows.

    Order: for each tier, diffusers first, then difflab, so slow drifts hit both alike.
    """
    def r(lib, what, name, reference=False, **opts):
        return {"library": lib, "what": what, "name": name, "reference": reference, "options": opts}

    if cpu:  # CUDA-only options (bf16 autocast in the trainer, compile, graphs) are left out
        return [
            r("diffusers", "train", "fp32", True, precision="fp32"),
            r("difflab", "train", "fp32", precision="fp32", fused=False),
            r("diffusers", "sample", "fp32", True, precision="fp32"),
            r("difflab", "sample", "fp32", precision="fp32"),
            r("difflab", "sample", "fp32+cl", precision="fp32", channels_last=True),
            r("difflab", "sample", "fp32+cl+gn_nhwc", precision="fp32", channels_last=True, gn_nhwc="always"),
        ]
    return [
        r("diffusers", "train", "fp32", True, precision="fp32"),
        r("difflab", "train", "fp32", precision="fp32", fused=False),
        r("diffusers", "train", "bf16", True, precision="bf16"),
        r("difflab", "train", "bf16", precision="bf16", fused=False),
        r("difflab", "train", "bf16+fused", precision="bf16", fused=True),
        r("difflab", "train", "bf16+fused+cl", precision="bf16", fused=True, channels_last=True),
        r("diffusers", "train", "bf16+compile", True, precision="bf16", compile=True),
        r("difflab", "train", "bf16+fused+cl+compile", precision="bf16", fused=True, channels_last=True,
          compile="model"),
        r("difflab", "train", "bf16+fused+cl+compile_step", precision="bf16", fused=True, channels_last=True,
          compile="step"),
        # measured 2026-11-26 (H200): the compiled step is host-bound (GPU busy ~50%), so replay it
        # as CUDA graphs; and without channels_last, whose layout copies cost 3.4 ms per step
        r("difflab", "train", "bf16+fused+cl+compile_step+graphs", precision="bf16", fused=True,
          channels_last=True, compile="step", compile_options={"mode": "reduce-overhead"}),
        r("difflab", "train", "bf16+fused+compile_step", precision="bf16", fused=True, compile="step"),
        # the trainer's own capture of the whole step (forward, backward, clip, AdamW, EMA): one graph
        r("difflab", "train", "bf16+fused+cl+compile_step+step_graph", precision="bf16", fused=True,
          channels_last=True, compile="step", cuda_graph=True),
        r("difflab", "train", "bf16+fused+compile_step+step_graph", precision="bf16", fused=True,
          compile="step", cuda_graph=True),
        r("difflab", "train", "bf16+fused+cl+step_graph", precision="bf16", fused=True, channels_last=True,
          cuda_graph=True),
        # eager + graph, no layout option: the cheap canary whose options every captured row includes
        # (if it fails, they are skipped instead of each compiling first)
        r("difflab", "train", "bf16+fused+step_graph", precision="bf16", fused=True, cuda_graph=True),
        # the same work as diffusers' step, which keeps no EMA (ema.decay 0: no copy, no update)
        r("difflab", "train", "bf16+fused+cl+compile_step+step_graph+no_ema", precision="bf16", fused=True,
          channels_last=True, compile="step", cuda_graph=True, ema=False),
        r("difflab", "train", "bf16+fused+compile_step+step_graph+no_ema", precision="bf16", fused=True,
          compile="step", cuda_graph=True, ema=False),
        # the partitioner keeps 90% of the activations it would keep, recomputing the rest in the
        # backward (measured: the row above at 1.006x diffusers' own peak; 1.56x its speed)
        r("difflab", "train", "bf16+fused+compile_step+step_graph+no_ema+amb0.9", precision="bf16", fused=True,
          compile="step", cuda_graph=True, ema=False, activation_memory_budget=0.9),
        # GroupNorm on the NHWC view (no layout copies; models/norm.py): eager, and as Inductor sees it
        r("difflab", "train", "bf16+fused+cl+gn_nhwc", precision="bf16", fused=True, channels_last=True,
          gn_nhwc="always"),
        r("difflab", "train", "bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc", precision="bf16",
          fused=True, channels_last=True, compile="step", cuda_graph=True, ema=False, gn_nhwc="compile"),
        r("difflab", "train", "bf16+fused+cl+compile_step+step_graph+no_ema+gn_nhwc+amb0.9", precision="bf16",
          fused=True, channels_last=True, compile="step", cuda_graph=True, ema=False, gn_nhwc="compile",
          activation_memory_budget=0.9),
        r("diffusers", "train", "bf16+compile+cl+fused", precision="bf16", compile=True, channels_last=True,
          fused=True),
        r("diffusers", "sample", "fp32", True, precision="fp32"),
        r("difflab", "sample", "fp32", precision="fp32"),
        r("diffusers", "sample", "bf16", True, precision="bf16"),
        r("difflab", "sample", "bf16", precision="bf16"),
        r("difflab", "sample", "bf16+cl", precision="bf16", channels_last=True),
        r("diffusers", "sample", "bf16+compile", True, precision="bf16", compile=True),
        r("difflab", "sample", "bf16+cl+compile", precision="bf16", channels_last=True, compile=True),
        r("difflab", "sample", "bf16+cl+compile+graph", precision="bf16", channels_last=True, compile=True,
          cuda_graph=True),
        r("difflab", "sample", "bf16+cl+compile+graph+gn_nhwc", precision="bf16", channels_last=True,
          compile=True, cuda_graph=True, gn_nhwc="compile"),
        r("difflab", "sample", "bf16+cl+gn_nhwc", precision="bf16", channels_last=True, gn_nhwc="always"),
        # difflab's own GroupNorm kernels (models/group_norm_triton.py: two reads and one write of
        # the activations, the time embedding and SiLU fused in): compiled around them; eager around
        # them and captured (cuDNN adds the convolutions' bias in its epilogue, where under compile
        # Inductor adds it in a kernel of its own before the opaque norm); eager
        r("difflab", "sample", "bf16+cl+compile+graph+gn_triton", precision="bf16", channels_last=True,
          compile=True, cuda_graph=True, gn_nhwc="triton"),
        r("difflab", "sample", "bf16+cl+graph+gn_triton", precision="bf16", channels_last=True,
          cuda_graph=True, gn_nhwc="triton"),
        # the whole 50-step run as one CUDA graph (cuda_graph="loop"): no launch or host gap
        # between steps (measured: 8.9 ms of the 249.7 ms batch were gaps)
        r("difflab", "sample", "bf16+cl+compile+loop+gn_triton", precision="bf16", channels_last=True,
          compile=True, cuda_graph="loop", gn_nhwc="triton"),
        # the candidate best: the whole run as one graph around a frozen network (no gaps between
        # steps, no per-forward weight casts), with the Triton norms
        r("difflab", "sample", "bf16+cl+compile_frozen+loop+gn_triton", precision="bf16", channels_last=True,
          compile={"options": {"freezing": True}}, cuda_graph="loop", gn_nhwc="triton"),
        # the same without freezing, the network stored in bf16 instead (no casts to fold, and half
        # the weights' memory, where freezing keeps bf16 copies beside the float32 weights); and
        # diffusers' network stored in bf16 as a reference of its own, since that is its users' way too
        r("difflab", "sample", "bf16w+cl+compile+loop+gn_triton", precision="bf16", weights="bf16",
          channels_last=True, compile=True, cuda_graph="loop", gn_nhwc="triton"),
        r("diffusers", "sample", "bf16w+compile", True, precision="bf16", weights="bf16", compile=True),
        r("difflab", "sample", "bf16w+cl+compile+graph+gn_triton", precision="bf16", weights="bf16",
          channels_last=True, compile=True, cuda_graph=True, gn_nhwc="triton"),
        r("difflab", "sample", "bf16+cl+gn_triton", precision="bf16", channels_last=True, gn_nhwc="triton"),
        # with the Triton norms, the next costs (H200 profile): ~10 ms a batch of weight casts
        # (fp32 -> bf16, every forward; freezing does them once) and 35 ms of Inductor's kernels
        r("difflab", "sample", "bf16+cl+compile_frozen+graph+gn_triton", precision="bf16", channels_last=True,
          compile={"options": {"freezing": True}}, cuda_graph=True, gn_nhwc="triton"),
        r("difflab", "sample", "bf16+cl+compile_cdt+graph+gn_triton", precision="bf16", channels_last=True,
          compile={"options": {"coordinate_descent_tuning": True}}, cuda_graph=True, gn_nhwc="triton"),
        # Inductor's combo kernels: independent small pointwise kernels (the ~105 weight casts of
        # a forward pass, 1-3.5 us each, ~10 ms a batch) launched as a few
        r("difflab", "sample", "bf16+cl+compile_combo+graph+gn_triton", precision="bf16", channels_last=True,
          compile={"options": {"combo_kernels": True}}, cuda_graph=True, gn_nhwc="triton"),
        # Inductor's coordinate-descent tuning of its Triton kernels' launch configurations (the
        # fused GroupNorm kernels ran at ~1/10 of the memory bandwidth); costs compile time only
        r("difflab", "sample", "bf16+cl+compile_cdt+graph", precision="bf16", channels_last=True,
          compile={"options": {"coordinate_descent_tuning": True}}, cuda_graph=True),
        # Inductor's freezing: weights become constants, their bf16 casts and layouts computed once
        # at compile time instead of every call (for a finished model only: later weight updates
        # are not seen)
        r("difflab", "sample", "bf16+cl+compile_frozen+graph", precision="bf16", channels_last=True,
          compile={"options": {"freezing": True}}, cuda_graph=True),
        r("diffusers", "sample", "bf16+compile+cl", precision="bf16", compile=True, channels_last=True),
    ]


def diffusers_unet(net: dict):
    """diffusers' UNet2DModel with the same structure as ``UNet(**net)`` (google/ddpm-cifar10-32's
    settings: one attention head of the block's width, downsample_padding 0, freq_shift 1)."""
    from diffusers import UNet2DModel

    mult, attn = net["channel_mult"], set(net["attention_levels"])
    levels = len(mult)
    return UNet2DModel(
        sample_size=net["image_size"], in_channels=3, out_channels=3, layers_per_block=net["num_res_blocks"],
        block_out_channels=tuple(net["channels"] * m for m in mult),
        down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels)),
        up_block_types=tuple("AttnUpBlock2D" if levels - 1 - i in attn else "UpBlock2D" for i in range(levels)),
        attention_head_dim=None, norm_num_groups=net["norm_groups"], norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, dropout=net["dropout"],
    )


def difflab_unet(net: dict) -> UNet:
    return UNet(in_channels=3, **net)


# ----------------------------------------------------------------------------- environment
class Env:
    """Device, sizes and shared inputs of one run."""

    def __init__(self, args) -> None:
        if args.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(args.device)
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise SystemExit("--device cuda: CUDA is not available here; use --device cpu")
        self.cuda = self.device.type == "cuda"
        self.graph_workspace = 0  # bytes of a cuBLAS workspace (difflab's graph stream's; set before the rows)
        self.tiny = args.tiny or not self.cuda
        self.net_name = "tiny" if self.tiny else "ddpm_cifar10"
        self.net = dict(NETWORKS[self.net_name], dropout=args.dropout)
        size = self.net["image_size"]

        def d(gpu, cpu):  # default by size
            return cpu if self.tiny else gpu

        self.batch = args.batch or d(128, 4)
        self.sample_batch = args.sample_batch or self.batch
        self.sample_steps = args.sample_steps
        self.train_iters = args.train_iters or d(20, 2)
        self.train_warmup = args.train_warmup if args.train_warmup is not None else d(5, 1)
        self.sample_warmup = args.sample_warmup if args.sample_warmup is not None else d(2, 1)
        self.repeats = args.repeats or d(5, 2)
        self.dataset_size = args.dataset_size or d(1024, 64)
        self.shape = (3, size, size)
        if not self.cuda and args.threads != 0:
            torch.set_num_threads(args.threads or 1)
        self.gpu_name = (torch.cuda.get_device_name(self.device) if self.cuda
                         else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
        self.peak_tflops = args.peak_tflops or (detect_peak_tflops(self.gpu_name) if self.cuda else None)
        self.profile_dir = Path(args.profile) if args.profile else None
        self.profile_iters = args.profile_iters
        self.trace = args.trace
        g = torch.Generator().manual_seed(0)
        self.data = (torch.rand((self.dataset_size, *self.shape), generator=g) * 2 - 1).contiguous()
        self.noise = torch.randn((self.sample_batch, *self.shape), generator=g).to(self.device)
        self.proc = dl.GaussianDiffusion(dl.schedules.linear(T))
        self.tmp = tempfile.TemporaryDirectory(prefix="difflab_throughput_")
        self.sample_reference: dict[str, Tensor] = {}  # each library's first sample batch of this run (in
        # PRIORITY order its headline row: a shared error would not show; group_norm.py checks the kernels)
        self._templates: dict[str, nn.Module] = {}
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            with warnings.catch_warnings():  # fp32 rows are "fp32/TF32" (the issue's reference)
                warnings.simplefilter("ignore")
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self, precision: str):
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def template(self, library: str) -> nn.Module:
        """The sampling network of a library, one set of random weights for all its rows (kept on
        the CPU: each row copies it to the device, so a row's peak memory holds only its own)."""
        if library not in self._templates:
            torch.manual_seed(0)
            if library == "difflab":
                model = difflab_unet(self.net)
                with torch.no_grad():  # difflab zero-initialises output layers: make the output non-trivial
                    for p in model.parameters():
                        if not p.any():
                            p.normal_(0.0, 0.02)
            else:
                model = diffusers_unet(self.net)
            self._templates[library] = model.eval().requires_grad_(False)
        return self._templates[library]


# ----------------------------------------------------------------------------- the measured cases
# a sampling row's "weights" option: the network stored in float32 (default), or in bf16 -- what
# diffusers' users get from torch_dtype=torch.bfloat16 -- under the same bf16 autocast: half the
# weights' memory and no weight casts in each forward (difflab's sampler keeps its state float32)
WEIGHTS = {None: None, "bf16": torch.bfloat16}


class DifflabTrain:
    """``difflab.training.Trainer`` on in-memory data; one iteration = ``train_step``."""

    def __init__(self, env: Env, opts: dict) -> None:
        self.env = env
        cfg = TrainConfig(
            model=ModelConfig(name="unet", kwargs=dict(in_channels=3, **env.net)),
            diffusion=DiffusionConfig(schedule="linear", T=T),
            data=DataConfig(name="digits", on_device=True),  # replaced by data= below
            optim=OptimConfig(lr=2e-4, grad_clip=1.0, fused=opts.get("fused", "auto")),
            ema=EMAConfig(decay=0.9999 if opts.get("ema", True) else 0.0, warmup=10),  # 0: no EMA copy
            sample=SampleConfig(every=-1),
            batch_size=env.batch, steps=10**9, seed=0, device=str(env.device), tensorboard=False,
            precision=opts.get("precision", "fp32"), channels_last=opts.get("channels_last", False),
            compile=opts.get("compile", "none"), compile_options=opts.get("compile_options", {}),
            activation_memory_budget=opts.get("activation_memory_budget"),
            cuda_graph=opts.get("cuda_graph", False),
            # the Trainer enters its config's mode around each step, over the process-wide one
            group_norm=opts.get("gn_nhwc", "never"),
        )
        self.trainer = Trainer(cfg, Path(env.tmp.name) / "run", data=(env.data, None), progress=False)
        self.s = 0
        self.images = env.batch
        self.loss: Optional[Tensor] = None

    def step(self) -> None:
        self.loss, _ = self.trainer.train_step(self.s)
        self.s += 1

    def result(self) -> dict:
        return {"final_loss": float(self.loss)} if self.loss is not None else {}

    def close(self) -> None:
        self.trainer.close()


class DiffusersTrain:
    """diffusers' training step: add_noise, UNet2DModel, MSE on eps, backward, AdamW."""

    def __init__(self, env: Env, opts: dict) -> None:
        from diffusers import DDPMScheduler

        self.env, self.opts = env, opts
        torch.manual_seed(0)
        model = diffusers_unet(env.net).to(env.device).train()
        self.cl = opts.get("channels_last", False)
        if self.cl:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.net = torch.compile(model) if opts.get("compile") else model
        fused = {"fused": True} if opts.get("fused") else {}
        self.opt = torch.optim.AdamW(model.parameters(), lr=2e-4, **fused)
        self.sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
        self.data = env.data.to(env.device)
        self.images = env.batch
        self.loss: Optional[Tensor] = None

    def step(self) -> None:
        env = self.env
        idx = torch.randint(0, len(self.data), (env.batch,), device=env.device)
        x0 = self.data[idx]
        if self.cl:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(x0)
        t = torch.randint(0, T, (env.batch,), device=env.device)
        x_t = self.sched.add_noise(x0, noise, t)
        with env.autocast(self.opts.get("precision", "fp32")):
            pred = self.net(x_t, t).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss = loss.detach()

    def result(self) -> dict:
        return {"final_loss": float(self.loss)} if self.loss is not None else {}

    def close(self) -> None:
        pass


class DifflabSample:
    """``dl.sample(..., "ddim", steps)`` on one batch; speed options as keyword arguments."""

    def __init__(self, env: Env, opts: dict) -> None:
        self.env = env
        self.model = copy.deepcopy(env.template("difflab")).to(env.device, WEIGHTS[opts.get("weights")])
        self.kw = {k: opts[k] for k in ("channels_last", "compile", "cuda_graph") if k in opts}
        if opts.get("precision", "fp32") != "fp32":
            self.kw["precision"] = opts["precision"]
        self.images = env.sample_batch
        self.out: Optional[Tensor] = None

    def step(self) -> None:
        env = self.env
        self.out = dl.sample(self.model, env.proc, env.noise.shape, "ddim", env.sample_steps, noise=env.noise,
                             clip_x0=1.0, device=env.device, **self.kw)

    def result(self) -> dict:
        return {}

    def close(self) -> None:
        release(self.model)


class DiffusersSample:
    """DDIMPipeline's loop: DDIMScheduler.set_timesteps, then unet(image, t).sample and step()."""

    def __init__(self, env: Env, opts: dict) -> None:
        from diffusers import DDIMScheduler

        self.env, self.opts = env, opts
        model = copy.deepcopy(env.template("diffusers")).to(env.device, WEIGHTS[opts.get("weights")])
        self.cl = opts.get("channels_last", False)
        if self.cl:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.net = torch.compile(model) if opts.get("compile") else model
        self.sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   clip_sample=True)
        self.images = env.sample_batch
        self.out: Optional[Tensor] = None

    @torch.no_grad()
    def step(self) -> None:
        env = self.env
        image = env.noise.contiguous(memory_format=torch.channels_last) if self.cl else env.noise
        self.sched.set_timesteps(env.sample_steps)
        with env.autocast(self.opts.get("precision", "fp32")):
            for t in self.sched.timesteps:
                model_output = self.net(image, t).sample
                image = self.sched.step(model_output, t, image, eta=0.0).prev_sample
        self.out = image

    def result(self) -> dict:
        return {}

    def close(self) -> None:
        pass


CASES = {("difflab", "train"): DifflabTrain, ("diffusers", "train"): DiffusersTrain,
         ("difflab", "sample"): DifflabSample, ("diffusers", "sample"): DiffusersSample}


# ----------------------------------------------------------------------------- FLOPs
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
    _free(env)
    return out


# ----------------------------------------------------------------------------- profiling
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
    from torch.autograd import DeviceType
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
    busy_ms = total / 1e3 / env.profile_iters
    sort = "self_device_time_total" if env.cuda else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=40)
    except (KeyError, AttributeError):
        table = events.table(sort_by="self_cuda_time_total" if env.cuda else sort, row_limit=40)
    one_file = env.profile_dir.suffix == ".txt"  # every row's table in one file, else one per row
    folder = env.profile_dir.parent if one_file else env.profile_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = env.profile_dir if one_file else folder / f"{label}.txt"
    unit = "GPU kernel" if env.cuda else "CPU op (self)"
    lines = [f"{label}: {env.profile_iters} iterations, wall {wall * 1e3:.2f} ms per iteration, "
             f"{unit} time {busy_ms:.2f} ms per iteration"
             + (f" (device busy {busy_ms / (wall * 1e3):.0%}: the rest is launch/host overhead)" if env.cuda else ""),
             "", f"{unit} time by kind (ms per iteration; kinds from kernel names, a heuristic):"]
    lines += [f"  {k:<24} {v:9.3f}  {v / max(busy_ms, 1e-9):6.1%}" for k, v in per_iter.items()]
    text = "\n".join(lines) + "\n\n" + table + "\n"
    if one_file:
        with open(path, "a") as f:
            f.write(f"{'=' * 100}\n{text}\n")
    else:
        path.write_text(text)
    out = {"file": str(path), "wall_ms": wall * 1e3, "busy_ms": busy_ms, "by_kind_ms": per_iter}
    if env.trace:
        trace = folder / (f"{path.stem}-{label}.trace.json" if one_file else f"{label}.trace.json")
        prof.export_chrome_trace(str(trace))
        out["trace"] = str(trace)
    return out


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


# ----------------------------------------------------------------------------- measuring
def _free(env: Env) -> None:
    gc.collect()
    if env.cuda:
        torch.cuda.empty_cache()


def graph_stream_workspace(env: Env) -> int:
    """Bytes cuBLAS holds for difflab's graph stream (``difflab._devices.graph_stream``: where the
    trainer and the sampler warm up and capture their CUDA graphs), allocated here, once, before
    any row: a workspace per stream for the life of the process (32 MiB on Hopper), the same
    size as the default stream's, which the FLOP count allocated before the rows too."""
    if not env.cuda:
        return 0
    from difflab._devices import graph_stream

    _free(env)
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
    _free(env)
    return torch.cuda.memory_allocated(env.device) - before


def own_peak(row: dict) -> Optional[int]:
    """The row's own peak memory: its raw peak less what was allocated when it started (rows
    measured before this field existed have both figures)."""
    if row.get("peak_mem_own_bytes") is not None:
        return row["peak_mem_own_bytes"]
    if row.get("peak_mem_bytes") is None:
        return None
    return row["peak_mem_bytes"] - row.get("allocated_before_bytes", 0)


def own_held(row: dict) -> Optional[int]:
    """What the row keeps allocated between iterations, less what was allocated before it."""
    held = row.get("allocated_between_iterations_bytes")
    return None if held is None else held - row.get("allocated_before_bytes", 0)


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


def measure(spec: dict, env: Env, flops: dict) -> dict:
    lib, what, opts = spec["library"], spec["what"], spec["options"]
    row = {k: spec[k] for k in ("library", "what", "name", "reference")} | {"options": opts}
    # a file name of letters, digits, '.', '_' and '-' (what the device tool hands back): '+' -> '_'
    label = f"{what}-{lib}-{spec['name']}".replace("+", "_")
    case = None
    # difflab's GroupNorm on the NHWC view for channels_last activations (models/norm.py), per row
    previous_gn = set_nhwc_group_norm(opts.get("gn_nhwc", "never"))
    try:
        if env.cuda:
            _free(env)
            torch.cuda.reset_peak_memory_stats(env.device)
            row["allocated_before_bytes"] = torch.cuda.memory_allocated(env.device)
        t0 = time.perf_counter()
        case = CASES[(lib, what)](env, opts)
        warmup = env.train_warmup if what == "train" else env.sample_warmup
        iters = env.train_iters if what == "train" else 1
        for _ in range(warmup):
            case.step()
        env.sync()
        row["setup_and_warmup_s"] = time.perf_counter() - t0  # includes torch.compile and graph capture
        if env.cuda:  # the peak of building, compiling, warming up and capturing
            setup_peak = torch.cuda.max_memory_allocated(env.device)
            torch.cuda.reset_peak_memory_stats(env.device)
            # what stays allocated between iterations (weights, optimizer state, EMA, graph
            # outputs, caches): the peak minus this is an iteration's working memory
            row["allocated_between_iterations_bytes"] = torch.cuda.memory_allocated(env.device)
            # of which tensors Python can see, by dtype (the rest: memory only a CUDA graph, a
            # compiled function or a library holds)
            row["held_visible_mib_by_dtype"] = _live_cuda_mib_by_dtype()
        times = []
        for _ in range(env.repeats):
            env.sync()
            t1 = time.perf_counter()
            for _ in range(iters):
                case.step()
            env.sync()
            times.append(time.perf_counter() - t1)
        if env.cuda:
            # A CUDA graph allocates its working memory once, while it is captured (in the warm-up);
            # replays allocate nothing, so the timed steps alone would not count a graph's
            # activations. The row's peak is therefore over everything from its start.
            row["peak_mem_steady_bytes"] = torch.cuda.max_memory_allocated(env.device)
            row["peak_mem_bytes"] = max(setup_peak, row["peak_mem_steady_bytes"])
            # every row is charged the one cuBLAS workspace its GEMMs use -- the default stream's
            # (eager and compiled steps, both libraries) or difflab's graph stream's (captured
            # ones) -- both allocated before the rows, so no row pays for it by running first
            row["peak_mem_own_bytes"] = (row["peak_mem_bytes"] - row["allocated_before_bytes"]
                                         + env.graph_workspace)
        ips = [case.images * iters / s for s in times]
        row["images_per_s"] = statistics.median(ips)
        row["images_per_s_runs"] = ips
        row["ms_per_iteration"] = 1e3 * statistics.median(times) / iters
        row["iterations_per_run"] = iters
        row["images_per_iteration"] = case.images
        fpi = flops[lib]["train"] if what == "train" else flops[lib]["forward"] * env.sample_steps
        row["flops_per_image"] = fpi
        row["achieved_tflops"] = fpi * row["images_per_s"] / 1e12
        row["mfu"] = row["achieved_tflops"] / env.peak_tflops if env.peak_tflops else None
        row.update(case.result())
        if what == "sample" and case.out is not None:
            out = case.out.float()
            row["sample_finite"] = bool(torch.isfinite(out).all())
            ref = env.sample_reference.setdefault(lib, out.clone())
            row["max_abs_diff_vs_first_row"] = float((out - ref).abs().max())
            # (the max alone says little: bf16 rows drift apart over 50 steps, up to ~0.4 at a pixel)
            row["mean_abs_diff_vs_first_row"] = float((out - ref).abs().mean())
        if env.profile_dir is not None:
            row["profile"] = profile_case(case, env, label)
        row["host_syncs_in_iteration"] = host_sync_check(case, env)
    except Exception as err:  # noqa: BLE001 - one failing row must not lose the others
        traceback.print_exc()
        row["error"] = f"{type(err).__name__}: {err}"[:2000]
    finally:
        if case is not None:
            case.close()
        del case
        torch._dynamo.reset()
        set_nhwc_group_norm(previous_gn)
        _free(env)
        if env.cuda and "allocated_before_bytes" in row:
            # memory the row did not give back: it would count in every later row's raw peak
            row["left_allocated_bytes"] = torch.cuda.memory_allocated(env.device) - row["allocated_before_bytes"]
            if row["left_allocated_bytes"] > 2**20:
                row["left_tensors"] = _live_cuda_tensors()
    return row


# ----------------------------------------------------------------------------- summary and output
# The issue's reference: diffusers' best configuration is bf16 + torch.compile; without it in a run,
# that run's ratios are not the issue's (a faster difflab row over diffusers' eager rows proves little)
ISSUE_REFERENCE = "bf16+compile"
LEGACY_RUN = ""  # rows measured before runs were stamped: one run of their own, the earliest


def _run_of(row: dict) -> str:
    return row.get("run") or LEGACY_RUN


def _stored_weights(row: dict) -> Optional[str]:
    return (row.get("options") or {}).get("weights")


def summarize(rows: list[dict]) -> dict:
    """difflab's best row over diffusers' best reference row, per what, within one run (the ratios
    the issue asks for are measured side by side: rows of other runs, another process or machine,
    are not divided by each other); each row's ratio to its own run's best reference.

    The run judged is the newest one that measured diffusers' ISSUE_REFERENCE; without one there
    is no verdict (``target_met`` None). A sample row whose samples were not finite takes no
    part. A difflab row with its network stored in bf16 (``weights``) is held to the memory of
    diffusers' bf16-stored reference of its run too, and takes no part without it."""
    summary = {}
    for what in ("train", "sample"):
        ok = [r for r in rows if r["what"] == what and r.get("images_per_s") and r.get("sample_finite") is not False]
        runs = sorted({_run_of(r) for r in ok})
        refs = {}  # run -> diffusers' best reference row of that run
        for run in runs:
            theirs = [r for r in ok if _run_of(r) == run and r["library"] == "diffusers"]
            if theirs:
                refs[run] = max([r for r in theirs if r["reference"]] or theirs, key=lambda r: r["images_per_s"])
        for r in ok:
            ref_r = refs.get(_run_of(r))
            r["vs_diffusers_best"] = r["images_per_s"] / ref_r["images_per_s"] if ref_r else None
        issue_runs = [run for run in runs if any(_run_of(r) == run and r["library"] == "diffusers"
                                                 and r["name"] == ISSUE_REFERENCE for r in ok)]
        judged = issue_runs[-1] if issue_runs else (max(refs) if refs else None)  # (no verdict: the newest run)
        if judged not in refs:
            continue
        ours = [r for r in ok if _run_of(r) == judged and r["library"] == "difflab"]
        theirs = [r for r in ok if _run_of(r) == judged and r["library"] == "diffusers"]
        ref, top = refs[judged], max(theirs, key=lambda r: r["images_per_s"])
        if not ours:
            continue
        best = max(ours, key=lambda r: r["images_per_s"])
        s = {
            "run": judged or "(unstamped rows)",
            "difflab_best": best["name"], "difflab_images_per_s": best["images_per_s"],
            "diffusers_best": ref["name"], "diffusers_images_per_s": ref["images_per_s"],
            "ratio": best["images_per_s"] / ref["images_per_s"],
            "diffusers_best_any_row": top["name"],
            "ratio_vs_best_any_row": best["images_per_s"] / top["images_per_s"],
            "target_ratio": TARGETS[what],
        }
        if not issue_runs:
            s["no_verdict"] = f"diffusers' {ISSUE_REFERENCE} (the issue's reference) was not measured"
        if best.get("profile") and ref.get("profile"):  # where the time goes, side by side
            a, b = best["profile"], ref["profile"]
            kinds = sorted(set(a["by_kind_ms"]) | set(b["by_kind_ms"]))
            diff = {k: a["by_kind_ms"].get(k, 0.0) - b["by_kind_ms"].get(k, 0.0) for k in kinds}
            s["profile"] = {
                "ms_per_iteration": {"difflab": {"wall": a["wall_ms"], "busy": a["busy_ms"]},
                                     "diffusers": {"wall": b["wall_ms"], "busy": b["busy_ms"]}},
                "by_kind_ms_difflab_minus_diffusers": dict(sorted(diff.items(), key=lambda kv: -abs(kv[1]))),
            }
        if own_peak(best) and own_peak(ref):
            s["peak_mem_ratio"] = own_peak(best) / own_peak(ref)
            stored = {_stored_weights(r): r for r in theirs if _stored_weights(r) and own_peak(r)}

            def bar(r: dict) -> Optional[int]:  # the memory a row must stay within
                w = _stored_weights(r)
                if not w:
                    return own_peak(ref)
                return min(own_peak(ref), own_peak(stored[w])) if w in stored else None

            # the issue's bar is speed and memory in one configuration: the fastest row that holds
            # no more memory than diffusers' reference (e.g. training without the EMA copy, which
            # diffusers' step does not keep) meets it or nothing does
            lean = [r for r in ours if own_peak(r) and bar(r) and own_peak(r) <= bar(r)]
            if lean:
                fit = max(lean, key=lambda r: r["images_per_s"])
                s["difflab_best_within_memory"] = fit["name"]
                s["ratio_within_memory"] = fit["images_per_s"] / ref["images_per_s"]
                s["peak_mem_ratio_within_memory"] = own_peak(fit) / own_peak(ref)
            s["target_met"] = (s.get("ratio_within_memory", 0.0) >= TARGETS[what]) if issue_runs else None
        if issue_runs:
            s.update(_against_issue_reference(ours, theirs, TARGETS[what]))
        summary[what] = s
    return summary


def _against_issue_reference(ours: list[dict], theirs: list[dict], target: float) -> dict:
    """The comparison the issue names, beside the stricter verdict above: difflab's fastest row
    within the memory of diffusers' ISSUE_REFERENCE row (bf16 autocast + torch.compile, weights
    float32), over that row; and like for like, difflab's fastest row that also keeps its weights
    float32 under autocast. The verdict above divides by diffusers' fastest reference of any
    kind, which may store its network in bf16 (``bf16w``), a configuration the issue does not
    name."""
    issue_ref = next((r for r in theirs if r["name"] == ISSUE_REFERENCE), None)
    if issue_ref is None or not own_peak(issue_ref):
        return {}
    lean = [r for r in ours if own_peak(r) and own_peak(r) <= own_peak(issue_ref)]
    out = {}
    for key, rows in (("issue_reference", lean), ("issue_reference_like_for_like",
                                                   [r for r in lean if not _stored_weights(r)])):
        if rows:
            fit = max(rows, key=lambda r: r["images_per_s"])
            out[key] = {"difflab": fit["name"], "diffusers": issue_ref["name"],
                        "ratio": fit["images_per_s"] / issue_ref["images_per_s"],
                        "peak_mem_ratio": own_peak(fit) / own_peak(issue_ref),
                        "target_met": fit["images_per_s"] / issue_ref["images_per_s"] >= target}
    return out


def _issue_reference_text(s: dict) -> str:
    """The issue's own comparison (``_against_issue_reference``) as one clause, or ''."""
    parts = []
    named, alike = s.get("issue_reference"), s.get("issue_reference_like_for_like")
    for label, c in ((f"against the issue's named configuration, diffusers' {ISSUE_REFERENCE} "
                      "(weights float32 under autocast)", named),
                     ("like for like (difflab's weights float32 under autocast too)", alike)):
        if c and not (c is alike and named and c["difflab"] == named["difflab"]):
            met = "target met" if c["target_met"] else "target not met"
            parts.append(f"{label}: {c['difflab']} {c['ratio']:.2f}x at {c['peak_mem_ratio']:.2f}x the memory ({met})")
    return "; ".join(parts)


def _fmt(v, spec: str, none: str = "-") -> str:
    if v is None:
        return none
    return format(v, spec[:-1]) + "%" if spec.endswith("%") else format(v, spec)


def print_table(result: dict, file=sys.stdout) -> None:
    meta = result["meta"]
    print(f"\n{meta['network']} on {meta['device_name']} ({meta['device']}), train batch {meta['batch']}, "
          f"sample batch {meta['sample_batch']} x {meta['sample_steps']} DDIM steps"
          + ("   [tiny configuration: tests the code path, not the libraries]" if meta["tiny"] else ""), file=file)
    head = f"{'what':<7}{'library':<10}{'config':<30}{'images/s':>10}{'ms/iter':>10}{'peak MiB':>10}" \
           f"{'MFU':>7}{'vs diffusers best':>19}  host syncs"
    print(head, file=file)
    print("-" * len(head), file=file)
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['what']:<7}{r['library']:<10}{r['name']:<30}  ERROR {r['error'][:80]}", file=file)
            continue
        mem = own_peak(r)
        print(f"{r['what']:<7}{r['library']:<10}{r['name'] + (' *' if r['reference'] else ''):<30}"
              f"{r['images_per_s']:>10.1f}{r['ms_per_iteration']:>10.2f}{_fmt(mem and mem / 2**20, '.0f'):>10}"
              f"{_fmt(r.get('mfu') and 100 * r['mfu'], '.1f%'):>7}{_fmt(r.get('vs_diffusers_best'), '.2f'):>18}x"
              f"  {r.get('host_syncs_in_iteration') or '-'}"[:200], file=file)
    print("(* diffusers' reference configurations; 'diffusers best' is the fastest of them)", file=file)
    for what, s in result["summary"].items():
        mem = f", peak memory {s['peak_mem_ratio']:.2f}x diffusers'" if "peak_mem_ratio" in s else ""
        print(f"{what}: difflab {s['difflab_best']} {s['difflab_images_per_s']:.1f} img/s / diffusers "
              f"{s['diffusers_best']} {s['diffusers_images_per_s']:.1f} img/s = {s['ratio']:.2f}x "
              f"(target {s['target_ratio']}x{mem}); vs diffusers' fastest row of any kind "
              f"({s['diffusers_best_any_row']}): {s['ratio_vs_best_any_row']:.2f}x{_within_memory(s)}"
              + (f" -- no verdict: {s['no_verdict']}" if "no_verdict" in s else ""), file=file)
        if _issue_reference_text(s):
            print(f"  {what}, {_issue_reference_text(s)}", file=file)


def _within_memory(s: dict) -> str:
    """The summary's fastest difflab row within diffusers' peak memory, when it is not the fastest."""
    if "difflab_best_within_memory" not in s or s["difflab_best_within_memory"] == s["difflab_best"]:
        return ""
    return (f"; the fastest within diffusers' peak memory: {s['difflab_best_within_memory']} "
            f"{s['ratio_within_memory']:.2f}x at {s['peak_mem_ratio_within_memory']:.2f}x the memory")


def markdown(result: dict) -> str:
    """The rows and the summary as Markdown (for docs/benchmarks.md): ``--report JSON``."""
    meta = result["meta"]
    v = meta["versions"]
    lines = [f"{meta['network']} network on {meta['device_name']}: train batch {meta['batch']}, sample batch "
             f"{meta['sample_batch']} x {meta['sample_steps']} DDIM steps; torch {v['torch']}, diffusers "
             f"{v.get('diffusers')}; median of {meta['repeats']} runs; `{meta['command']}` ({meta['date']})"
             + (" -- **tiny configuration: tests the code path, not the libraries**" if meta["tiny"] else ""),
             "",
             "| what | library | configuration | images/s | ms/iter | peak MiB | held MiB | MFU "
             "| vs diffusers' best | host syncs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['what']} | {r['library']} | {r['name']} | error: {r['error'][:100]} | | | | | | |")
            continue
        mem = own_peak(r)
        name = f"{r['name']} (reference)" if r["reference"] else r["name"]
        held = own_held(r)
        lines.append(f"| {r['what']} | {r['library']} | {name} | {r['images_per_s']:.1f} | "
                     f"{r['ms_per_iteration']:.2f} | {_fmt(mem and mem / 2**20, '.0f')} | "
                     f"{_fmt(held and held / 2**20, '.0f')} | "
                     f"{_fmt(r.get('mfu') and 100 * r['mfu'], '.1f%')} | {_fmt(r.get('vs_diffusers_best'), '.2f')}x | "
                     f"{r.get('host_syncs_in_iteration') or '-'} |")
    lines.append("")
    lines.append("(peak and held MiB are each row's own: what it allocated above what was allocated when it "
                 "started)")
    lines.append("")
    for r in result["rows"]:
        if (r.get("left_allocated_bytes") or 0) > 2**20:
            big = "; ".join(f"{shape} {dtype} {mib:.0f} MiB" for shape, dtype, mib in r.get("left_tensors", []))
            lines.append(f"- left allocated after the row: {r['what']} {r['library']} {r['name']} "
                         f"{r['left_allocated_bytes'] / 2**20:.0f} MiB" + (f" (largest: {big})" if big else ""))
    for r in meta.get("skipped", []):
        lines.append(f"- not measured: {r['what']} {r['library']} {r['name']} ({r['reason']})")
    for what, s in result["summary"].items():
        mem = f"; peak memory {s['peak_mem_ratio']:.2f}x diffusers'" if "peak_mem_ratio" in s else ""
        met = {True: " -- **target met**", False: " -- **target not met**"}.get(
            s.get("target_met"), f" -- no verdict: {s['no_verdict']}" if "no_verdict" in s else "")
        lines.append(f"- **{what}**: difflab {s['difflab_best']} / diffusers {s['diffusers_best']} = "
                     f"**{s['ratio']:.2f}x** (target {s['target_ratio']}x{mem}){met}; against diffusers' fastest "
                     f"row of any kind ({s['diffusers_best_any_row']}): {s['ratio_vs_best_any_row']:.2f}x"
                     f"{_within_memory(s)}")
        if _issue_reference_text(s):
            lines.append(f"  - {_issue_reference_text(s)}")
        if "profile" in s:
            t = s["profile"]["ms_per_iteration"]
            kinds = ", ".join(f"{k} {v:+.2f}" for k, v in s["profile"]["by_kind_ms_difflab_minus_diffusers"].items())
            lines.append(f"  - profiled, ms per iteration (wall / busy): difflab {t['difflab']['wall']:.2f} / "
                         f"{t['difflab']['busy']:.2f}, diffusers {t['diffusers']['wall']:.2f} / "
                         f"{t['diffusers']['busy']:.2f}; busy time by kind, difflab minus diffusers: {kinds}")
    return "\n".join(lines) + "\n"


def _versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "difflab": getattr(dl, "__version__", None)}
    try:
        import diffusers

        v["diffusers"] = diffusers.__version__
    except ImportError:
        v["diffusers"] = None
    v["DIFFLAB_GN_KERNEL"] = os.environ.get("DIFFLAB_GN_KERNEL")  # the Triton GroupNorm kernels, if set
    if os.environ.get("DIFFLAB_GN_PLAN"):  # or their way per shape, as measured before the rows
        try:
            v["DIFFLAB_GN_PLAN"] = json.loads(Path(os.environ["DIFFLAB_GN_PLAN"]).read_text())
        except (OSError, ValueError) as err:
            v["DIFFLAB_GN_PLAN"] = f"unreadable: {err}"
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
        v["cudnn"] = torch.backends.cudnn.version()
    return v


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1, default=str) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny network on a GPU too (a smoke run)")
    ap.add_argument("--what", nargs="+", choices=("train", "sample"), default=["train", "sample"])
    ap.add_argument("--rows", nargs="+", default=None, metavar="GLOB",
                    help="only rows whose library/what/name matches, e.g. 'difflab/train/*' 'diffusers/*/bf16*'")
    ap.add_argument("--no-diffusers", action="store_true", help="difflab rows only (no ratios)")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 128; tiny: 4)")
    ap.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default: --batch)")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps per sampled batch")
    ap.add_argument("--train-iters", type=int, default=None, help="optimizer steps per timed run (20; tiny 2)")
    ap.add_argument("--train-warmup", type=int, default=None, help="untimed steps first (5; tiny 1)")
    ap.add_argument("--sample-warmup", type=int, default=None, help="untimed batches first (2; tiny 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row; the median counts (5; tiny 2)")
    ap.add_argument("--dataset-size", type=int, default=None, help="images kept on the device (1024; tiny 64)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak for MFU (default: by GPU name; H100 SXM 989.4)")
    ap.add_argument("--profile", default=None, metavar="DIR", help="write a torch.profiler table per row here")
    ap.add_argument("--profile-iters", type=int, default=3)
    ap.add_argument("--trace", action="store_true", help="with --profile: also a Chrome trace per row")
    ap.add_argument("--out", default=None, help="JSON output (default docs/benchmarks/throughput.json; "
                                                "CPU/tiny runs: docs/benchmarks/throughput_tiny.json)")
    ap.add_argument("--merge", action="store_true", help="keep --out's rows that this run does not measure")
    ap.add_argument("--missing", action="store_true",
                    help="with --merge: only the selected rows that --out lacks (never run, skipped or failed)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="start a row only if it should end within this many seconds of the start; list "
                         "the others as skipped (measure them later with --merge --missing)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU runs: torch intra-op threads (default 1: on a shared machine, threads that "
                         "wait for each other cost more than they compute; 0 = torch's default)")
    ap.add_argument("--report", default=None, metavar="JSON",
                    help="measure nothing: print a results file as Markdown (for docs/benchmarks.md)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.missing and not args.merge:
        ap.error("--missing needs --merge (the rows missing from --out are measured and added to it)")
    if args.time_budget is not None and not args.time_budget > 0:
        ap.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    for name in ("batch", "sample_batch", "train_iters", "repeats", "dataset_size", "sample_steps", "profile_iters"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.report:
        result = json.loads(Path(args.report).read_text())
        # the summary from the rows by this version's rules (own peaks: files written before
        # them stored peaks that counted earlier rows' leftovers)
        result["summary"] = summarize(result["rows"])
        print(markdown(result), end="")
        return result
    threads = torch.get_num_threads()
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, argv) -> dict:
    started = time.perf_counter()  # --time-budget counts from here
    env = Env(args)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    default_out = "throughput_tiny.json" if env.tiny else "throughput.json"
    out = Path(args.out) if args.out else REPO / "docs" / "benchmarks" / default_out
    have_diffusers = not args.no_diffusers
    if have_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            say("note: diffusers is not installed (pip install 'difflab[peers]'); difflab rows only")
            have_diffusers = False
    specs = [s for s in select_rows(row_specs(cpu=env.tiny and not env.cuda), args.rows)
             if s["what"] in args.what and (have_diffusers or s["library"] != "diffusers")]
    if not specs:
        raise SystemExit("no rows selected: check --what / --rows")
    old = json.loads(out.read_text()) if args.merge and out.is_file() else {"rows": []}
    if args.missing:
        done = {(r["library"], r["what"], r["name"]) for r in old["rows"] if r.get("images_per_s")}
        specs = [s for s in specs if (s["library"], s["what"], s["name"]) not in done]
        if not specs:
            say(f"throughput: every selected row is already in {out}; nothing to measure")
            return old
    libs = sorted({s["library"] for s in specs})
    flops = {lib: count_flops(env, lib) for lib in libs}
    env.graph_workspace = graph_stream_workspace(env)
    params = {}
    with torch.device("meta"):
        params["difflab"] = sum(p.numel() for p in difflab_unet(env.net).parameters())
        if have_diffusers:
            params["diffusers"] = sum(p.numel() for p in diffusers_unet(env.net).parameters())
    result = {
        "meta": {
            "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(env.device), "device_name": env.gpu_name,
            "peak_tflops_bf16": env.peak_tflops, "tiny": env.tiny, "network": env.net_name,
            "network_config": env.net, "parameters": params, "batch": env.batch, "sample_batch": env.sample_batch,
            "sample_steps": env.sample_steps, "train_iters": env.train_iters, "train_warmup": env.train_warmup,
            "sample_warmup": env.sample_warmup, "repeats": env.repeats, "dataset_size": env.dataset_size,
            "flops_per_image": flops, "versions": _versions(),
            "graph_stream_workspace_bytes": env.graph_workspace,
        },
        "rows": [],
        "summary": {},
    }
    # each row's run: only rows of one run are divided. DIFFLAB_BENCH_RUN names it across calls on
    # one machine (benchmarks/gpu_session.sh: a second call on the same warm machine joins the first)
    run = os.environ.get("DIFFLAB_BENCH_RUN") or f"{result['meta']['date']} {env.gpu_name}"

    def kept() -> list[dict]:  # stored rows that this run has not measured (again): a skipped row keeps its old one
        measured = {(r["library"], r["what"], r["name"]) for r in result["rows"]}
        return [r for r in old["rows"] if (r["library"], r["what"], r["name"]) not in measured]

    if args.merge and old.get("meta"):  # the earlier runs' commands and skipped rows, not overwritten
        earlier = {k: v for k, v in old["meta"].items() if k != "earlier_runs"}
        result["meta"]["earlier_runs"] = [earlier, *old["meta"].get("earlier_runs", [])]
    budget = f", time budget {args.time_budget:g} s" if args.time_budget else ""
    say(f"throughput: {len(specs)} rows on {env.gpu_name} ({env.net_name}, {params}){budget} -> {out}")
    slowest: dict[tuple[str, bool], float] = {}  # seconds of the slowest row of each kind so far
    skipped = result["meta"]["skipped"] = []
    failed: list[dict] = []
    for spec in specs:
        kind = row_kind(spec)
        cause = doomed_by(spec, failed)
        if cause is not None:
            skipped.append({"library": spec["library"], "what": spec["what"], "name": spec["name"],
                            "reason": f"row {cause['name']!r}, whose options it includes, failed"})
            say(f"  [skipped] {spec['what']:<6} {spec['library']:<9} {spec['name']:<28} {skipped[-1]['reason']}")
            continue
        if args.time_budget is not None:
            left = args.time_budget - (time.perf_counter() - started)
            need = slowest.get(kind) or (TINY_ROW_COST_GUESS_S if env.tiny else ROW_COST_GUESS_S[kind])
            if need > left:
                skipped.append({"library": spec["library"], "what": spec["what"], "name": spec["name"],
                                "reason": f"needs ~{need:.0f} s, {max(left, 0):.0f} s of the budget left"})
                say(f"  [skipped] {spec['what']:<6} {spec['library']:<9} {spec['name']:<28} {skipped[-1]['reason']}")
                continue
        t0 = time.perf_counter()
        row = dict(measure(spec, env, flops), run=run)
        slowest[kind] = max(slowest.get(kind, 0.0), time.perf_counter() - t0)
        if "error" in row:
            failed.append(spec)
        result["rows"].append(row)
        rows = kept() + result["rows"]
        result["summary"] = summarize(rows)
        write(dict(result, rows=rows), out)
        ips = f"{row['images_per_s']:.1f} img/s" if "images_per_s" in row else row.get("error", "?")[:120]
        say(f"  [{time.perf_counter() - t0:6.1f} s] {spec['what']:<6} {spec['library']:<9} {spec['name']:<28} {ips}")
    result["rows"] = kept() + result["rows"]
    result["summary"] = summarize(result["rows"])
    write(result, out)
    if skipped:
        say(f"throughput: {len(skipped)} rows skipped for the time budget; measure them later with "
            f"--merge --missing --out {out}")
    if not args.quiet:
        print_table(result)
    env.tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
