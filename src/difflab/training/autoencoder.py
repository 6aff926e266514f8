"""Training the KL autoencoder (:class:`~difflab.models.AutoencoderKL`) with the ordinary trainer:
``loss: autoencoder`` and the ``autoencoder:`` section of the config (training/autoencoder_config.py).

    difflab train-autoencoder --config configs/mnist_vae.yaml --out runs/mnist_vae

Per step, on the trainer's batch x (Rombach et al. 2022, App. G: SD's first stage, its LPIPS
replaced by the features of a difflab classifier):

    q(z | x) = encode(x),  z = mean + std eps,  x_hat = decode(z)
    loss = rec(x, x_hat) + kl_weight KL(q(z | x) || N(0, I)) / D + perceptual_weight ||phi(x) - phi(x_hat)||^2 / d
           [+ lambda (-mean D(x_hat)) + the hinge loss of the patch discriminator D, from adversarial_start on]

(AutoencoderConfig gives each term). eps is drawn from torch's generator, whose state every
checkpoint holds (rng.pt), so a resumed run draws what the uninterrupted one drew: the run,
its checkpoints (atomic, with checksums), its EMA, log and resume are the trainer's own.

After the last step, the latent scale factor s = 1 / std(z) is measured over the training
images (z sampled from q(z | x) with a generator seeded by the run's seed; the std of all
latent numbers, as SD's 0.18215 was measured) for the model and for its EMA, stored in each
network's ``scaling_factor`` buffer and the final checkpoint written again with it: ``dl.load``
gives networks whose ``encode_latents`` are scaled to unit variance.

The perceptual network phi (a difflab classifier: ``difflab train-classifier``) lives in the
evaluation layer, above training: the training layer takes it as a module
(:func:`train_autoencoder`'s ``features``, which ``difflab train-autoencoder`` loads from
``autoencoder.perceptual_classifier``), frozen.

The patch discriminator is a submodule of the autoencoder (``model.kwargs.discriminator_channels``)
so that the trainer's one AdamW, its checkpoints and its exact resume carry it; each network's
term reaches only its own weights (AutoencoderConfig), so one optimizer takes the steps two would,
with SD's shared learning rate and betas (and one gradient-norm clip over both). It runs outside the
network's forward, which DDP does not see: torchrun runs with a discriminator are refused.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..models.autoencoder import AutoencoderKL
from ..processes import Process
from .autoencoder_config import AutoencoderConfig
from .config import DiffusionConfig, TrainConfig, load_config
from .generate import save_grid
from .loss import TrainBatch, register_loss
from .trainer import Trainer

__all__ = ["AutoencoderLoss", "AutoencoderTrainer", "train_autoencoder", "measure_scale_factor", "unwrap"]

# The AutoencoderTrainer being built, and its perceptual network: the trainer builds its loss
# from the config (build_loss), and the loss factory cannot load the classifier itself; outside
# an AutoencoderTrainer (difflab train) the factory refuses, since the plain trainer would end the
# run with diffusion samples of an autoencoder and without its scale factor.
_BUILDING: list[dict] = []


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class AutoencoderLoss:
    """The autoencoder's loss of a batch (module docstring); ``features``: phi for the perceptual
    term (frozen here), needed when ``settings.perceptual_weight`` > 0. ``terms(model, batch)``
    gives each term, ``__call__`` their weighted sum."""

    def __init__(self, settings: AutoencoderConfig, features: Optional[nn.Module] = None) -> None:
        """``features``: phi itself, or a classifier whose ``features`` method is phi (difflab's CNN)."""
        settings.validate()
        if settings.perceptual_weight > 0 and features is None:
            raise ValueError(
                f"autoencoder.perceptual_weight = {settings.perceptual_weight} needs the classifier "
                f"{settings.perceptual_classifier!r} as the feature network, which the training layer does not "
                "load itself: train with `difflab train-autoencoder`, or call "
                "difflab.training.autoencoder.train_autoencoder(cfg, out, features=classifier)")
        self.settings = settings
        self.features = features.eval().requires_grad_(False) if features is not None else None
        self._phi = getattr(self.features, "features", self.features)

    def terms(self, model: nn.Module, batch: TrainBatch) -> dict[str, Tensor]:
        """Each term: ``reconstruction``, ``kl`` (per pixel), ``perceptual`` (with phi) and, from
        ``adversarial_start`` on, ``adversarial`` (-mean D(x_hat), D's weights held fixed),
        ``discriminator`` (D's hinge loss, x_hat held fixed) and ``adversarial_lambda`` (a number)."""
        net = unwrap(model)
        if not isinstance(net, AutoencoderKL):
            raise ValueError(f"loss 'autoencoder' trains an AutoencoderKL (model.name autoencoder_kl, "
                             f"autoencoder_kl_mnist, ...), got {type(net).__name__}")
        s = self.settings
        if s.adversarial_weight > 0 and net.discriminator is None:
            raise ValueError(f"autoencoder.adversarial_weight = {s.adversarial_weight} needs the network's patch "
                             "discriminator: set model.kwargs.discriminator_channels (e.g. 64; "
                             "discriminator_layers: 2 for 28x28 digits), or use weight 0")
        x = batch.x0
        x_hat, posterior = model(x)  # z ~ q(z | x) by torch's generator (checkpointed)
        diff = x_hat - x
        rec = diff.abs().mean() if s.reconstruction == "l1" else diff.square().mean()
        out = {"reconstruction": rec, "kl": posterior.kl().mean() / x[0].numel()}
        if self.features is not None and s.perceptual_weight > 0:
            out["perceptual"] = (self._phi(x) - self._phi(x_hat)).square().mean()
        if s.adversarial_weight > 0 and batch.step >= s.adversarial_start:
            disc = net.discriminator
            fixed = {k: v.detach() for k, v in disc.named_parameters()}
            adversarial = -functional_call(disc, fixed, (x_hat,)).mean()
            out["adversarial"] = adversarial
            out["discriminator"] = 0.5 * (F.relu(1 - disc(x)).mean() + F.relu(1 + disc(x_hat.detach())).mean())
            nll = rec + s.perceptual_weight * out["perceptual"] if "perceptual" in out else rec
            out["adversarial_lambda"] = s.adversarial_weight * self._adaptive(nll, adversarial, net)
        return out

    def _adaptive(self, nll: Tensor, adversarial: Tensor, net: AutoencoderKL) -> Tensor:
        """SD's ||grad_L nll|| / (||grad_L adv|| + 1e-4), clamped to [0, 1e4], at the decoder's last
        convolution's weight L; 1 without ``adaptive_weight`` or without gradients (the trainer's
        check of the model runs under no_grad)."""
        if not self.settings.adaptive_weight or not torch.is_grad_enabled() or not adversarial.requires_grad:
            return torch.ones((), device=nll.device)
        last = net.decoder_out.weight
        g_nll = torch.autograd.grad(nll, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adversarial, last, retain_graph=True)[0]
        return (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        t = self.terms(model, batch)
        loss = t["reconstruction"] + self.settings.kl_weight * t["kl"]
        if "perceptual" in t:
            loss = loss + self.settings.perceptual_weight * t["perceptual"]
        if "adversarial" in t:
            loss = loss + t["adversarial_lambda"] * t["adversarial"] + t["discriminator"]
        return loss

    def __repr__(self) -> str:
        return f"AutoencoderLoss({self.settings!r})"


def _autoencoder_loss(proc: Process, cfg: TrainConfig) -> AutoencoderLoss:
    if cfg.diffusion != DiffusionConfig():
        raise ValueError("config field 'diffusion': loss 'autoencoder' trains no diffusion model, and the section "
                         "would be recorded but unused (process 'edm' would even wrap the network); leave it out")
    if cfg.data.flatten:
        raise ValueError("config field 'data.flatten': the autoencoder takes images [B, C, H, W]; set it false")
    if not _BUILDING:
        raise ValueError("config field 'loss': 'autoencoder' is trained by `difflab train-autoencoder` "
                         "(difflab.training.train_autoencoder), which measures the latent scale factor at the end "
                         "and writes reconstruction grids; difflab train trains diffusion models")
    return AutoencoderLoss(cfg.autoencoder, _BUILDING[-1]["features"])


register_loss("autoencoder", _autoencoder_loss)


@torch.no_grad()
def measure_scale_factor(model: AutoencoderKL, images: Tensor, *, batch_size: int = 500, seed: int = 0) -> float:
    """s = 1 / std(z) over ``images`` [N, C, H, W], z ~ q(z | x) drawn with a generator seeded by
    ``seed`` (the std of all N c h w latent numbers, unbiased, as SD's ``1 / z.flatten().std()``)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or len(images) < 1:
        raise ValueError(f"images must be a tensor [N, C, H, W] with N >= 1, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    total, total_sq, count = 0.0, 0.0, 0
    try:
        for i in range(0, len(images), batch_size):
            z = model.encode(images[i:i + batch_size].to(device)).sample(gen).double()
            total += float(z.sum())
            total_sq += float(z.square().sum())
            count += z.numel()
    finally:
        model.train(was)
    var = (total_sq - total * total / count) / max(count - 1, 1)
    if not (math.isfinite(var) and var > 0):  # (NaN fails both)
        raise ValueError(f"the latents of the training images have variance {var}, not finite and > 0: the "
                         "autoencoder's weights are damaged (NaN or inf) or degenerate")
    return float(var ** -0.5)


class AutoencoderTrainer(Trainer):
    """The trainer with the autoencoder's end of run: the latent scale factor measured and saved
    (module docstring), and grids of reconstructions instead of samples. ``features``: the
    perceptual network (a difflab classifier), when ``autoencoder.perceptual_weight`` > 0."""

    def __init__(self, cfg: TrainConfig, out: Union[str, Path], *, features: Optional[nn.Module] = None,
                 **kwargs) -> None:
        if cfg.loss != "autoencoder":
            raise ValueError(f"config field 'loss': {cfg.loss!r}; an autoencoder trains with loss: autoencoder "
                             "(diffusion models train with difflab train)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and cfg.model.kwargs.get("discriminator_channels"):
            # DDP averages the gradients of what the network's forward used; D runs outside it (and
            # gets no gradient before adversarial_start), which DDP's reducer would wait for
            raise ValueError("model.kwargs.discriminator_channels: the adversarial loss trains in one process; "
                             "this is a torchrun run of several. Train without the discriminator here, or in one "
                             "process")
        _BUILDING.append({"features": features})
        try:
            super().__init__(cfg, out, **kwargs)
        finally:
            _BUILDING.pop()

    def train(self) -> dict:
        result = super().train()
        model = unwrap(self.model)
        networks = [model] if self.ema.is_model else [model, self.ema.model]
        scales = [measure_scale_factor(net, self.x.float(), seed=self.cfg.seed) for net in networks]
        for net, s in zip(networks, scales):
            net.scaling_factor.fill_(s)
        result["checkpoint"] = str(self.save())  # the same step again, with the scale (atomic)
        result["scaling_factor"] = scales[-1]  # the EMA's, which dl.load's samplers use
        self._say(f"latent scale factor 1 / std(z) = {scales[-1]:.6g} (over {len(self.x)} training images)")
        return result

    def sample_grid(self, path: Union[str, Path]) -> Path:
        """The first ``sample.n`` (at most 32) training images (top rows) over their reconstructions
        by the EMA weights (the posterior's mean decoded)."""
        n = min(self.cfg.sample.n, 32, len(self.x))
        x = self.x[:n].float()
        net = self.ema.model
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                x_hat = net.decode(net.encode(x).mode()).clamp(-1, 1)
        finally:
            net.train(was)
        if not self.is_main:
            return Path(path)
        cols = min(n, 8)
        rows = [t for i in range(0, n, cols) for t in (x[i:i + cols], x_hat[i:i + cols])]
        return save_grid(torch.cat(rows), path, cols)


def train_autoencoder(cfg: Union[TrainConfig, str, Path], out: Union[str, Path], *, resume: bool = False,
                      features: Optional[nn.Module] = None, progress: bool = True) -> dict:
    """Train an autoencoder config (``loss: autoencoder``) into the run folder ``out`` (a resume
    with ``resume=True``); ``features``: the perceptual network (the classifier that
    ``autoencoder.perceptual_classifier`` names), when its weight is > 0. Returns the trainer's
    summary with ``scaling_factor``."""
    if not isinstance(cfg, TrainConfig):
        cfg = load_config(cfg)
    with AutoencoderTrainer(cfg, out, features=features, resume=resume, progress=progress) as trainer:
        return trainer.train()
