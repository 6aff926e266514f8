"""Pictures: sample scatters, the forward process, loss curves, animations of the reverse process.

Everything renders off-screen (matplotlib's Agg backend) and writes to a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write

__all__ = ["scatter_panels", "forward_process_2d", "loss_curve", "animate_2d", "pyplot"]


def pyplot():
    """matplotlib.pyplot, on the file-only Agg backend unless one was chosen (imported on first
    use: matplotlib is needed only to plot)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _panel(ax, pts: np.ndarray, title: str, lim: float, color: str = "C0") -> None:
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=color, linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def scatter_panels(panels: Mapping[str, Tensor], path, lim: float = 2.5, suptitle: str = "") -> Path:
    """One scatter per entry {title: points [N, 2]}, side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for i, (ax, (title, pts)) in enumerate(zip(axes[0], panels.items())):
        _panel(ax, _np(pts), title, lim, f"C{i}")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return Path(path)


def forward_process_2d(proc, x0: Tensor, path, ts: Optional[Sequence[float]] = None, lim: float = 3.0) -> Path:
    """q(x_t | x0) for 2D data at several times t of the process: the data dissolving into noise.

    ``ts`` are the process's own times (a DDPM chain's 0-based steps, default 0, 50, 100, 200,
    400, 999; a continuous process's t, default six equal steps over [t_min, t_max]). Each panel
    names t and the signal fraction a(t) of x_t = a(t) x0 + s(t) eps."""
    if ts is None:
        ts = (0, 50, 100, 200, 400, 999) if proc.discrete else torch.linspace(proc.t_min, proc.t_max, 6).tolist()
    ts = [t for t in ts if proc.t_min <= t <= proc.t_max] or [proc.t_max]
    g = torch.Generator().manual_seed(0)
    panels = {}
    for t in ts:
        dtype = torch.long if proc.discrete else torch.float32
        tt = torch.full((len(x0),), t, dtype=dtype)
        x_t = proc.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        a = float(proc.alpha_sigma(tt[:1])[0])
        label = f"t = {int(t) + 1}" if proc.discrete else f"t = {t:.3g}"
        panels[f"{label}, a = {a:.3f}"] = x_t
    return scatter_panels(panels, path, lim, "forward process q(x_t | x_0)")


def loss_curve(losses: Sequence[float], path, smooth: int = 50, title: str = "training loss") -> Path:
    """The loss per step and its running mean over ``smooth`` steps, log scale."""
    plt = pyplot()
    y = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(y) + 1), y, lw=0.5, alpha=0.35, label="per step")
    if len(y) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(np.arange(smooth, len(y) + 1), np.convolve(y, kernel, mode="valid"), lw=1.5,
                label=f"mean of {smooth}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return Path(path)


def animate_2d(frames: Sequence[Tensor], titles: Sequence[str], path, lim: float = 3.0,
               fps: int = 10, hold_last: int = 10) -> Path:
    """An animated GIF of 2D point clouds, one frame per entry (e.g. the reverse process)."""
    import imageio.v2 as imageio

    if not fps > 0:
        raise ValueError(f"fps must be > 0 frames per second, got {fps!r}")
    plt = pyplot()
    images = []
    fig, ax = plt.subplots(figsize=(3.6, 3.8))
    for pts, title in zip(frames, titles):
        ax.clear()
        _panel(ax, _np(pts), title, lim)
        fig.canvas.draw()
        images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    images += [images[-1]] * hold_last
    # duration: milliseconds a frame (imageio >= 2.28)
    atomic_write(path, lambda tmp: imageio.mimsave(tmp, images, duration=1000.0 / fps, loop=0))
    return Path(path)

