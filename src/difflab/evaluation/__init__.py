"""Evaluation: distances between sample sets, metrics (FID, precision/recall, coverage), the
probability-flow ODE likelihood and pictures."""

from . import fid, plots  # fid.fid(real, fake, features) for images; plots: figures and animations
from . import attributes  # captioned digits' position, stroke and size measured from pixels
from .counting import CountedModel
from .coverage import mode_coverage, within_class_spread
from .distances import mmd, sliced_wasserstein
from .fid import extract_features, frechet_distance, inception_features, metric_name
from .likelihood import bits_per_dim, log_likelihood
from .motion import centre_of_mass, fit_bouncing_path, motion_residual
from ..data.grids import save_image_grid, to_image_grid
from .precision_recall import precision_recall

__all__ = [
    "fid", "plots", "sliced_wasserstein", "mmd", "mode_coverage", "within_class_spread", "frechet_distance", "extract_features",
    "inception_features", "metric_name", "precision_recall", "to_image_grid", "save_image_grid",
    "CountedModel", "log_likelihood", "bits_per_dim", "centre_of_mass", "fit_bouncing_path", "motion_residual",
    "attributes",
]
