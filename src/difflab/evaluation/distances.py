"""Distances between two sample sets, so that the quality of low-dimensional samples is a number."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..validation import is_real, positive_int

__all__ = ["sliced_wasserstein", "mmd"]


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(x).detach().reshape(len(x), -1).double().cpu()
    y = torch.as_tensor(y).detach().reshape(len(y), -1).double().cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"the two sets must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("each set needs at least 2 points")
    return x, y


def _wasserstein_pp(px: Tensor, py: Tensor, p: float) -> Tensor:
    """W_p^p between the empirical distributions of the columns of sorted px [n, P] and py [m, P]
    (uniform weights): the integral over u in (0, 1) of |F^-1(u) - G^-1(u)|^p, the quantile
    functions being steps, F^-1(u) = px[ceil(u n) - 1]. Exact: on each interval between the
    levels i/n and j/m both are constant."""
    n, m = len(px), len(py)
    if n == m:
        return ((px - py).abs() ** p).mean(0)
    edges = torch.unique(torch.cat([torch.arange(n + 1, dtype=torch.float64) / n,
                                    torch.arange(m + 1, dtype=torch.float64) / m]))  # (i/n = j/m: one double)
    mid, width = (edges[1:] + edges[:-1]) / 2, edges[1:] - edges[:-1]
    ix, iy = (mid * n).floor().long().clamp(max=n - 1), (mid * m).floor().long().clamp(max=m - 1)
    return (width[:, None] * (px[ix] - py[iy]).abs() ** p).sum(0)


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 512, p: float = 2, generator: Optional[torch.Generator] = None
) -> float:
    """SW_p(x, y) = (E_theta W_p^p(<theta, x>, <theta, y>))^(1/p), theta uniform on the unit sphere.

    Each 1-D W_p is exact between the two empirical distributions of the projections (sets of
    any sizes: their step quantile functions compared on every interval between the levels
    i/n and j/m). ``generator`` fixes the directions.
    """
    if not is_real(p) or not 1 <= p < math.inf:
        raise ValueError(f"p must be a number >= 1 (W_p is a distance for p >= 1), got {p!r}")
    n_projections = positive_int("n_projections", n_projections)
    x, y = _pair(x, y)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    return float(_wasserstein_pp(px, py, p).mean() ** (1.0 / p))


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))  (Gretton et al. 2012, eq. 3).

    Zero in expectation when x and y come from the same distribution (it can then be
    slightly negative), positive otherwise.
    """
    bandwidths = tuple(bandwidths)
    if not bandwidths or not all(is_real(h) and 0 < h < math.inf for h in bandwidths):
        raise ValueError(f"bandwidths must be one or more numbers > 0, got {bandwidths!r}")
    x, y = _pair(x, y)

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())
