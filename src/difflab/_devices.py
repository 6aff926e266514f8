"""Alias of :mod:`difflab.devices` for modules being rewritten (samplers/fast.py,
cli/experiments.py, benchmarks/throughput.py); remove after they import difflab.devices."""

from .devices import graph_stream, graphs_supported, resolve_device  # noqa: F401

__all__ = ["resolve_device", "graph_stream", "graphs_supported"]
