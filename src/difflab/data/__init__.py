"""Datasets, all scaled for diffusion: 2D toys here; images in their own modules."""

from . import toy2d
from . import digits, images, mnist
from .registry import load

__all__ = ["toy2d", "mnist", "digits", "images", "load", "to_image_grid", "save_image_grid"]


def __getattr__(name: str):
    # The sample-grid helpers live in difflab.evaluation.grids; imported on first use, so that
    # difflab.data never imports difflab.evaluation at import time (no import cycle).
    if name in ("to_image_grid", "save_image_grid"):
        from ..evaluation import grids

        return getattr(grids, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
