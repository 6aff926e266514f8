"""Per-mode coverage of samples from a labelled toy distribution (mode collapse, mode dropping).

Each sample is given the label of its nearest reference point and counts as on the data manifold
if it lies within any reference point's k-NN radius (the manifold of precision_recall.py). A mode is
covered when it receives at least ``min_share`` of the share of samples it holds in the reference,
as in the mode counts of the GAN literature (Metz et al. 2017; Srivastava et al. 2017), with the
reference's own labels in place of hand-placed centres, so it works for any labelled toy set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .precision_recall import as_features, knn_radii

__all__ = ["mode_coverage", "within_class_spread"]


def mode_coverage(
    samples: Tensor, reference: Tensor, labels: Tensor, k: int = 3, min_share: float = 0.25
) -> dict:
    """Per-mode shares of ``samples`` against a labelled ``reference`` ([N, d] and [N] labels).

    Returns ``share`` (fraction of all samples assigned to each mode, on-manifold ones only),
    ``expected`` (the reference's fractions), ``covered`` (number of modes whose share is
    >= min_share x expected), ``num_modes`` and ``on_manifold`` (fraction of samples within the
    reference's k-NN balls: the "high-quality samples" rate).
    """
    x, ref = as_features(samples, "samples"), as_features(reference, "reference")
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers (the reference's mode of each point), got {labels.dtype}")
    labels = labels.long()
    if len(labels) and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    if len(labels) != len(ref):
        raise ValueError(f"labels must have one entry per reference point ({len(ref)}), got {len(labels)}")
    if x.shape[1] != ref.shape[1]:
        raise ValueError(f"samples and reference must have the same dimension, got {x.shape[1]} and {ref.shape[1]}")
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must lie in (0, 1], got {min_share}")
    radii = knn_radii(ref, k)
    num_modes = int(labels.max()) + 1
    counts = torch.zeros(num_modes, dtype=torch.float64)
    on = 0
    for i in range(0, len(x), 2048):
        d = torch.cdist(x[i : i + 2048], ref)
        nearest = d.argmin(dim=1)
        inside = (d <= radii[None, :]).any(dim=1)
        on += int(inside.sum())
        counts += torch.bincount(labels[nearest[inside]], minlength=num_modes).double()
    share = counts / len(x)
    expected = torch.bincount(labels, minlength=num_modes).double() / len(labels)
    covered = int(((share >= min_share * expected) & (expected > 0)).sum())
    return {
        "share": share.tolist(),
        "expected": expected.tolist(),
        "covered": covered,
        "num_modes": int((expected > 0).sum()),
        "on_manifold": on / len(x),
    }


def within_class_spread(x: Tensor, labels: Tensor) -> float:
    """How far samples of one class lie from each other: the mean over classes c of

        sqrt(E_{x in c} ||x - mean_c||^2)

    in the samples' own units (pixels for images), over the classes with at least two samples. A
    model that draws one prototype per class scores 0; judge it against the same number on real
    data (their ratio), where the spread of the real classes is the target."""
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a batch tensor [n, ...], got {getattr(x, 'shape', type(x).__name__)}")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != len(x) or labels.is_floating_point():
        raise ValueError(f"labels must be {len(x)} integer class labels, one per sample, got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    flat = x.detach().flatten(1).double()
    spreads = []
    for c in labels.unique():
        members = flat[labels == c]
        if len(members) >= 2:
            spreads.append(((members - members.mean(0)) ** 2).sum(1).mean().sqrt())
    if not spreads:
        raise ValueError("within_class_spread needs a class with at least two samples")
    return float(torch.stack(spreads).mean())
