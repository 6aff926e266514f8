"""A consistency model's boundary condition (Song et al. 2023, sec. 3 and app. C):

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) D(x, sigma),          f(x, sigma_min) = x

    c_skip = sigma_b^2 / ((sigma - sigma_min)^2 + sigma_b^2),     c_out = 1 - c_skip

in the VE form x = x0 + sigma eps of any process, where D is the wrapped network's own denoised
estimate (its output read as x0 by the process's prediction type; an EDM network with its
preconditioning). Song et al.'s c_out = sigma_b (sigma - sigma_min) / sqrt(sigma_b^2 + sigma^2)
scales a raw network output of unit variance; here the inner output is already an estimate of x0
(a teacher's weights, any prediction type), so c_out = 1 - c_skip keeps f = D wherever c_skip has
vanished. Both give c_skip(sigma_min) = 1, c_out(sigma_min) = 0: f(x, sigma_min) = x exactly, for
any weights. The boundary's width sigma_b: Song et al. take sigma_data = 0.5 (a network trained
from scratch learns whatever mix the coefficients ask for); a student that starts as its teacher's
denoiser needs f ~ D above the lowest levels, so distillation takes sigma_b = sigma_min (at 0.2 on
the DDPM chain sigma_b = 0.5 would make f = 0.86 x + 0.14 D, and the network must learn a 7-fold
amplified other function; latent consistency models sharpen the boundary alike, by a timestep scale of 10).

``ConsistencyModel(net, proc, net_prediction=...)`` keeps the model convention: called with the
process's state x_t = a(sigma) x and time input, it returns ``proc``'s prediction type, computed so
that the process reads f as its x0 estimate -- so every sampler, editing function and ``dl.load``
takes it. A student's process predicts x0 (f itself, with no conversion: read back from eps at
the DDPM chain's top level, 1 / a = 2e4, float32 would lose 1e-3 of f), while its network keeps
the prediction type it was trained with (``net_prediction``, e.g. a teacher's eps).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..processes import PREDICTION_TYPES, Process, convert_prediction
from .embeddings import batch_timesteps

__all__ = ["ConsistencyModel", "consistency_coefficients"]


def consistency_coefficients(sigma: Tensor, sigma_min: float, boundary: float) -> tuple[Tensor, Tensor]:
    """c_skip and c_out at noise levels sigma: c_skip = sigma_b^2 / ((sigma - sigma_min)^2 + sigma_b^2),
    c_out = 1 - c_skip (so c_skip(sigma_min) = 1 and c_out(sigma_min) = 0); sigma_b = ``boundary``."""
    shifted = sigma - sigma_min
    width2 = torch.full_like(shifted, boundary**2)  # (a tensor: a number over a tensor is a product by its reciprocal)
    c_skip = width2 / (shifted * shifted + width2)
    return c_skip, 1.0 - c_skip


class ConsistencyModel(nn.Module):
    """f(x, sigma) = c_skip x + c_out D_net(x, sigma), returned as ``proc``'s prediction of the state x_t.

    ``net`` follows the model convention under ``proc`` (the process the run trains under);
    ``boundary`` is the width sigma_b of the boundary region (Song et al.'s sigma_data = 0.5 for
    training from scratch, sigma_min for a student of a teacher); sigma_min is the process's;
    ``net_prediction`` what ``net`` outputs (default: ``proc.prediction``). ``guidance`` (a number or
    [B] tensor) is passed to a network built with a guidance input (``guidance_embed=True``).
    """

    def __init__(self, net: nn.Module, proc: Process, boundary: float = 0.5,
                 net_prediction: Optional[str] = None) -> None:
        super().__init__()
        if not isinstance(proc, Process):
            raise TypeError(f"proc must be a process of dl.processes, got {type(proc).__name__}")
        if not (isinstance(boundary, (int, float)) and math.isfinite(boundary) and boundary > 0):
            raise ValueError(f"boundary (the width of the region near sigma_min where f moves from x to the network's "
                             f"estimate; 0.5 to train from scratch, sigma_min for a student) must be a finite number "
                             f"> 0, got {boundary!r}")
        if net_prediction is not None and net_prediction not in PREDICTION_TYPES:
            raise ValueError(f"net_prediction must be one of {', '.join(PREDICTION_TYPES)} (what the wrapped network "
                             f"outputs), got {net_prediction!r}")
        self.net, self.proc = net, proc
        self.net_prediction = net_prediction or proc.prediction
        self.boundary, self.sigma_min = float(boundary), float(proc.sigma_min)

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.net, "num_classes", None)

    @property
    def guidance_input(self) -> bool:
        """Whether the network takes the guidance scale as an input (one call per step, no guidance pair)."""
        return bool(getattr(self.net, "guidance_input", False))

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None, guidance=None) -> Tensor:
        t = batch_timesteps(t, x_t)
        kwargs = {} if guidance is None else {"guidance": guidance}
        out = self.net(x_t, t, cond, **kwargs) if (cond is not None or kwargs) else self.net(x_t, t)
        dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        sigma = self.proc.sigma_of_timestep(t.detach()).to(x_t.device, dtype)
        a = torch.as_tensor(self.proc.scale(sigma), dtype=dtype, device=x_t.device)
        view = (-1,) + (1,) * (x_t.ndim - 1)
        sigma, a = sigma.view(view), a.view(view)
        x = x_t.to(dtype) / a
        denoised = convert_prediction(out.to(dtype), x_t.to(dtype), a, a * sigma, self.net_prediction, "x0")
        c_skip, c_out = consistency_coefficients(sigma, self.sigma_min, self.boundary)
        f = c_skip * x + c_out * denoised
        if self.proc.prediction == "x0":
            return f.to(x_t.dtype)
        return convert_prediction(f, x_t.to(dtype), a, a * sigma, "x0", self.proc.prediction).to(x_t.dtype)

    def extra_repr(self) -> str:
        return (f"boundary={self.boundary:g}, sigma_min={self.sigma_min:.4g}, net_prediction={self.net_prediction!r}, "
                f"prediction={self.proc.prediction!r}")
