"""Evaluation: distances between sample sets, metrics and pictures."""

from . import plots
from .distances import mmd, sliced_wasserstein
from .grids import save_image_grid, to_image_grid

__all__ = ["sliced_wasserstein", "mmd", "to_image_grid", "save_image_grid"]
