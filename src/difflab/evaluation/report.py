"""From samples to numbers, tables and plots: the metrics of one sample set against a reference,
Markdown tables of sweeps, and the sweep plots (FID vs steps per sampler; FID and accuracy vs
guidance). Used by ``difflab eval`` and experiments/classic.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..files import atomic_write, atomic_write_text
from .coverage import mode_coverage
from .distances import mmd, sliced_wasserstein
from .plots import pyplot
from .fid import extract_features, frechet_distance, metric_name
from .precision_recall import precision_recall

__all__ = ["ImageReference", "image_metrics", "toy_metrics", "markdown_table", "plot_sweep", "write_json"]


class ImageReference:
    """The reference images' features, computed once: FID, precision and recall of any number of
    sample sets against it. ``features``: a feature network (``name``, ``num_features``);
    ``classifier``: optional, gives the accuracy of conditional samples."""

    def __init__(self, images: Tensor, features: nn.Module, classifier: Optional[nn.Module] = None,
                 batch_size: int = 500, k: int = 3) -> None:
        self.features, self.classifier, self.batch_size, self.k = features, classifier, batch_size, k
        self.num_images = len(images)
        self.feats = extract_features(features, images, batch_size)
        self.fid_name = metric_name(features)

    def __call__(self, samples: Tensor, labels: Optional[Tensor] = None) -> dict:
        return image_metrics(samples, self, labels)


@torch.no_grad()
def image_metrics(samples: Tensor, ref: ImageReference, labels: Optional[Tensor] = None) -> dict:
    """FID, precision, recall (k-NN, same features) of ``samples`` against ``ref``; with ``labels``
    (the requested classes) and a classifier, the accuracy: the fraction classified as requested."""
    if not isinstance(samples, Tensor) or samples.ndim != 4:
        raise ValueError(f"samples must be images [N, C, H, W], got {getattr(samples, 'shape', type(samples).__name__)}")
    samples = samples.clamp(-1, 1)
    feats = extract_features(ref.features, samples, ref.batch_size)
    if not torch.isfinite(feats).all():
        raise FloatingPointError("the samples' features contain NaN or inf: the samples diverged")
    out = {"metric": ref.fid_name, "fid": frechet_distance(ref.feats, feats), "n": len(samples)}
    out.update(precision_recall(ref.feats, feats, k=ref.k))
    if labels is not None and ref.classifier is not None:
        device = next(ref.classifier.parameters()).device
        pred = torch.cat([ref.classifier(samples[i : i + ref.batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, len(samples), ref.batch_size)])
        out["accuracy"] = float((pred == labels.cpu()).double().mean())
    return out


def toy_metrics(samples: Tensor, reference: Tensor, labels: Optional[Tensor] = None, k: int = 3) -> dict:
    """2D sample quality: sliced Wasserstein distance, MMD^2, precision/recall and (with the
    reference's mode labels) per-mode coverage."""
    samples = samples.reshape(len(samples), -1)
    if not torch.isfinite(samples).all():
        raise FloatingPointError("the samples contain NaN or inf: the samples diverged")
    out = {"sliced_wasserstein": sliced_wasserstein(samples, reference), "mmd2": mmd(samples, reference),
           "n": len(samples)}
    out.update(precision_recall(reference, samples, k=k))
    if labels is not None:
        cov = mode_coverage(samples, reference, labels, k=k)
        out.update(modes_covered=cov["covered"], num_modes=cov["num_modes"], on_manifold=cov["on_manifold"],
                   mode_share=cov["share"])
    return out


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Optional[Sequence[str]] = None) -> str:
    """A GitHub Markdown table of ``rows`` (dicts) with the given ``columns``."""
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows: Sequence[dict], x: str, ys: Sequence[str], path, group: Optional[str] = None,
               labels: Optional[dict] = None, logx: bool = False, title: str = "") -> Path:
    """One panel per metric in ``ys`` against ``x``, one line per value of ``group`` (e.g. the sampler)."""
    plt = pyplot()
    labels = labels or {}
    fig, axes = plt.subplots(1, len(ys), figsize=(4.6 * len(ys), 3.6), squeeze=False)
    groups = sorted({r.get(group) for r in rows}, key=str) if group else [None]
    for ax, y in zip(axes[0], ys):
        for gv in groups:
            pts = sorted((r[x], r[y]) for r in rows if y in r and (group is None or r.get(group) == gv))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=str(gv) if group else None)
        ax.set_xlabel(labels.get(x, x))
        ax.set_ylabel(labels.get(y, y))
        if logx:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return Path(path)


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file, then rename)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
