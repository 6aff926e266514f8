"""Image data sets by name, for configs and the CLI: ``dl.data.load("mnist", root=..., split="t10k")``.

Every loader returns ``(images, labels)``: images float32 [N, C, H, W] in [-1, 1], labels
long [N] or None; except ``moving_digits``, whose samples are clips [N, T, C, H, W]
(:func:`load_moving_digits`), and ``captioned_digits``, whose labels are captions (N strings) or
the digits (:func:`load_captioned_digits`).
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Union

from torch import Tensor

from . import captioned, digits, images, mnist, moving

__all__ = ["load", "register", "names", "DATA_RANGE", "load_moving_digits", "load_captioned_digits"]

# Every data set here is images scaled to [-1, 1]: |x| <= DATA_RANGE.
DATA_RANGE = 1.0


def load_moving_digits(n: int = 10_000, **kwargs) -> tuple[Tensor, Optional[Tensor]]:
    """Moving digits as a data set (:func:`difflab.data.moving_digits`, the same arguments): clips
    float32 [n, frames, 1, canvas, canvas] in [-1, 1] and, with one digit a clip, its class, long
    [n]; with two digits the labels are None (a clip has no one class). The trajectories stay with
    ``moving_digits`` itself."""
    md = moving.moving_digits(n, **kwargs)
    return md.clips, (md.labels[:, 0] if md.labels.shape[1] == 1 else None)


CAPTIONED_LABELS = ("caption", "digit")


def load_captioned_digits(labels: str = "caption", **kwargs) -> tuple[Tensor, Union[list[str], Tensor]]:
    """Captioned digits as a data set (:func:`difflab.data.captioned.captioned_digits`, the same
    arguments): images float32 [N, 1, C, C] in [-1, 1] and, by ``labels``, their captions (N
    strings, for a text model) or their digits (long [N], for a class-conditional control)."""
    if labels not in CAPTIONED_LABELS:
        raise ValueError(f"captioned_digits: labels must be one of {', '.join(map(repr, CAPTIONED_LABELS))}, "
                         f"got {labels!r}")
    ds = captioned.captioned_digits(**kwargs)
    return ds.images, (list(ds.captions) if labels == "caption" else ds.digits)


_LOADERS: dict[str, Callable[..., tuple[Tensor, Optional[Tensor]]]] = {
    "mnist": mnist.load,
    "digits": digits.load,
    "folder": images.load_folder,
    "moving_digits": load_moving_digits,
    "captioned_digits": load_captioned_digits,
}


def register(name: str, loader: Callable[..., tuple[Tensor, Optional[Tensor]]]) -> None:
    """Make a data set loadable by name."""
    _LOADERS[name] = loader


def names() -> list[str]:
    return sorted(_LOADERS)


def load(name: str, **kwargs) -> tuple[Tensor, Optional[Tensor]]:
    """The data set ``name`` ("mnist", "digits", "folder", ...) with its loader's keyword arguments."""
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(names())}")
    loader = _LOADERS[name]
    params = inspect.signature(loader).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise TypeError(
            f"data set {name!r} takes no argument {', '.join(unknown)}; it takes "
            f"{', '.join(params) or 'no arguments'}"
        )
    return loader(**kwargs)
