"""Datasets, all scaled for diffusion (2D toys, digits, MNIST, image folders), and image grids out."""

from . import clips, digits, grids, images, mnist, toy2d
from .clips import save_clips_gif, save_frame_grid
from .grids import save_image_grid, to_image_grid
from .moving import MovingDigits, moving_digits
from .registry import load
from . import captioned  # captioned digits for text conditioning: captioned_digits, parse_caption

__all__ = ["toy2d", "mnist", "digits", "images", "grids", "load", "to_image_grid", "save_image_grid",
           "moving_digits", "MovingDigits", "captioned", "clips", "save_clips_gif", "save_frame_grid"]
