"""Datasets, all scaled for diffusion (2D toys, digits, MNIST, image folders), and image grids out."""

from . import digits, grids, images, mnist, toy2d
from .grids import save_image_grid, to_image_grid
from .moving import MovingDigits, moving_digits
from .registry import load
from . import captioned  # captioned digits for text conditioning: captioned_digits, parse_caption

__all__ = ["toy2d", "mnist", "digits", "images", "grids", "load", "to_image_grid", "save_image_grid",
           "moving_digits", "MovingDigits", "captioned"]
