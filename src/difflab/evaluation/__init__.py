"""Evaluation: distances between sample sets, metrics and pictures."""

from . import plots
from .distances import mmd, sliced_wasserstein

__all__ = ["sliced_wasserstein", "mmd"]
