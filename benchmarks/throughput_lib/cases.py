"""One iteration of each measured case: each library's training step and sampling loop.

A case is built from the run's Env and a row's options; ``step()`` is one timed iteration,
``images`` the images it processes, ``result()`` what the row records besides timings, ``out``
(sampling) the last batch, ``close()`` what it gives back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from difflab.training import Trainer, TrainConfig
from difflab.training.config import DataConfig, DiffusionConfig, EMAConfig, ModelConfig, OptimConfig, SampleConfig

from .env import Env
from .networks import T, diffusers_unet
from .speed import accelerated, release_model, sampling_call, sampling_speed, trainer_speed

# a sampling row's "weights" option: the network stored in float32 (default), or in bf16 -- what
# diffusers' users get from torch_dtype=torch.bfloat16 -- under the same bf16 autocast: half the
# weights' memory and no weight casts in each forward (difflab's sampler keeps its state float32)
WEIGHTS = {None: None, "bf16": torch.bfloat16}


class Case:
    """What ``measure`` reads of a case, and the defaults: ``images`` an iteration processes, the
    last ``loss`` (training) and ``out`` (sampling, checked against the library's first row), none
    until a step sets them. The base of each benchmark's cases (benchmarks/dit_throughput.py's too)."""

    images: int
    loss: Optional[Tensor] = None
    out: Optional[Tensor] = None

    def result(self) -> dict:
        return {"final_loss": float(self.loss)} if self.loss is not None else {}

    def close(self) -> None:
        pass


class TrainerCase(Case):
    """A difflab ``Trainer`` measured: one iteration is its ``train_step`` (the whole optimizer
    step ``difflab train`` runs); closing closes the trainer. Each benchmark's DifflabTrain builds
    the trainer of its network."""

    def __init__(self, trainer: Trainer, images: int) -> None:
        self.trainer, self.s, self.images = trainer, 0, images

    def step(self) -> None:
        self.loss, _ = self.trainer.train_step(self.s)
        self.s += 1

    def close(self) -> None:
        self.trainer.close()


class DifflabTrain(TrainerCase):
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
            **trainer_speed(opts),
        )
        super().__init__(Trainer(cfg, Path(env.tmp.name) / "run", data=(env.data, None), progress=False), env.batch)


class DiffusersTrain(Case):
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


class DifflabSample(Case):
    """``dl.sample(..., "ddim", steps)`` on one batch of the network made fast by the row's options."""

    def __init__(self, env: Env, opts: dict) -> None:
        self.env = env
        network = copy.deepcopy(env.template("difflab")).to(env.device, WEIGHTS[opts.get("weights")])
        self.model = accelerated(network, sampling_speed(opts))
        self.images = env.sample_batch

    def step(self) -> None:
        env = self.env
        self.out = sampling_call(self.model, env.proc, env.noise, env.sample_steps, env.device)

    def close(self) -> None:
        release_model(self.model)


class DiffusersSample(Case):
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


CASES = {("difflab", "train"): DifflabTrain, ("diffusers", "train"): DiffusersTrain,
         ("difflab", "sample"): DifflabSample, ("diffusers", "sample"): DiffusersSample}
