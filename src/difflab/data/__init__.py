"""Datasets, all scaled for diffusion: 2D toys here; images in their own modules."""

from . import toy2d

__all__ = ["toy2d"]
