"""The exact models: Gaussian mixtures whose optimal denoiser is known in closed form, with their
true samples, the evaluation and optimisation noise, and the metrics (FD, NLL gap)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

import difflab as dl
from difflab.evaluation import frechet_distance

T = 1000
NFES = (5, 10, 20, 50, 100, 1000)  # the table's columns


class Counted(nn.Module):
    """The closed-form model, counting its calls (the network evaluations of a sampler)."""

    def __init__(self, model: dl.models.GaussianMixtureDenoiser) -> None:
        super().__init__()
        self.model, self.num_classes, self.calls = model, model.num_classes, 0

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        self.calls += 1
        return self.model(x_t, t, cond)


class Problem:
    """A mixture, its true samples, the NLL reference, the evaluation noise and the optimisation noise."""

    def __init__(
        self, name: str, means: Tensor, std: float, n: int, n_ref: int = 200_000, seed: int = 1
    ) -> None:
        self.name, self.n = name, n
        self.proc = dl.GaussianDiffusion(dl.schedules.linear(T), "eps")
        self.model = dl.models.GaussianMixtureDenoiser(self.proc, means, std)
        self.net = Counted(self.model)
        self.dim = self.model.dim
        g = torch.Generator().manual_seed(seed)
        big = self.model.sample(n_ref, g)
        self.nll_true = float(
            torch.cat([-self.model.log_prob(c) for c in big.split(10_000)]).mean()
        )
        self.opt_noise = torch.randn(
            256, self.dim, generator=torch.Generator().manual_seed(seed + 2)
        )
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Fresh true samples, floor samples and evaluation noise (the model and NLL reference stay)."""
        self.seed = seed
        g = torch.Generator().manual_seed(1000 + seed)
        self.true = self.model.sample(self.n, g)
        self.floor_draws = [self.model.sample(self.n, g) for _ in range(5)]
        self.noise = torch.randn(
            self.n, self.dim, generator=torch.Generator().manual_seed(2000 + seed)
        )

    def floor(self) -> dict:
        """The metrics of true samples against the true samples: mean (and sd) over 5 fresh draws."""
        ms = [self.metrics(x) for x in self.floor_draws]
        out = {k: float(torch.tensor([m[k] for m in ms]).mean()) for k in ("fd", "nll_gap")}
        out.update(
            {f"{k}_sd": float(torch.tensor([m[k] for m in ms]).std()) for k in ("fd", "nll_gap")}
        )
        return out

    def metrics(self, x: Tensor) -> dict:
        if not torch.isfinite(x).all():
            return {"fd": math.inf, "nll_gap": math.inf}
        fd = frechet_distance(self.true, x)
        nll_gap = float(-self.model.log_prob(x).mean()) - self.nll_true
        return {"fd": fd, "nll_gap": nll_gap}


def problems(n: int, n_ref: int = 200_000) -> list[Problem]:
    means64 = 0.5 * torch.randn(
        10, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    ring = torch.stack([ang.cos(), ang.sin()], 1)
    return [Problem("64d", means64, 0.3, n, n_ref), Problem("2d", ring, 0.1, n, n_ref)]



def floor_row(p: Problem) -> dict:
    """The noise-floor row of problem ``p`` at its current seed: true samples against true samples."""
    return dict(problem=p.name, library="truth", method="floor (true vs true)", spacing=None, nfe=0,
                nfe_target=0, seconds=0.0, seed=p.seed, **p.floor())
