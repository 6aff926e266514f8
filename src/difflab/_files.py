"""Alias of :mod:`difflab.files` for benchmarks/sampler_quality.py, which is being rewritten;
remove after it imports difflab.files."""

from .files import atomic_write, atomic_write_bytes, atomic_write_text, fsync_path  # noqa: F401

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "fsync_path"]
