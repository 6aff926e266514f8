"""The training loop: one code path for a laptop CPU, one GPU and K GPUs under torchrun.

Per optimizer step s (global batch B over K processes and A accumulation micro-batches):

    idx   = the step's B dataset indices                 (GlobalBatches, seeded by (seed, epoch))
    t, eps, u = draws for all B samples                   (generator seeded by (seed, s);
                                                           t from proc.training_times)
    c     = label,  or the null label where u < p         (classifier-free guidance dropout)
    for each micro-batch m:  loss_m = loss_fn(model, batch_m);  backward(loss_m / A)
    clip ||grad|| <= grad_clip;  AdamW step (warm-up, decay);  EMA update

Process r of K takes slice r of each micro-batch, so the draws (and the batches) do not depend
on K: DDP's gradient average then equals one process's mean gradient up to summation order.
(Flow matching's optimal-transport coupling pairs noise and data within each process's
micro-batch, so with it a K-process run pairs differently from one process.)
Dropout masks are each process's own (its generator seeded by (seed, r) for r > 0), so with
dropout the K-process run is another draw of the same training, not the same numbers.

No host-device synchronisation inside the step loop: the loss is summed on the device and read
every ``log_every`` steps, together with the first step whose loss (or gradient norm) was not
finite, tracked on the device. So a NaN is detected at the next log point, naming the exact
step; checkpoints are written only after that check, so the latest checkpoint always predates
the first bad step.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from ..devices import graphs_supported as _graphs_supported
from ..devices import count_flops, resolve_device, use_cpu_threads
from ..data.clips import save_frame_grid
from ..processes import Process
from ..validation import model_attribute, null_label
from ..accel import set_module_forms
from .build import build_model, build_process, check_data_range, text_vocabulary
from .checkpoint import (atomic_write_text, latest_checkpoint, load_matching, new_checkpoint_folder, read_checkpoint,
                         verify_checkpoint, save_checkpoint)
from .config import TrainConfig, config_diff, load_config
from .lock import RunLock, RunLocked
from .run_config import render_run_config, run_config_action
from .data import GlobalBatches, check_data, is_captions, load_data, step_generator
from .ema import EMA
from .latent import check_latent_channels
from .latent_data import latent_training_data
from .generate import class_rows, generate, save_grid
from ..models.superres import lowres_model
from .loss import LossFn, TrainBatch, build_loss
from .sharding import (DCP_FOLDER, checkpoint_activations, full_weights, grad_norm, load_full_optimizer_state,
                       load_sharded, process_mesh, save_sharded, shard)
from .step_graph import StepGraph

__all__ = ["Trainer", "train"]

_NO_BAD_STEP = 2**62


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (1 process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def _resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = resolve_device(spec, "config field 'device'")
    if spec == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return dev


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """LR multiplier for update k (0-based): linear warm-up (k+1)/W, then constant, cosine or
    linear decay to 0 at the last step."""
    W, S, decay = cfg.optim.warmup_steps, cfg.steps, cfg.optim.decay

    def factor(k: int) -> float:
        if k < W:
            return (k + 1) / W
        if decay == "constant":
            return 1.0
        progress = min(1.0, (k - W) / max(1, S - W))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress

    return factor


class Trainer:
    """Train ``cfg`` into the run folder ``out``; ``train()`` runs to ``cfg.steps``.

    ``loss_fn(model, batch: TrainBatch) -> scalar`` replaces the default diffusion loss;
    ``data=(x, labels)`` replaces the config's dataset (tests; the config still names one): x a
    float tensor (or NumPy array) [N, ...] of finite values (images scaled to about [-1, 1]),
    labels None or N integers in 0 .. num_classes-1, checked up front like the config's data.
    The range its samples are clipped to still comes from the config (``sample.clip_x0``, else
    its data set's), so x reaching beyond it is refused (``build.check_data_range``).
    ``resume=True`` continues from the run folder's latest checkpoint, which must hold a
    compatible config (only the fields in ``config.RESUMABLE_FIELDS`` may differ).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: Union[str, Path],
        *,
        loss_fn: Optional[LossFn] = None,
        data: Optional[tuple[Tensor, Optional[Tensor]]] = None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg = cfg.validate()
        self.out = Path(out)
        self.progress = progress
        self.rank, self.world, local = _dist_env()
        # sharding: fsdp shards over the processes of a torchrun run; one process holds the whole model
        self.sharded = cfg.sharding == "fsdp" and self.world > 1
        if self.sharded and cfg.distill.method is not None:
            raise ValueError(
                f"config field 'sharding': a distilled student ({cfg.distill.method}) starts from its teacher's "
                "weights, loaded into the whole network, and this run would shard it over "
                f"{self.world} processes; distil with sharding: none (the student is the teacher's size)")
        self.device = _resolve_device(cfg.device, local)
        per = cfg.batch_size // cfg.grad_accum
        if per % self.world:
            raise ValueError(
                f"config field 'batch_size': {cfg.batch_size} images per step cannot be split evenly "
                f"over grad_accum = {cfg.grad_accum} micro-batches and {self.world} processes; "
                f"use a multiple of {cfg.grad_accum * self.world}"
            )
        self._own_group = False
        if self.world > 1 and not torch.distributed.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self._own_group = True
        self.micro_batch = per // self.world
        self.is_main = self.rank == 0
        # one training per run folder: process 0 takes the lock when train() starts; refuse now
        # already if a living process holds it (before reading a checkpoint it may be rewriting)
        self._lock = RunLock(self.out, say=self._say)
        self._lock.check()
        if not resume and latest_checkpoint(self.out) is not None:  # before the data (a latent run encodes it)
            raise FileExistsError(
                f"{str(self.out)!r} already holds a run (checkpoints/latest exists); pass --resume "
                "(resume=True) to continue it, or choose another output folder"
            )

        # ---- data
        self.num_classes = cfg.num_classes
        if data is not None:  # (checked like the config's data: type, shape, finite, scale, labels)
            x, y = check_data(data, self.num_classes, name="Trainer argument 'data'")
            data_name = "given as the Trainer argument 'data'"
            self._data_label = "the data given to Trainer(data=...)"  # not the config's data set
        else:
            x, y = load_data(cfg.data)
            data_name = repr(cfg.data.name)
            self._data_label = f"data {cfg.data.name!r}"
        self.data_name = data_name
        self.image_shape = tuple(x.shape[1:])  # what samples look like (grids, dl.load)
        self.autoencoder = None  # latent diffusion (training/latent_data.py): the network trains on the latents
        if cfg.latent.autoencoder is not None:
            self.autoencoder, x = latent_training_data(cfg, self.out, x, resume=resume, write=self.is_main,
                                                       data=self._data_label, device=self.device, say=self._say)
        if cfg.data.flatten:
            x = x.flatten(1)
        self.sample_shape = tuple(x.shape[1:])  # what the network takes
        captions = y if is_captions(y) else None  # a text model's: tokenized once the model is built
        self.captions: Optional[list[str]] = None
        if captions is not None:
            y = None
            if self.num_classes is not None:
                raise ValueError(f"the data {data_name} has captions, but the model is class-conditional "
                                 f"(model.kwargs.num_classes = {self.num_classes}): train a text model "
                                 "(model.name: text_unet or text_dit), or take the digits as labels "
                                 "(data.kwargs.labels: digit)")
        text_vocabulary(cfg, captions, data_name)  # model.kwargs.vocab: the captions' words (saved with the run)
        if self.num_classes is not None and y is None:
            raise ValueError(f"the model is class-conditional (model.kwargs.num_classes = {self.num_classes}) "
                             f"but the data {data_name} has no labels")
        if y is not None and self.num_classes is not None and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"data labels lie in [{int(y.min())}, {int(y.max())}] but the model has "
                             f"num_classes = {self.num_classes}; set model.kwargs.num_classes")
        check_data_range(cfg, x, self._data_label)  # within the range its samples are clipped to
        data_device = self.device if cfg.data.on_device else torch.device("cpu")
        self.x = x.to(data_device)
        self.y = y.to(data_device) if (y is not None and self.num_classes is not None) else None
        self.batches = GlobalBatches(len(x), cfg.batch_size, cfg.seed, device=data_device)

        # ---- model, process, loss
        torch.manual_seed(cfg.seed)
        self.proc: Process = build_process(cfg)
        model = build_model(cfg)
        if self.autoencoder is not None:  # it must take (and predict) the latents' channels
            check_latent_channels(model, self.autoencoder, repr(cfg.latent.autoencoder), f"model {cfg.model.name!r}")
        self.null_cond = null_label(model)  # what label dropout puts in: the null class, or the empty caption
        tokenizer = model_attribute(model, "tokenizer")  # (also under EDM's or a consistency model's wrapper)
        self.text = tokenizer is not None
        if self.text != (captions is not None):
            raise ValueError(
                f"model {cfg.model.name!r} is a text model but the data {data_name} has no captions (use "
                "data.name: captioned_digits, or give Trainer(data=(images, captions)))" if self.text else
                f"the data {data_name} has captions but model {cfg.model.name!r} takes no text: use "
                "model.name: text_unet (or text_dit), or data.kwargs.labels: digit with num_classes")
        if self.text:  # token ids [N, L]: tokenized once, indexed per step like class labels
            self.y = tokenizer.encode(captions).to(data_device)
            self.captions = captions
        set_module_forms(model, group_norm=cfg.group_norm)  # faster forms of the same function, in place
        self.loss_fn: LossFn = loss_fn or build_loss(self.proc, cfg)
        sample_flops = self._check_model(model)
        # CPU runs: torch's threads, process-wide like torchrun's OMP_NUM_THREADS, by the rule of
        # difflab.devices (one for a small step: forward + backward ~ 3x the forward of a micro-batch)
        self.cpu_threads_note: Optional[str] = None
        if self.device.type == "cpu":
            self.cpu_threads_note = use_cpu_threads(3 * sample_flops * self.micro_batch, cfg.cpu_threads)
        self.channels_last = cfg.channels_last and len(self.sample_shape) == 3
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        model.train()
        self.model = model
        self.ema = EMA(model, cfg.ema.decay, cfg.ema.warmup)
        # memory (training/sharding.py): after the EMA's copy, which runs no backward, and before
        # the optimizer, since sharding replaces the parameters by DTensors of their shards
        if cfg.activation_checkpointing:
            checkpoint_activations(model)
        if self.sharded:
            mesh = process_mesh(self.device.type)
            shard(model, mesh)
            if not self.ema.is_model:  # the EMA's update is elementwise: shard by shard
                shard(self.ema.model, mesh)
        elif cfg.sharding == "fsdp":
            self._say("note: sharding: fsdp shards the model over the processes of a torchrun run; this run has "
                      "one, which holds the whole model (its checkpoints are a sharded run's, and resume on any "
                      "number of processes)")
        if self.rank > 0:  # dropout masks: the network was built alike everywhere, the masks differ
            torch.manual_seed(cfg.seed * 1_000_003 + self.rank)  # (process 0's stream as in one process)
        if self.num_classes is not None and cfg.cond_drop_prob == 0 and cfg.sample.guidance != 1 \
                and not getattr(model, "guidance_input", False):  # (a guided student takes the scale as input)
            self._say("note: cond_drop_prob = 0 never trains the null label, so classifier-free guidance "
                      f"(sample.guidance = {cfg.sample.guidance}) has no unconditional model to use")

        # ---- optimiser, LR schedule, mixed precision
        cuda = self.device.type == "cuda"
        fused = cuda if cfg.optim.fused == "auto" else bool(cfg.optim.fused)
        o = cfg.optim
        self.cuda_graph = cfg.cuda_graph and _graphs_supported(self.device)
        if cfg.cuda_graph and not self.cuda_graph:
            self._say("note: cuda_graph is a CUDA option; this CPU run steps eagerly")
        if self.cuda_graph and self.world > 1:  # a config shared by one- and many-GPU runs keeps working
            self.cuda_graph = False
            self._say(f"note: cuda_graph captures one process's step; this run has {self.world} processes "
                      "(torchrun), which step eagerly")
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
            **({"fused": True} if fused else {"foreach": True}),
            **({"capturable": True} if self.cuda_graph else {}),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg))
        self.autocast_dtype = None
        if cfg.precision != "fp32":
            if cuda:
                self.autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
            else:
                self._say(f"note: precision {cfg.precision} is a CUDA option; this CPU run uses fp32")
        self.scaler = torch.amp.GradScaler("cuda") if (cuda and cfg.precision == "fp16") else None

        # ---- wrappers: DDP, torch.compile
        net: nn.Module = model
        compile_mode = cfg.compile
        if compile_mode == "none" and cfg.compile_options:
            self._say("note: compile_options are unused with compile: none (set compile: model or step)")
        if compile_mode != "none" and not cuda and not cfg.compile_options:
            self._say(f"note: compile {compile_mode!r} is a CUDA option (a CPU compile takes minutes); "
                      "this CPU run runs eagerly (set compile_options to compile anyway)")
            compile_mode = "none"
        cache_tables = getattr(self.proc, "cache_tables", None)  # (the DDPM chain's per-timestep tables)
        if cache_tables is not None and (compile_mode != "none" or self.cuda_graph):
            # the coefficient tables on the device first: compiled once, and no host-to-device
            # copy inside a captured step
            cache_tables(self.device, self.x.dtype)
        if self.world > 1 and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[self.device.index] if cuda else None)
            if self.num_classes is not None:
                net.num_classes = self.num_classes  # training_loss reads it (null label)
        if compile_mode == "model":
            net = torch.compile(net, **cfg.compile_options)
        self.net = net
        self._loss_call = self.loss_fn
        if compile_mode == "step":
            loss_fn_ = self.loss_fn

            def _loss(net: nn.Module, batch: TrainBatch) -> Tensor:
                return loss_fn_(net, batch)

            self._loss_call = torch.compile(_loss, **cfg.compile_options)
        # torch's min-cut partitioner decides, when the step is first compiled (its first call),
        # which activations the forward keeps for the backward; a budget below 1 recomputes more
        self._memory_budget = contextlib.nullcontext
        if cfg.activation_memory_budget is not None:
            if compile_mode == "none":
                self._say("note: activation_memory_budget acts on a compiled step or model; this run "
                          "does not compile, so it is unused")
            else:
                import torch._functorch.config as functorch_config

                budget = float(cfg.activation_memory_budget)
                self._memory_budget = lambda: functorch_config.patch(activation_memory_budget=budget)
        # compile modes that replay CUDA graphs reuse their output buffers: each call starts a new
        # "step" for torch's cudagraph trees (the previous outputs are consumed by then)
        self._graph_replay = compile_mode != "none" and cfg.compile_options.get("mode") in (
            "reduce-overhead", "max-autotune")
        self._draw_gen = torch.Generator(device=self.device)
        self._graph = StepGraph(self._update, self.optimizer, self.device) if self.cuda_graph else None

        self.step = 0
        self.start_step = 0
        self.elapsed_before = 0.0  # training seconds of the run before this process (from the checkpoint)
        self._run_start = time.perf_counter()
        self.history: list[dict] = []  # the rows of log.csv, as numbers
        ckpt_root = self.out / "checkpoints"
        self._resumed_config: Optional[TrainConfig] = None
        if resume:
            self._resume()
        self.ckpt_root = ckpt_root
        # what this trainer found: train() checks, holding the lock, that nobody changed it since
        self._known_checkpoint = latest_checkpoint(self.out)
        run_config_action(self.out / "config.yaml", cfg, self._resumed_config)  # refuse now, not after training

    # ------------------------------------------------------------------ helpers
    def _say(self, msg: str) -> None:
        if self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)

    def _check_model(self, model: nn.Module) -> float:
        """The config's loss on two samples (the model called as its loss calls it: a
        super-resolution model with its low-res images), so a model that cannot take the data
        fails here with a clear message. The data itself (its scale, labels, range) was checked
        before, so what fails here is the model's fit to the data's shape. Returns its FLOPs per
        sample (counted on CPU runs only, for the choice of threads; 0 on others)."""
        k = min(2, len(self.x))
        x = self.x[:k].float().cpu()
        t = self.proc.training_times(k, generator=torch.Generator().manual_seed(0))  # (its own generator)
        cond = self.y[:k].cpu() if self.y is not None else None
        batch = TrainBatch(x0=x, cond=cond, labels=cond, t=t, noise=torch.zeros_like(x), u=torch.ones(k), step=0,
                           index=torch.arange(k))  # u = 1: no label dropped
        model.eval()
        try:
            with torch.no_grad():
                if self.device.type != "cpu":
                    build_loss(self.proc, self.cfg)(model, batch)
                    return 0.0
                return count_flops(lambda: build_loss(self.proc, self.cfg)(model, batch)) / k
        except Exception as err:  # noqa: BLE001 - re-raised with the config's names
            raise ValueError(
                f"model {self.cfg.model.name!r} cannot take {self._data_label} of shape "
                f"{tuple(x.shape[1:])}: {type(err).__name__}: {err}. Check model.kwargs "
                "(channels, image size, dim) and data.flatten"
            ) from None
        finally:
            model.train()

    def _rng_state(self) -> dict:
        s = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            s["cuda"] = torch.cuda.get_rng_state(self.device)
        return s

    def _gather_rng(self) -> list:
        mine = self._rng_state()
        if self.world == 1:
            return [mine]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, {k: v.cpu() for k, v in mine.items()})
        return out

    # ------------------------------------------------------------------ resume
    def _resume(self) -> None:
        ck = latest_checkpoint(self.out)
        if ck is None:
            raise FileNotFoundError(
                f"nothing to resume in {str(self.out)!r}: no checkpoints/latest; start without --resume"
            )
        sharded_state = (ck / DCP_FOLDER).is_dir()  # (then the whole weights are not needed: dcp/ has them)
        saved = read_checkpoint(ck, verify=False, weights=not sharded_state)  # checksums after the checks below
        self._resumed_config = saved["config"]
        diff = config_diff(saved["config"], self.cfg)
        if diff:
            lines = ", ".join(f"{k} (checkpoint: {a!r}, now: {b!r})" for k, a, b in diff)
            raise ValueError(
                f"cannot resume {str(ck)!r}: the config differs from the checkpoint's in {lines}. "
                "Resume with the checkpoint's settings (omit --config to reuse them), or start a new "
                "run in another output folder"
            )
        self._check_same_data(saved["state"], ck)
        st = saved["state"]
        if st.get("sharded_state") and not sharded_state:
            raise FileNotFoundError(f"checkpoint folder {str(ck / DCP_FOLDER)!r} (its sharded model, EMA and optimizer "
                                    "state) is missing; the checkpoint is incomplete: restore it, or resume from "
                                    "another checkpoint")
        opt = saved["optimizer"]
        if sharded_state:
            self._resume_sharded(ck, saved)
        else:
            _load_matching(self.model, saved["model"], ck / "model.safetensors")  # (a sharded model: its shards)
            if not self.ema.is_model:  # ema.decay 0: the EMA weights are the model's
                _load_matching(self.ema.model, saved["ema"], ck / "ema.safetensors")
            _check_optimizer_state(opt["optimizer"], self.optimizer, ck / "optimizer.pt")
            _check_optimizer_settings(opt, saved["config"], ck)
            verify_checkpoint(ck)
            # how AdamW runs (fused / foreach / capturable) is this run's choice, not the checkpoint's:
            # the flags decide where the loaded step counts are placed, so set them before loading
            now = self.optimizer.param_groups
            for g_saved, g_now in zip(opt["optimizer"]["param_groups"], now):
                g_saved.update({k: g_now[k] for k in ("fused", "foreach", "capturable") if k in g_now})
            if self.sharded:  # an unsharded run's state, each process keeping its shards
                load_full_optimizer_state(self.model, self.optimizer, opt["optimizer"])
            else:
                self.optimizer.load_state_dict(opt["optimizer"])
        self.ema.num_updates = st["ema"]["num_updates"]
        self.scheduler.load_state_dict(opt["scheduler"])
        self._apply_horizon(saved["config"], int(saved["state"]["step"]))
        if self.scaler is not None and opt.get("scaler"):
            self.scaler.load_state_dict(opt["scaler"])
        rng = saved["rng"]
        mine = rng[self.rank] if self.rank < len(rng) else rng[0]
        torch.set_rng_state(mine["cpu"])
        if self.device.type == "cuda" and "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"], self.device)
        if hasattr(self.loss_fn, "load_checkpoint_state") and "loss_state" in st:  # (the loss-aware sampler's history)
            self.loss_fn.load_checkpoint_state(st["loss_state"])
        self.step = self.start_step = int(st["step"])
        self.elapsed_before = float(st.get("elapsed_s", 0.0))
        if st.get("world_size", 1) != self.world:
            self._say(f"note: resuming a {st.get('world_size', 1)}-process run on {self.world}; "
                      "batches and draws are unchanged (they are global), dropout draws are not")
        self._say(f"resuming from {ck} at step {self.step}")

    def _resume_sharded(self, ck: Path, saved: dict) -> None:
        """The model, EMA and optimizer state of a sharded checkpoint (``dcp/``), read at this
        run's number of processes, sharded or not (torch.distributed.checkpoint reshards)."""
        _check_optimizer_settings(saved["optimizer"], saved["config"], ck)
        verify_checkpoint(ck)  # (every file of dcp/ too) before any of it is read
        try:
            load_sharded(ck / DCP_FOLDER, self.model, None if self.ema.is_model else self.ema.model, self.optimizer)
        except ValueError as err:  # (a missing key, a shape: the state is another network's)
            raise _mismatch(ck / DCP_FOLDER, f"its sharded state does not fit the network ({str(err)[:300]})") from None

    def _apply_horizon(self, saved: TrainConfig, step: int) -> None:
        """A resume with another ``steps`` under a decaying LR schedule: the schedule's horizon
        becomes the new total (as diffusers' scripts rebuild theirs from --max_train_steps), from
        this step on, and the note says so. The learning rate of the next update is set at once
        (the optimizer state holds the rate the old schedule chose for it)."""
        cfg = self.cfg
        if saved.steps == cfg.steps or cfg.optim.decay == "constant" or step >= cfg.steps:
            return  # constant decay: steps does not enter the schedule, the resume stays exact
        old = _lr_factor(saved)(step) * cfg.optim.lr
        new = _lr_factor(cfg)(step) * cfg.optim.lr
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * _lr_factor(cfg)(step)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self._say(f"note: the learning-rate schedule ({cfg.optim.decay} decay) now ends at step {cfg.steps} instead "
                  f"of {saved.steps}: from step {step} on it follows a {cfg.steps}-step run's schedule (lr {new:.3g} "
                  f"now, where the {saved.steps}-step schedule gives {old:.3g}); the steps before followed the "
                  f"{saved.steps}-step one, so the result is not bit-identical to an uninterrupted {cfg.steps}-step run")

    def _check_same_data(self, st: dict, ck: Path) -> None:
        """Refuse to resume on data of another size or shape: the batch stream (a permutation of
        0..N-1 per epoch) and the checkpoint's position in it would silently mean other samples."""
        then_n = (st.get("data_stream") or {}).get("n")
        if then_n is not None and then_n != len(self.x):
            raise ValueError(
                f"cannot resume {str(ck)!r}: the dataset ({self.data_name}) had {then_n} samples "
                f"when the checkpoint was written and has {len(self.x)} now; the data changed. Restore the "
                "data as it was, or start a new run in another output folder"
            )
        then_shape = st.get("sample_shape")
        if then_shape is not None and tuple(then_shape) != self.sample_shape:
            raise ValueError(
                f"cannot resume {str(ck)!r}: the samples had shape {tuple(then_shape)} when the checkpoint "
                f"was written and have shape {self.sample_shape} now; the data changed. Restore the data "
                "as it was, or start a new run in another output folder"
            )

    # ------------------------------------------------------------------ step
    def _micro_batches(self, s: int):
        """The micro-batches of step s for this process, as TrainBatch objects."""
        cfg, B, A = self.cfg, self.cfg.batch_size, self.cfg.grad_accum
        g = step_generator(self._draw_gen, cfg.seed, s)
        dev = self.device
        draw = getattr(self.loss_fn, "training_times", None) or self.proc.training_times  # (a loss may choose t)
        t_all = draw(B, generator=g, device=dev)
        u_all = torch.rand(B, generator=g, device=dev)
        noise_all = torch.randn((B, *self.sample_shape), generator=g, device=dev)
        idx_all = self.batches.indices(s)
        per = B // A
        for m in range(A):
            lo = m * per + self.rank * self.micro_batch
            sl = slice(lo, lo + self.micro_batch)
            idx = idx_all[sl]
            x0 = self.x[idx].to(dev, non_blocking=True)
            noise = noise_all[sl]
            if self.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
                noise = noise.contiguous(memory_format=torch.channels_last)
            labels = cond = None
            if self.y is not None:
                labels = self.y[idx].to(dev, non_blocking=True)
                cond = labels
                if cfg.cond_drop_prob > 0:
                    drop = (u_all[sl] < cfg.cond_drop_prob).view(-1, *([1] * (labels.ndim - 1)))  # whole captions
                    cond = torch.where(drop, self.null_cond, labels)
            yield TrainBatch(x0=x0, cond=cond, labels=labels, t=t_all[sl], noise=noise, u=u_all[sl],
                             step=s, index=idx, ema=self.ema.model)

    def train_step(self, s: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Optimizer step ``s`` (default: the run's current step) exactly as :meth:`train` runs
        it -- draws, forward, backward, clipping, AdamW, EMA -- without advancing the run,
        logging or checkpointing (benchmarks time this). Returns (mean loss, grad norm) as
        device tensors; no host-device synchronisation. With ``cuda_graph`` they are the
        graph's output buffers: read or clone them before the next step."""
        return self._train_step(self.step if s is None else s)

    def _train_step(self, s: int) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns (mean loss, grad norm) as device tensors (no sync)."""
        batches = list(self._micro_batches(s))
        if self._graph is None:
            out = self._update(batches)
        else:  # the same body, captured once and replayed (training/step_graph.py)
            out = self._graph(batches, self.ema.current_decay())
            self.ema.num_updates += 1
        self.scheduler.step()
        return out

    def _update(self, batches: list[TrainBatch], ema_decay: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """The step's computation on its micro-batches: forward, backward, clipping, AdamW, EMA
        (with ``ema_decay``, a device tensor, when a CUDA graph replays it; else the EMA's own)."""
        cfg, A = self.cfg, self.cfg.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=not self.cuda_graph)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        for m, batch in enumerate(batches):
            sync = contextlib.nullcontext()
            # DDP averages the gradients once, after the last micro-batch; FSDP reduce-scatters
            # after each (the sum of averaged shards is the average of sums), so no process ever
            # holds a whole gradient
            if self.world > 1 and not self.sharded and m < A - 1:
                sync = self.net.no_sync()
            with sync:
                if self._graph_replay:
                    torch.compiler.cudagraph_mark_step_begin()
                with autocast, self._memory_budget():
                    loss = self._loss_call(self.net, batch)
                if loss.ndim:
                    loss = loss.mean()
                scaled = loss / A
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total = loss.detach().float() / A if total is None else total + loss.detach().float() / A
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.sharded:  # the norm over every process's shards, which each process then holds
            norm = grad_norm(self.model.parameters(), cfg.optim.grad_clip)
        elif cfg.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip, foreach=True)
        else:  # still measured: a non-finite gradient stops the run like a non-finite loss
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if ema_decay is None:
            self.ema.update(self.model)
        else:
            self.ema.apply(self.model, ema_decay)
        return total, norm

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        """Run to ``cfg.steps`` (or until ``cfg.max_time`` is spent); returns a summary (final loss,
        checkpoint, images/s, seconds, whether max_time stopped it). Process 0 holds the run
        folder's lock meanwhile (training/lock.py), released however the run ends."""
        self._take_lock()
        try:
            return self._train_locked()
        finally:
            self._lock.release()

    def _take_lock(self) -> None:
        """Process 0 takes the run folder's lock and, holding it, checks that the folder is as this
        trainer found it (no other training wrote a checkpoint meanwhile), then writes the run's
        config.yaml (never over a file a person wrote: training/run_config.py). Every process
        learns whether it could."""
        error: Optional[BaseException] = None
        if self.is_main:
            try:
                self._lock.acquire()
                now = latest_checkpoint(self.out)
                if now != self._known_checkpoint:
                    was = repr(str(self._known_checkpoint)) if self._known_checkpoint else "none"
                    raise FileExistsError(
                        f"run folder {str(self.out)!r} changed while this training was being set up: another "
                        f"training wrote the checkpoint {str(now)!r} meanwhile (this one found {was}); start "
                        "again with --resume (resume=True) to continue from it, or train into another --out")
                path = self.out / "config.yaml"
                if run_config_action(path, self.cfg, self._resumed_config) == "write":
                    atomic_write_text(path, render_run_config(self.cfg))
            except BaseException as err:  # noqa: BLE001 - re-raised below, after the others learn of it
                self._lock.release()
                error = err
        if self.world > 1:
            flag = torch.tensor(float(error is not None), device=self.device)
            torch.distributed.broadcast(flag, src=0)
            if error is None and bool(flag):
                raise RunLocked(f"run folder {str(self.out)!r}: process 0 could not start the training "
                                "(its message says why)")
        if error is not None:
            raise error

    def _train_locked(self) -> dict:
        cfg = self.cfg
        logger = _Logger(self.out, self.start_step, cfg.tensorboard) if self.is_main else None
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", desc="training", dynamic_ncols=True)
        dev = self.device
        loss_sum = torch.zeros((), device=dev)
        first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.long, device=dev)
        window_steps, window_start, pause = 0, time.perf_counter(), 0.0
        run_images = 0
        self._run_start = run_start = time.perf_counter() - self.elapsed_before  # elapsed_s counts across resumes
        last = {"loss": float("nan"), "images_per_sec": float("nan")}
        stopped_early = False
        ckpt_path = latest_checkpoint(self.out)
        if self.step >= cfg.steps:
            self._say(f"nothing to do: the run is at step {self.step} of steps = {cfg.steps} "
                      "(resume with a larger --steps to train longer)")
        try:
            while self.step < cfg.steps:
                s = self.step
                loss, grad_norm = self._train_step(s)
                ok = torch.isfinite(loss)
                if self.scaler is None:  # with fp16 loss scaling, inf gradients only skip a step
                    ok = ok & torch.isfinite(grad_norm)
                first_bad = torch.minimum(first_bad, torch.where(ok, _NO_BAD_STEP, s))
                loss_sum += torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
                self.step += 1
                window_steps += 1
                if bar is not None:
                    bar.update(1)
                at_end = self.step == cfg.steps
                if not at_end and self.step % cfg.log_every == 0 and self._out_of_time(run_start):
                    at_end = stopped_early = True
                at_ckpt = self.step % cfg.ckpt_every == 0 or at_end
                if self.step % cfg.log_every == 0 or at_ckpt:
                    mean_loss, bad = self._reduce(loss_sum, first_bad, window_steps)
                    if bad < _NO_BAD_STEP:
                        self._stop_on_nan(bad, ckpt_path)
                    now = time.perf_counter()
                    ips = window_steps * cfg.batch_size / max(1e-9, now - window_start - pause)
                    run_images += window_steps * cfg.batch_size
                    lr = float(self.scheduler.get_last_lr()[0])  # a device tensor under cuda_graph
                    gn = float(grad_norm)
                    last = {"loss": mean_loss, "images_per_sec": ips}
                    self.history.append({"step": self.step, "loss": mean_loss, "lr": lr, "grad_norm": gn,
                                         "images_per_sec": ips, "elapsed_s": now - run_start})
                    if logger is not None:
                        logger.row(self.step, mean_loss, lr, gn, ips, now - run_start)
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}", lr=f"{lr:.2e}")
                    loss_sum.zero_()
                    window_steps, window_start, pause = 0, now, 0.0
                t0 = time.perf_counter()
                if at_ckpt:
                    ckpt_path = self.save()
                every = cfg.sample.every
                if (self.is_main or self.sharded) and ((every > 0 and self.step % every == 0) or (at_end and every >= 0)):
                    self.sample_grid(self.out / "samples" / f"step_{self.step:08d}.png")
                pause += time.perf_counter() - t0
                if stopped_early:
                    self._say(f"max_time = {cfg.max_time:g} s reached at step {self.step} of {cfg.steps}: "
                              f"stopped with a checkpoint (resume with a larger max_time to go on)")
                    break
        finally:
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
        seconds = time.perf_counter() - run_start - self.elapsed_before  # this process's share
        return {"step": self.step, "loss": last["loss"], "images_per_sec": last["images_per_sec"],
                "mean_images_per_sec": run_images / max(seconds, 1e-9), "seconds": seconds,
                "total_seconds": seconds + self.elapsed_before,
                "checkpoint": str(ckpt_path) if ckpt_path else None, "out": str(self.out),
                "stopped_by_max_time": stopped_early}

    def _out_of_time(self, run_start: float) -> bool:
        """Has the run (resumes included) spent ``max_time``? Every process gets process 0's answer,
        so all stop at the same step."""
        if self.cfg.max_time is None:
            return False
        spent = time.perf_counter() - run_start >= self.cfg.max_time
        if self.world > 1:
            flag = torch.tensor(float(spent), device=self.device)
            torch.distributed.broadcast(flag, src=0)
            spent = bool(flag)
        return spent

    def _reduce(self, loss_sum: Tensor, first_bad: Tensor, window: int) -> tuple[float, int]:
        """The window's mean loss over all processes and the first non-finite step (a sync point)."""
        if self.world > 1:
            loss_sum = loss_sum.clone()
            torch.distributed.all_reduce(loss_sum)
            loss_sum /= self.world
            first_bad = first_bad.clone()
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
        return float(loss_sum) / window, int(first_bad)

    def _stop_on_nan(self, bad: int, ckpt: Optional[Path]) -> None:
        ckpt = ckpt or latest_checkpoint(self.out)  # (only process 0 writes, and knows the path)
        keep = f"the last good checkpoint is {str(ckpt)!r} (resume with --resume)" if ckpt else \
            "no checkpoint was written before it"
        raise FloatingPointError(
            f"the training loss (or gradient norm) became NaN/inf at step {bad + 1} (update {bad}, "
            f"0-based); training stopped, {keep}. Try a lower optim.lr, a longer optim.warmup_steps, "
            "optim.grad_clip > 0, or precision bf16 instead of fp16"
        )

    # ------------------------------------------------------------------ outputs
    def save(self) -> Optional[Path]:
        """Write a checkpoint of the current step (process 0 writes; all wait for it)."""
        rng = self._gather_rng()
        if self.cfg.sharding == "fsdp":
            return self._save_sharded(rng)
        path = None
        if self.is_main:
            path = save_checkpoint(self.ckpt_root, self.step, config=self.cfg, model=self.model, ema=self.ema,
                                   optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                                   rng=rng, state=self._checkpoint_state(), keep_last=self.cfg.keep_last)
            self._known_checkpoint = path
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def _checkpoint_state(self) -> dict:
        """What state.json records of the run besides the step and the EMA (process 0)."""
        return {"world_size": self.world, "data_stream": self.batches.state(self.step),
                "sample_shape": list(self.sample_shape), "image_shape": list(self.image_shape),
                "num_classes": self.num_classes, "elapsed_s": round(time.perf_counter() - self._run_start, 3),
                **({"loss_state": self.loss_fn.checkpoint_state()} if hasattr(self.loss_fn, "checkpoint_state") else {})}

    def _save_sharded(self, rng: list) -> Optional[Path]:
        """A checkpoint of a run with ``sharding: fsdp`` (at any number of processes): every
        process writes its shards of the model, EMA and optimizer state into the new checkpoint's
        ``dcp/`` (torch.distributed.checkpoint), process 0 the whole weights (gathered from the
        shards) and the rest, then renames the folder into place; all wait for it."""
        folder = new_checkpoint_folder(self.ckpt_root, self.step) if self.is_main else None
        if self.world > 1:  # (a file system the processes share, as torchrun's on one machine)
            box = [str(folder) if folder is not None else None]
            torch.distributed.broadcast_object_list(box, src=0)
            folder = Path(box[0])
        model_weights = full_weights(self.model) if self.sharded else self.model
        ema_weights = None  # (the EMA's module itself, when it is not sharded)
        if self.sharded:
            ema_weights = model_weights if self.ema.is_model else full_weights(self.ema.model)
        save_sharded(folder / DCP_FOLDER, self.model, None if self.ema.is_model else self.ema.model, self.optimizer)
        path = None
        if self.is_main:
            path = save_checkpoint(self.ckpt_root, self.step, config=self.cfg, model=model_weights, ema=self.ema,
                                   ema_weights=ema_weights, optimizer=self.optimizer, scheduler=self.scheduler,
                                   scaler=self.scaler, rng=rng, state=self._checkpoint_state(),
                                   keep_last=self.cfg.keep_last, folder=folder, sharded=True)
            self._known_checkpoint = path
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def sample_grid(self, path: Union[str, Path]) -> Path:
        """A grid from the EMA weights with the config's sample settings (a row per class). A
        sharded run's processes all sample (each block's forward gathers its shards); process 0
        writes the grid."""
        sc = self.cfg.sample
        if lowres_model(self.ema.model) is not None:
            self._say("note: no sample grid for a super-resolution model (it needs low-res images: "
                      "difflab upscale --ckpt RUN --input LOW.png)")
            return Path(path)
        prompts = None
        if self.text:  # a row per training caption, the first distinct ones
            firsts = list(dict.fromkeys(self.captions))[:max(1, sc.n // sc.per_class)]
            labels, prompts, nrow = None, [p for p in firsts for _ in range(sc.per_class)], sc.per_class
        elif self.num_classes is not None:
            labels, nrow = class_rows(self.num_classes, sc.per_class), sc.per_class
        else:
            labels, nrow = None, max(1, int(math.sqrt(sc.n)))
        conditions = labels if prompts is None else prompts
        n = len(conditions) if conditions is not None else sc.n
        guidance = sc.guidance if conditions is not None else 1.0
        was_training = self.ema.model.training  # the live model itself when ema.decay = 0
        self.ema.model.eval()
        try:
            images = generate(self.ema.model, self.proc, n, self.sample_shape, image_shape=self.image_shape,
                              sampler=sc.sampler, steps=sc.steps, guidance=guidance, labels=labels,
                              prompts=prompts, seed=sc.seed, device=self.device,  # clipped to the process's data range
                              autoencoder=self.autoencoder)  # (a latent run's grids: decoded images)
        finally:
            self.ema.model.train(was_training)
        if images.ndim not in (4, 5):
            self._say(f"note: no sample grid for data of shape {self.sample_shape} (not images)")
            return Path(path)
        if not self.is_main:
            return Path(path)
        if images.ndim == 5:  # clips [N, T, C, H, W]: a clip a row, its frames left to right
            return save_frame_grid(images, path)
        return save_grid(images, path, nrow)

    def close(self, failed: bool = False) -> None:
        """Release the process group this trainer started (torchrun runs; otherwise nothing).

        After a run that ended normally on every process, all of them wait for each other and
        then destroy the group, DDP's reference to it dropped first: a process that tore down its
        connections while another still held the group made that one abort at exit (gloo,
        "terminate called without an active exception", 7 of 100 two-process runs). After a
        failure (``failed=True``) the group is left alone: another process may never reach the
        wait, and torchrun ends the workers."""
        self._lock.release()  # (train() releases it already; a no-op then)
        if not (self._own_group and torch.distributed.is_initialized()):
            return
        self._own_group = False
        if failed:
            return
        self.net = self.model  # the DDP wrapper holds the group
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


class _Logger:
    """log.csv (one row per log point; rows past a resumed step are dropped) and TensorBoard."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_sec", "elapsed_s")

    def __init__(self, out: Path, start_step: int, tensorboard) -> None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.csv"
        rows = []
        if start_step > 0 and path.is_file():  # keep the history up to the checkpoint
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()
        self.tb = None
        if tensorboard in ("auto", True):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                if tensorboard is True:
                    print("note: tensorboard is not installed; logging to log.csv only", file=sys.stderr)

    def row(self, step: int, loss: float, lr: float, grad_norm: float, ips: float, elapsed: float) -> None:
        self.writer.writerow({"step": step, "loss": f"{loss:.9g}", "lr": f"{lr:.6g}",
                              "grad_norm": f"{grad_norm:.6g}", "images_per_sec": f"{ips:.1f}",
                              "elapsed_s": f"{elapsed:.2f}"})
        self.file.flush()
        if self.tb is not None:
            self.tb.add_scalar("loss", loss, step)
            self.tb.add_scalar("lr", lr, step)
            self.tb.add_scalar("images_per_sec", ips, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def train(
    cfg: Union[TrainConfig, str, Path],
    out: Union[str, Path],
    *,
    resume: bool = False,
    loss_fn: Optional[LossFn] = None,
    progress: bool = True,
) -> dict:
    """Train a config (object or file) into ``out``; the one-call form of :class:`Trainer`."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_config(cfg)
    with Trainer(cfg, out, loss_fn=loss_fn, resume=resume, progress=progress) as trainer:
        return trainer.train()


def _mismatch(file: Path, what: str) -> ValueError:
    return ValueError(f"cannot resume from {str(file)!r}: {what}. The file belongs to another model than the "
                      "checkpoint's config.yaml describes (copied from another run, or the config edited); "
                      "restore it, or resume from another checkpoint")


def _load_matching(model: nn.Module, weights: dict, file: Path) -> None:
    """``model.load_state_dict(weights)``, a mismatch raised as ValueError naming ``file``."""
    difference = load_matching(model, weights)
    if difference is not None:
        raise _mismatch(file, f"its weights do not fit the network ({difference})")


def _check_optimizer_settings(saved: dict, cfg: TrainConfig, ck: Path) -> None:
    """The checkpoint's config.yaml gives the AdamW settings its optimizer state was trained
    with: an edit of its optim.lr (or betas, eps, weight_decay) would be recorded by the resumed
    run but not applied (the loaded state brings its own), so it is refused. (Checkpoints with
    checksums catch such an edit anyway; this holds for older ones too.)"""
    o = cfg.optim
    group = (saved.get("optimizer", {}).get("param_groups") or [{}])[0]
    base = (saved.get("scheduler", {}).get("base_lrs") or [group.get("initial_lr", o.lr)])[0]
    found = {"optim.lr": (float(base), o.lr), "optim.eps": (group.get("eps", o.eps), o.eps),
             "optim.weight_decay": (group.get("weight_decay", o.weight_decay), o.weight_decay),
             "optim.betas": (list(group.get("betas", o.betas)), list(o.betas))}
    edited = [f"{k} = {b!r} in the config, {float(a) if not isinstance(a, list) else [float(x) for x in a]!r} "
              "in the optimizer state" for k, (a, b) in found.items()
              if (list(map(float, a)) != list(map(float, b)) if isinstance(a, list) else float(a) != float(b))]
    if edited:
        raise ValueError(
            f"cannot resume {str(ck)!r}: its config.yaml was edited after the checkpoint was written ({'; '.join(edited)}); "
            "a resumed run trains with the optimizer settings it was trained with, so the edit would be recorded "
            "but not applied. Restore the value in config.yaml, or start a new run with the new settings")


def _check_optimizer_state(saved: dict, optimizer: torch.optim.Optimizer, file: Path) -> None:
    """Every per-parameter state tensor (AdamW's moments) of ``saved`` has its parameter's shape:
    torch's load_state_dict checks only the number of parameters, so a mismatch surfaced as a
    shape error inside the first optimizer step."""
    params = [q for g in optimizer.param_groups for q in g["params"]]
    ids = [i for g in saved.get("param_groups", []) for i in g.get("params", [])]
    if len(ids) != len(params):
        raise _mismatch(file, f"it holds state for {len(ids)} parameters, the model has {len(params)}")
    for index, param in zip(ids, params):
        for name, value in saved.get("state", {}).get(index, {}).items():
            if isinstance(value, Tensor) and value.ndim > 0 and value.shape != param.shape:
                raise _mismatch(file, f"its {name} of parameter {index} has shape {list(value.shape)}, "
                                      f"the parameter {list(param.shape)}")
