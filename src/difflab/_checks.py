"""Alias of :mod:`difflab.validation` for modules being rewritten (samplers/denoiser.py,
editing/superres.py); remove after they import from difflab.validation."""

from .validation import is_int, is_real  # noqa: F401

__all__ = ["is_int", "is_real"]
