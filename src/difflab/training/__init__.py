"""Training: the loop, EMA, checkpoints."""

from .ema import EMA

__all__ = ["EMA"]
