"""Evaluation: distances between sample sets, metrics and pictures."""

from . import plots
from .coverage import mode_coverage
from .distances import mmd, sliced_wasserstein
from . import fid  # the module: fid.fid(real, fake, features) for images
from .fid import extract_features, frechet_distance, inception_features, metric_name
from .grids import save_image_grid, to_image_grid
from .precision_recall import precision_recall

__all__ = ["sliced_wasserstein", "mmd", "to_image_grid", "save_image_grid"]
__all__ += ["frechet_distance", "extract_features", "inception_features", "metric_name",
            "precision_recall", "mode_coverage"]
