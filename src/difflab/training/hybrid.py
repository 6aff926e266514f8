"""Improved DDPM's losses for a network that learns its variance (Nichol & Dhariwal 2021, sec. 3).

The network outputs [prediction, v] (``learn_sigma``); v sets the variance of p(x_{t-1} | x_t),
log Sigma = (v + 1) / 2 log beta_t + (1 - v) / 2 log beta~_t (eq. 15). L_simple cannot train v, so
the paper adds the variational bound:

    L_hybrid = L_simple + lambda L_vlb,     lambda = 0.001                                 (eq. 16)
    L_vlb    = L_0 + L_1 + ... + L_{T-1}  =  T E_t[L_t]     (t uniform; L_t in bits per dimension)

with the mean's gradient stopped inside L_vlb, so L_vlb trains only the variance and L_simple
stays the main source of the mean. ``loss: vlb`` trains both on L_vlb alone, whose terms differ
in size by orders of magnitude across t; it draws t with probability p_t ~ sqrt(E[L_t^2]) from a
history of the last 10 values of each term and weights each by 1 / (T p_t), an unbiased estimate
of the sum with a far smaller variance (eq. 17, the "loss-aware sampler" of the paper's code).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..processes import GaussianDiffusion, Process, call_model_with_variance
from .config import TIMESTEP_SAMPLERS
from .loss import TrainBatch, register_loss

__all__ = ["HybridLoss", "LossAwareSampler"]


class LossAwareSampler:
    """p_t ~ sqrt(mean of the last ``history`` values of L_t^2), mixed with the uniform
    distribution by ``uniform_prob``; uniform until every t has a full history (eq. 17)."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        self.T, self.history, self.uniform_prob = int(T), int(history), float(uniform_prob)
        self.values = torch.zeros(self.T, self.history, dtype=torch.float64)
        self.counts = torch.zeros(self.T, dtype=torch.long)

    def probabilities(self) -> Tensor:
        """p_t, float64 [T]."""
        if int(self.counts.min()) < self.history:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        p = self.values.pow(2).mean(1).sqrt()
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Append each drawn term L_t (per sample) to the history of its t, the oldest dropped."""
        for ti, li in zip(t.tolist(), losses.detach().double().tolist()):
            if self.counts[ti] == self.history:
                self.values[ti] = torch.roll(self.values[ti], -1)
                self.values[ti, -1] = li
            else:
                self.values[ti, self.counts[ti]] = li
                self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {"values": self.values.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        values = torch.tensor(state["values"], dtype=torch.float64)
        counts = torch.tensor(state["counts"], dtype=torch.long)
        if values.shape != self.values.shape or counts.shape != self.counts.shape:
            raise ValueError(f"the loss-aware sampler's saved history has shape {tuple(values.shape)}, this run's "
                             f"{tuple(self.values.shape)} (T x history): the run's diffusion.T or vlb.history changed")
        self.values, self.counts = values, counts


class HybridLoss:
    """``kind="hybrid"`` (L_simple + lambda L_vlb, the mean's gradient stopped in L_vlb) or
    ``kind="vlb"`` (L_vlb alone), per sample:

        hybrid:  ||out - target||^2 / D  +  lambda T L_t(sg[mean], v) / (D ln 2)
        vlb:                                        T L_t(mean, v)     / (D ln 2)   (x 1 / (T p_t))

    D the values per sample; L_t is :meth:`GaussianDiffusion.vlb_term` (nats; its decoder over
    ``bins`` levels of [-1, 1]). With ``timestep_sampler="loss_aware"`` the trainer draws t through
    :meth:`training_times` and each sample is weighted by 1 / (T p_t); the history records the
    terms L_t themselves (the paper's code records the whole loss, the same for vlb)."""

    def __init__(self, proc: Process, kind: str = "hybrid", *, vlb_weight: float = 0.001,
                 timestep_sampler: str = "uniform", history: int = 10, uniform_prob: float = 0.001,
                 bins: int = 256) -> None:
        if not isinstance(proc, GaussianDiffusion):
            raise ValueError(f"the hybrid and vlb losses train the variance of the discrete DDPM chain "
                             f"(diffusion.process: ddpm), got {type(proc).__name__}")
        if kind not in ("hybrid", "vlb"):
            raise ValueError(f"kind must be 'hybrid' (L_simple + lambda L_vlb) or 'vlb' (L_vlb alone), got {kind!r}")
        if timestep_sampler not in TIMESTEP_SAMPLERS:
            raise ValueError(f"timestep_sampler must be one of {', '.join(TIMESTEP_SAMPLERS)}, got {timestep_sampler!r}")
        self.proc, self.kind, self.vlb_weight, self.bins = proc, kind, float(vlb_weight), int(bins)
        self.sampler = LossAwareSampler(proc.T, history, uniform_prob) if timestep_sampler == "loss_aware" else None
        self._p: Optional[Tensor] = None  # the probabilities of this step's draw

    def __repr__(self) -> str:
        weight = f", vlb_weight={self.vlb_weight:g}" if self.kind == "hybrid" else ""
        sampler = "uniform" if self.sampler is None else "loss_aware"
        return f"HybridLoss({self.proc!r}, {self.kind!r}{weight}, timestep_sampler={sampler!r}, bins={self.bins})"

    def training_times(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """The step's timesteps: uniform (the process's own draw), or from the loss-aware p_t
        (drawn where the generator lives: the trainer's is on the training device)."""
        if self.sampler is None:
            return self.proc.training_times(n, generator=generator, device=device)
        self._p = self.sampler.probabilities()
        where = generator.device if generator is not None else device
        p = self._p.to(device=where, dtype=torch.float32)
        return torch.multinomial(p, n, replacement=True, generator=generator).to(device)

    def per_sample(self, model: nn.Module, batch: TrainBatch) -> tuple[Tensor, Tensor]:
        """(the loss per sample, L_t per sample in bits per dimension)."""
        proc, x0, t, noise = self.proc, batch.x0, batch.t, batch.noise
        x_t = proc.q_sample(x0, t, noise)
        out, v = call_model_with_variance(model, x_t, proc.model_time(t), batch.cond)
        if v is None:
            raise ValueError("the hybrid and vlb losses train a network that learns its variance: set "
                             "model.kwargs.learn_sigma: true")
        out, v = out.float(), v.float()
        hybrid = self.kind == "hybrid"
        x0_hat = proc.predict_x0(x_t.float(), t, out.detach() if hybrid else out)  # sg[mean] in L_hybrid
        D = x0[0].numel()
        log_var = proc.learned_log_variance(v, t)
        vb = proc.vlb_term(x0.float(), x_t.float(), t, x0_hat, log_var, self.bins) / (D * math.log(2))
        vb = vb.float()
        if hybrid:
            mse = (out - proc.target(x0, noise, t).float()).pow(2).flatten(1).mean(1)
            loss = mse + self.vlb_weight * proc.T * vb
        else:
            loss = proc.T * vb
        return loss, vb

    def __call__(self, model: nn.Module, batch: TrainBatch) -> Tensor:
        loss, vb = self.per_sample(model, batch)
        if self.sampler is None:
            return loss.mean()
        p = (self._p if self._p is not None else self.sampler.probabilities()).to(loss.device)
        weights = (1.0 / (self.proc.T * p[batch.t])).float()
        if not model.training:  # (a check or an evaluation: the history records training steps only)
            return (loss * weights).mean()
        t, vb = batch.t, vb.detach()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process keeps the same history (so all draw the same t): gather the terms
            world = torch.distributed.get_world_size()
            ts, vbs = [torch.empty_like(t) for _ in range(world)], [torch.empty_like(vb) for _ in range(world)]
            torch.distributed.all_gather(ts, t)
            torch.distributed.all_gather(vbs, vb)
            t, vb = torch.cat(ts), torch.cat(vbs)
        self.sampler.update(t.cpu(), vb.cpu())
        return (loss * weights).mean()

    def checkpoint_state(self) -> dict:
        """What a checkpoint keeps of the loss (state.json's ``loss_state``): the loss-aware sampler's history."""
        return {} if self.sampler is None else {"loss_aware": self.sampler.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        if self.sampler is not None and "loss_aware" in state:
            self.sampler.load_state_dict(state["loss_aware"])


def _factory(kind: str):
    def build(proc: Process, cfg) -> HybridLoss:
        v = cfg.vlb
        return HybridLoss(proc, kind, vlb_weight=v.weight, timestep_sampler=v.sampler_for(kind), history=v.history,
                          uniform_prob=v.uniform_prob, bins=v.bins)
    return build


register_loss("hybrid", _factory("hybrid"))
register_loss("vlb", _factory("vlb"))
