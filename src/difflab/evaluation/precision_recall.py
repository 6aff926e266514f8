"""Improved precision and recall of generative models (Kynkaanniemi et al. 2019).

Each set's manifold is the union of balls around its points, each ball's radius being the distance
to that point's k-th nearest neighbour in its own set (Sec. 3, eq. 1-2):

    f(phi, Phi) = 1 if ||phi - phi'|| <= ||phi' - NN_k(phi', Phi)|| for some phi' in Phi, else 0
    precision   = mean over generated phi_g of f(phi_g, Phi_real)     (samples that look real)
    recall      = mean over real phi_r      of f(phi_r, Phi_gen)      (real data the samples cover)

Computed in a feature space (a classifier's penultimate layer for images, the raw points in 2D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import is_int

__all__ = ["precision_recall", "knn_radii", "in_manifold", "as_features"]


def as_features(x, name: str) -> Tensor:
    """``x`` as N >= 2 feature vectors [N, d] (each item flattened), float64 on the CPU."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"{name} must be a batch of at least 2 feature vectors [N, d], got shape {tuple(x.shape)}")
    return x.detach().reshape(len(x), -1).to(torch.float64).cpu()


def knn_radii(x: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """Distance of each point to its k-th nearest neighbour in x, itself excluded: [N]."""
    if not is_int(k) or not 1 <= k < len(x):
        raise ValueError(f"k must be an integer in 1 .. {len(x) - 1} (the set has {len(x)} points), got {k!r}")
    k = int(k)
    radii = torch.empty(len(x), dtype=x.dtype)
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # the (k+1)-th smallest: the point itself is at distance 0
        radii[i : i + chunk] = d.kthvalue(k + 1, dim=1).values
    return radii


def in_manifold(queries: Tensor, support: Tensor, radii: Tensor, chunk: int = 2048) -> Tensor:
    """For each query, whether it lies within radii[j] of some support point j: bool [Nq]."""
    out = torch.empty(len(queries), dtype=torch.bool)
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], support)
        out[i : i + chunk] = (d <= radii[None, :]).any(dim=1)
    return out


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> dict[str, float]:
    """``{"precision": ..., "recall": ...}`` of ``fake`` against ``real`` (feature vectors [N, d]), k-NN radii."""
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features must have the same dimension, got {real.shape[1]} and {fake.shape[1]}")
    precision = in_manifold(fake, real, knn_radii(real, k)).double().mean().item()
    recall = in_manifold(real, fake, knn_radii(fake, k)).double().mean().item()
    return {"precision": precision, "recall": recall}
