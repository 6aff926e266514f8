"""DiT throughput: difflab's DiT-B/2 against diffusers' DiTTransformer2DModel, same run.

The network is DiT-B/2 (Peebles & Xie 2023, table 1: 12 blocks, width 768, 12 heads, patch 2)
on 32x32x4 latents (256 tokens), class-conditional on 1000 classes, in both libraries:
``dl.models.dit("B", 2, in_channels=4, image_size=32, num_classes=1000)`` and
``DiTTransformer2DModel(num_layers=12, attention_head_dim=64, num_attention_heads=12,
sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_embeds_ada_norm=1000,
norm_eps=1e-6)``, both predicting eps only (out 4: difflab's losses and samplers do not use a
learned variance yet). The same function up to the time features' frequencies
(tests/test_crosscheck_dit.py), but not the same parameter count: diffusers gives every block
its own time MLP and label table (147.4M parameters against the paper's 130.3M), so its
optimizer state is larger; the FLOPs differ by 0.04%. Both libraries run in this one process,
on the same device, batches and precision:

* train: images/s of the full optimizer step, the paper's recipe (AdamW, lr 1e-4, no weight
  decay, no gradient clipping, label dropout 0.1). difflab: ``Trainer.train_step`` -- what
  ``difflab train`` runs (draws, eps-MSE, backward, AdamW, EMA 0.9999 unless the row says
  no_ema). diffusers: its examples' step: DDPMScheduler.add_noise, the transformer (which drops
  labels itself in training mode), MSE, backward, AdamW.
* sample: images/s of a whole DDIM run with classifier-free guidance (w = 4, DiTPipeline's
  default): every step one network forward at twice the sampling batch (labels, then the null
  label). difflab: ``dl.sample(..., "ddim", steps, cond=labels, guidance=4)`` of the network
  made fast by ``dl.accel.accelerate`` (bf16 autocast, torch.compile, CUDA graphs of each call
  or of the whole run); diffusers: DiTPipeline's loop without the VAE (its doubled latents
  stepped by DDIMScheduler), the transformer in bf16 autocast (weights float32, or stored in bf16:
  ``bf16w``), torch.compile, SDPA attention (its default processor).
* peak memory: each row's own (benchmarks/throughput_lib/memory.py: the CUDA allocator's peak
  from the row's start, compiling and graph capture included, less what was allocated before it,
  plus one cuBLAS workspace);
* model FLOPs utilisation: FLOPs of one forward pass counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (on the meta device, where attention decomposes into
  the matrix products it is counted by); training 3x the forward per image (backward ~ 2x),
  sampling 2 x steps forwards per image (guidance's doubled batch); over the GPU's dense bf16
  peak (throughput_lib/env.py's table by device name).

The summary divides difflab's fastest row by diffusers' fastest reference row of the same run
(throughput_lib/verdict.py, as for the U-Net): targets 1.5x training and 2x sampling (the
issue's), reported, never asserted.

    python benchmarks/dit_throughput.py                        # everything (GPU)
    python benchmarks/dit_throughput.py --rows 'diffusers/train/bf16+compile' '*' --time-budget 400
    python benchmarks/dit_throughput.py --device cpu           # tiny CPU configuration (CI)
    python benchmarks/dit_throughput.py --report docs/benchmarks/dit_throughput.json   # as Markdown

Prints a table and the ratios; writes JSON (``{"meta", "rows", "summary"}``, throughput.py's
format) to --out after every row. ``--rows`` runs the rows in its patterns' order; with
``--time-budget`` a row starts only if it should end within the budget. On a CPU (or with
``--tiny``) the network shrinks (width 64, 2 blocks, 4 heads, 8x8x4, 10 classes, batch 4) so the
run takes seconds; those numbers test the code path, not the libraries.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # throughput_lib, when run or loaded as a file
    sys.path.insert(0, HERE)

import difflab as dl  # noqa: E402
from difflab.models.dit import DiT  # noqa: E402
from difflab.training import Trainer, TrainConfig  # noqa: E402
from difflab.training.config import (DataConfig, DiffusionConfig, EMAConfig, ModelConfig,  # noqa: E402
                                     OptimConfig, SampleConfig)
from throughput_lib import memory, results  # noqa: E402
from throughput_lib.cases import Case, TrainerCase  # noqa: E402
from throughput_lib.env import RunDevice, detect_peak_tflops, versions  # noqa: E402
from throughput_lib.measure import measure as measure_row  # noqa: E402
from throughput_lib.report import print_table  # noqa: E402
from throughput_lib.rows import row_kind, select_rows, skip_reason  # noqa: E402
from throughput_lib.runner import check_run_options, report_or_run, run_parser  # noqa: E402
from throughput_lib.verdict import run_id, summarize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
T = 1000  # diffusion steps of the training schedule (DiT's linear betas 1e-4 .. 0.02)
GUIDANCE = 4.0  # DiTPipeline's default classifier-free guidance scale
LR = 1e-4  # the paper's AdamW learning rate (no weight decay, no clipping)

# (registry name, keyword arguments) of difflab's network; diffusers' is read off it (diffusers_dit)
NETWORKS = {
    "dit_b_2": ("dit_b_2", dict(in_channels=4, image_size=32, num_classes=1000)),
    "tiny": ("dit", dict(in_channels=4, image_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4,
                         num_classes=10)),
}


# ---------------------------------------------------------------- the two libraries' networks
def difflab_dit(net: str) -> DiT:
    name, kwargs = NETWORKS[net]
    return dl.models.build(name, **kwargs)


def diffusers_config(model: DiT) -> dict:
    """DiTTransformer2DModel's configuration of ``model``'s structure (norm_eps 1e-6: the
    paper's, difflab's and diffusers' AdaLayerNormZero's; diffusers' default 1e-5 is its MLP norm's)."""
    width, heads = model.patch_embed.out_channels, model.blocks[0].attn.heads
    return dict(num_layers=len(model.blocks), num_attention_heads=heads, attention_head_dim=width // heads,
                sample_size=model.image_size, patch_size=model.patch_size, in_channels=model.in_channels,
                out_channels=model.out_channels, num_embeds_ada_norm=model.num_classes, norm_eps=1e-6)


def diffusers_dit(net: str):
    from diffusers import DiTTransformer2DModel

    with torch.device("meta"):
        config = diffusers_config(difflab_dit(net))
    return DiTTransformer2DModel(**config)


def parameter_counts(net: str, have_diffusers: bool) -> dict:
    with torch.device("meta"):
        out = {"difflab": sum(p.numel() for p in difflab_dit(net).parameters())}
        if have_diffusers:
            out["diffusers"] = sum(p.numel() for p in diffusers_dit(net).parameters())
    return out


def forward_flops(net: str, library: str) -> float:
    """FLOPs per image of one forward pass, counted by FlopCounterMode on the meta device (no
    memory, no time; attention decomposes there into the matrix products it is counted by)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        ours = difflab_dit(net)
        x = torch.randn(2, ours.in_channels, ours.image_size, ours.image_size)
        t, y = torch.tensor([10, 500]), torch.tensor([0, ours.num_classes])  # a label and the null label
        model = ours.eval() if library == "difflab" else diffusers_dit(net).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, y) if library == "difflab" else model(x, t, class_labels=y)
    return counter.get_total_flops() / 2


# ---------------------------------------------------------------- rows
def _row(lib: str, what: str, name: str, reference: bool = False, **opts) -> dict:
    return {"library": lib, "what": what, "name": name, "reference": reference, "options": opts}


def row_specs(cpu: bool) -> list[dict]:
    """Every row (library, what, name, reference, options); diffusers' reference rows are its own
    best options, the fastest of which is "diffusers' best"."""
    if cpu:  # CUDA-only options (bf16 autocast in the trainer, compile, graphs) left out
        return [_row("diffusers", "train", "fp32", True, precision="fp32"),
                _row("difflab", "train", "fp32", precision="fp32", fused=False),
                _row("diffusers", "sample", "fp32", True, precision="fp32"),
                _row("difflab", "sample", "fp32", precision="fp32")]
    return [
        _row("diffusers", "train", "bf16", True, precision="bf16"),
        _row("diffusers", "train", "bf16+compile", True, precision="bf16", compile=True),
        _row("diffusers", "train", "bf16+compile+fused", True, precision="bf16", compile=True, fused=True),
        _row("difflab", "train", "bf16+fused", precision="bf16", fused=True),
        # eager + captured step: the cheap canary whose options every captured row includes
        _row("difflab", "train", "bf16+fused+step_graph", precision="bf16", fused=True, cuda_graph=True),
        _row("difflab", "train", "bf16+fused+compile_step", precision="bf16", fused=True, compile="step"),
        _row("difflab", "train", "bf16+fused+compile_step+step_graph", precision="bf16", fused=True,
             compile="step", cuda_graph=True),
        # diffusers' work: no EMA copy
        _row("difflab", "train", "bf16+fused+compile_step+step_graph+no_ema", precision="bf16", fused=True,
             compile="step", cuda_graph=True, ema=False),
        _row("diffusers", "sample", "bf16", True, precision="bf16"),
        _row("diffusers", "sample", "bf16+compile", True, precision="bf16", compile=True),
        _row("diffusers", "sample", "bf16w+compile", True, precision="bf16", weights="bf16", compile=True),
        _row("difflab", "sample", "bf16", precision="bf16"),
        _row("difflab", "sample", "bf16+compile", precision="bf16", compile=True),
        _row("difflab", "sample", "bf16+compile+graph", precision="bf16", compile=True, cuda_graph=True),
        _row("difflab", "sample", "bf16+compile+loop", precision="bf16", compile=True, cuda_graph="loop"),
        _row("difflab", "sample", "bf16w+compile+loop", precision="bf16", weights="bf16", compile=True,
             cuda_graph="loop"),
    ]


# ---------------------------------------------------------------- the run's environment
class Env(RunDevice):
    """Device, sizes and shared inputs of one run: a RunDevice (device, cuda, sync, free, autocast)
    with what throughput_lib's measure, memory and profiling parts read besides (graph_workspace,
    the sizes, sample_reference, profile_*)."""

    def __init__(self, args) -> None:
        super().__init__(args.device)
        self.tiny = args.tiny or not self.cuda
        self.net_name = "tiny" if self.tiny else "dit_b_2"
        if not self.cuda and args.threads != 0:
            torch.set_num_threads(args.threads or 1)
        self.gpu_name = (torch.cuda.get_device_name(self.device) if self.cuda
                         else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
        # Dense bf16 tensor-core peaks by GPU name (throughput_lib/env.py): H100 SXM and H200 989.4
        # TFLOP/s -- NVIDIA's H100 and H200 datasheets give 1,979 TFLOP/s BF16 "with sparsity",
        # twice the dense rate
        self.peak_tflops = args.peak_tflops or (detect_peak_tflops(self.gpu_name) if self.cuda else None)
        self.graph_workspace = 0
        self.profile_dir = Path(args.profile) if args.profile else None
        self.profile_iters, self.trace = args.profile_iters, False
        self.guidance = args.guidance

        def d(gpu, cpu):
            return cpu if self.tiny else gpu

        self.batch = args.batch or d(256, 4)  # the paper's batch
        self.sample_batch = args.sample_batch or d(64, 2)  # forwards of twice this (guidance)
        self.sample_steps = args.sample_steps or d(50, 3)
        self.train_iters = args.train_iters or d(10, 2)
        self.train_warmup = args.train_warmup if args.train_warmup is not None else d(3, 1)
        self.sample_warmup = args.sample_warmup if args.sample_warmup is not None else d(1, 1)
        self.repeats = args.repeats or d(3, 2)
        self.dataset_size = args.dataset_size or d(1024, 64)
        with torch.device("meta"):
            model = difflab_dit(self.net_name)
        self.num_classes, size = model.num_classes, model.image_size
        self.shape = (model.in_channels, size, size)
        self.net = {"name": NETWORKS[self.net_name][0], "kwargs": NETWORKS[self.net_name][1]}
        # the training latents (uniform in [-1, 1): the data set's range; speed does not care)
        # and labels, the sampling noise and labels
        g = torch.Generator().manual_seed(0)
        self.data = (torch.rand((self.dataset_size, *self.shape), generator=g) * 2 - 1).contiguous()
        self.labels = torch.randint(0, self.num_classes, (self.dataset_size,), generator=g)
        self.noise = torch.randn((self.sample_batch, *self.shape), generator=g).to(self.device)
        self.sample_labels = torch.randint(0, self.num_classes, (self.sample_batch,), generator=g).to(self.device)
        self.proc = dl.GaussianDiffusion(dl.schedules.linear(T))
        self.tmp = tempfile.TemporaryDirectory(prefix="difflab_dit_throughput_")
        self.sample_reference: dict[str, Tensor] = {}
        self._templates: dict[str, nn.Module] = {}

    def template(self, library: str) -> nn.Module:
        """A library's sampling network, one set of random weights for all its rows (on the CPU:
        each row copies it to the device, so its peak memory holds only its own)."""
        if library not in self._templates:
            torch.manual_seed(0)
            model = difflab_dit(self.net_name) if library == "difflab" else diffusers_dit(self.net_name)
            with torch.no_grad():  # the zero-initialised layers (both libraries'): a non-trivial output
                for p in model.parameters():
                    if not p.any():
                        p.normal_(0.0, 0.02)
            self._templates[library] = model.eval().requires_grad_(False)
        return self._templates[library]


# ---------------------------------------------------------------- one iteration of each case
class DifflabTrain(TrainerCase):
    """``difflab.training.Trainer`` on in-memory latents and labels; one iteration = ``train_step``."""

    def __init__(self, env: Env, opts: dict) -> None:
        cfg = TrainConfig(
            model=ModelConfig(name=env.net["name"], kwargs=dict(env.net["kwargs"])),
            diffusion=DiffusionConfig(schedule="linear", T=T),
            data=DataConfig(name="digits", on_device=True),  # replaced by data= below
            optim=OptimConfig(lr=LR, grad_clip=0.0, fused=opts.get("fused", "auto")),
            ema=EMAConfig(decay=0.9999 if opts.get("ema", True) else 0.0, warmup=10),  # 0: no EMA copy
            sample=SampleConfig(every=-1), cond_drop_prob=0.1,
            batch_size=env.batch, steps=10**9, seed=0, device=str(env.device), tensorboard=False,
            precision=opts.get("precision", "fp32"), compile=opts.get("compile", "none"),
            cuda_graph=opts.get("cuda_graph", False),
        )
        super().__init__(Trainer(cfg, Path(env.tmp.name) / "run", data=(env.data, env.labels), progress=False),
                         env.batch)


class DiffusersTrain(Case):
    """diffusers' training step: add_noise, the transformer (label dropout 0.1 inside), MSE on eps,
    backward, AdamW."""

    def __init__(self, env: Env, opts: dict) -> None:
        from diffusers import DDPMScheduler

        self.env, self.opts = env, opts
        torch.manual_seed(0)
        model = diffusers_dit(env.net_name).to(env.device).train()
        self.net = torch.compile(model) if opts.get("compile") else model
        fused = {"fused": True} if opts.get("fused") else {}
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, **fused)
        self.sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
        self.data, self.labels = env.data.to(env.device), env.labels.to(env.device)
        self.images = env.batch

    def step(self) -> None:
        env = self.env
        idx = torch.randint(0, len(self.data), (env.batch,), device=env.device)
        x0, y = self.data[idx], self.labels[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, T, (env.batch,), device=env.device)
        x_t = self.sched.add_noise(x0, noise, t)
        with env.autocast(self.opts.get("precision", "fp32")):
            pred = self.net(x_t, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.loss = loss.detach()


def _weights(opts: dict) -> Optional[torch.dtype]:
    """A sampling row's stored weights: float32, or bf16 (``weights="bf16"``: half the memory, no
    casts per forward; the computation under the same bf16 autocast)."""
    return torch.bfloat16 if opts.get("weights") == "bf16" else None


class DifflabSample(Case):
    """``dl.sample(..., "ddim", steps, cond, guidance)`` of the network made fast by the row's options."""

    def __init__(self, env: Env, opts: dict) -> None:
        self.env = env
        network = copy.deepcopy(env.template("difflab")).to(env.device, _weights(opts))
        speed = {k: opts[k] for k in ("compile", "cuda_graph") if k in opts}
        if opts.get("precision", "fp32") != "fp32":
            speed["precision"] = opts["precision"]
        self.model = dl.accel.accelerate(network, **speed)
        self.images = env.sample_batch

    def step(self) -> None:
        env = self.env
        self.out = dl.sample(self.model, env.proc, env.noise.shape, "ddim", env.sample_steps, cond=env.sample_labels,
                             guidance=env.guidance, noise=env.noise, device=env.device, clip_x0=None)

    def close(self) -> None:
        self.model.release()


class DiffusersSample(Case):
    """DiTPipeline's loop without the VAE: doubled latents, labels then the null label, guided eps
    on the first in_channels, DDIMScheduler.step on the whole doubled batch."""

    def __init__(self, env: Env, opts: dict) -> None:
        from diffusers import DDIMScheduler

        self.env, self.opts = env, opts
        model = copy.deepcopy(env.template("diffusers")).to(env.device, _weights(opts))
        self.net = torch.compile(model) if opts.get("compile") else model
        self.sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                   clip_sample=False)
        null = torch.full_like(env.sample_labels, env.num_classes)
        self.class_labels = torch.cat([env.sample_labels, null])
        self.channels = model.config.in_channels
        self.images = env.sample_batch

    @torch.no_grad()
    def step(self) -> None:
        env, c, half = self.env, self.channels, self.env.sample_batch
        x = torch.cat([env.noise, env.noise])
        self.sched.set_timesteps(env.sample_steps)
        with env.autocast(self.opts.get("precision", "fp32")):
            for t in self.sched.timesteps:
                x = torch.cat([x[:half], x[:half]])
                x = self.sched.scale_model_input(x, t)
                timesteps = t[None].to(env.device).expand(x.shape[0])
                pred = self.net(x, timestep=timesteps, class_labels=self.class_labels).sample
                eps, rest = pred[:, :c], pred[:, c:]
                cond_eps, uncond_eps = torch.split(eps, half, dim=0)
                half_eps = uncond_eps + env.guidance * (cond_eps - uncond_eps)
                pred = torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)
                x = self.sched.step(pred, t, x).prev_sample
        self.out = x[:half]


CASES = {("difflab", "train"): DifflabTrain, ("diffusers", "train"): DiffusersTrain,
         ("difflab", "sample"): DifflabSample, ("diffusers", "sample"): DiffusersSample}


# ---------------------------------------------------------------- one row measured
def _row_flops(flops: dict, what: str, env: Env) -> float:
    """A row's FLOPs per image: ``run``'s table of each library's (training 3 forwards, sampling 2 a step)."""
    return flops[what]


def measure(spec: dict, env: Env, flops: dict) -> dict:
    """The row ``spec`` measured by throughput_lib's ``measure`` (the U-Net's steps and fields) with
    this file's cases; ``flops[library][what]``: FLOPs per image. A failing row returns with an
    ``error`` instead of raising, so that it does not lose the others."""
    return measure_row(spec, env, flops, CASES, per_image=_row_flops)


# ---------------------------------------------------------------- a run
def run(args, argv) -> dict:
    started = time.perf_counter()
    env = Env(args)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    out = Path(args.out) if args.out else REPO / "docs" / "benchmarks" / (
        "dit_throughput_tiny.json" if env.tiny else "dit_throughput.json")
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
    libs = sorted({s["library"] for s in specs})
    forward = {lib: forward_flops(env.net_name, lib) for lib in libs}
    # per image: training 3x a forward (backward ~ 2x); sampling 2 forwards (guidance) a step
    flops = {lib: {"forward": f, "train": 3 * f, "sample": 2 * env.sample_steps * f} for lib, f in forward.items()}
    env.graph_workspace = memory.graph_stream_workspace(env)
    params = parameter_counts(env.net_name, have_diffusers)
    result = _new_result(env, argv, params, flops)
    this_run = run_id(result["meta"]["date"], env.gpu_name)
    budget = f", time budget {args.time_budget:g} s" if args.time_budget else ""
    say(f"dit_throughput: {len(specs)} rows on {env.gpu_name} ({env.net_name}, {params}){budget} -> {out}")
    slowest: dict = {}
    failed: list[dict] = []
    for spec in specs:
        left = None if args.time_budget is None else args.time_budget - (time.perf_counter() - started)
        reason = skip_reason(spec, failed, slowest, left, env.tiny)
        if reason is not None:
            result["meta"]["skipped"].append(results.skipped_entry(spec, reason))
            say(f"  [skipped] {spec['what']:<6} {spec['library']:<9} {spec['name']:<40} {reason}")
            continue
        t0 = time.perf_counter()
        row = dict(measure(spec, env, flops), run=this_run)
        slowest[row_kind(spec)] = max(slowest.get(row_kind(spec), 0.0), time.perf_counter() - t0)
        if "error" in row:
            failed.append(spec)
        result["rows"].append(row)
        result["summary"] = summarize(result["rows"])
        results.write(result, out)
        ips = f"{row['images_per_s']:.1f} img/s" if "images_per_s" in row else row.get("error", "?")[:120]
        say(f"  [{time.perf_counter() - t0:6.1f} s] {spec['what']:<6} {spec['library']:<9} {spec['name']:<40} {ips}")
    result["summary"] = summarize(result["rows"])
    results.write(result, out)
    if not args.quiet:
        print_table(result)
        print(f"(sampling: DDIM with classifier-free guidance w = {env.guidance:g}, each step one forward of "
              f"{2 * env.sample_batch} = twice the sample batch; FLOPs per image: forward "
              + ", ".join(f"{lib} {f['forward'] / 1e9:.4g} G" for lib, f in flops.items()) + ")")
    env.tmp.cleanup()
    return result


def _new_result(env: Env, argv, params: dict, flops: dict) -> dict:
    meta = {
        "command": "python benchmarks/dit_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": str(env.device), "device_name": env.gpu_name,
        "peak_tflops_bf16": env.peak_tflops, "tiny": env.tiny, "network": env.net_name, "network_config": env.net,
        "parameters": params, "batch": env.batch, "sample_batch": env.sample_batch,
        "sample_forward_batch": 2 * env.sample_batch, "sample_steps": env.sample_steps, "guidance": env.guidance,
        "train_iters": env.train_iters, "train_warmup": env.train_warmup, "sample_warmup": env.sample_warmup,
        "repeats": env.repeats, "dataset_size": env.dataset_size, "flops_per_image": flops,
        "versions": versions(), "graph_stream_workspace_bytes": env.graph_workspace, "skipped": [],
    }
    return {"meta": meta, "rows": [], "summary": {}}


def parse_args(argv=None) -> argparse.Namespace:
    ap = run_parser(__doc__, "only rows whose library/what/name matches, in the patterns' order")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default 256; tiny: 4)")
    ap.add_argument("--sample-batch", type=int, default=None,
                    help="images per sampling run (default 64, forwards of 128 with guidance; tiny: 2)")
    ap.add_argument("--sample-steps", type=int, default=None, help="DDIM steps per sampling run (50; tiny 3)")
    ap.add_argument("--guidance", type=float, default=GUIDANCE, help="classifier-free guidance scale (> 1)")
    ap.add_argument("--train-iters", type=int, default=None, help="optimizer steps per timed run (10; tiny 2)")
    ap.add_argument("--train-warmup", type=int, default=None, help="untimed steps first (3; tiny 1)")
    ap.add_argument("--sample-warmup", type=int, default=None, help="untimed sampling runs first (1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row; the median counts (3; tiny 2)")
    ap.add_argument("--dataset-size", type=int, default=None, help="latents kept on the device (1024; tiny 64)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak for MFU (default: by GPU name; H100 SXM, H200 989.4)")
    ap.add_argument("--profile", default=None, metavar="DIR", help="a torch.profiler table per row here "
                                                                   "(or every row's in one FILE.txt)")
    ap.add_argument("--profile-iters", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON output (default docs/benchmarks/dit_throughput.json; "
                                                "CPU/tiny runs: docs/benchmarks/dit_throughput_tiny.json)")
    ap.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                    help="start a row only if it should end within this many seconds of the start")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU runs: torch intra-op threads (default 1; 0 = torch's default)")
    ap.add_argument("--report", default=None, metavar="JSON", help="measure nothing: print a results file as Markdown")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    check_run_options(ap, args, warmups=True)
    if not args.guidance > 1:
        ap.error(f"--guidance must be > 1 (the rows measure guided sampling's doubled batch), got {args.guidance}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    return report_or_run(args, lambda: run(args, argv))


if __name__ == "__main__":
    main()
