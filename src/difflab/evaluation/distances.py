"""Distances between two sample sets, so that the quality of low-dimensional samples is a number."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["sliced_wasserstein", "mmd"]


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(x).detach().reshape(len(x), -1).double().cpu()
    y = torch.as_tensor(y).detach().reshape(len(y), -1).double().cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the two sets must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("each set needs at least 2 points")
    return x, y


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 512, p: int = 2, generator: Optional[torch.Generator] = None
) -> float:
    """SW_p(x, y) = (E_theta W_p^p(<theta, x>, <theta, y>))^(1/p), theta uniform on the unit sphere.

    Each 1-D W_p compares quantiles of the projections (sorted values; sets of different
    sizes are compared at a common grid of quantile levels). ``generator`` fixes the directions.
    """
    x, y = _pair(x, y)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    if len(px) != len(py):
        levels = (torch.arange(max(len(px), len(py)), dtype=torch.float64) + 0.5) / max(len(px), len(py))
        px = torch.quantile(px, levels, dim=0)
        py = torch.quantile(py, levels, dim=0)
    return float(((px - py).abs() ** p).mean() ** (1.0 / p))


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))  (Gretton et al. 2012, eq. 3).

    Zero in expectation when x and y come from the same distribution (it can then be
    slightly negative), positive otherwise.
    """
    x, y = _pair(x, y)

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())
