"""The processes by name, as configs and the command line name them."""

from __future__ import annotations

from .base import Process
from .discrete import GaussianDiffusion
from .edm import EDM
from .flow import FlowMatching
from .sde import VESDE, VPSDE

__all__ = ["PROCESSES", "build"]

# name -> class; "ddpm" is the discrete chain of a noise schedule (GaussianDiffusion(schedule, ...)).
PROCESSES: dict[str, type] = {"ddpm": GaussianDiffusion, "vp": VPSDE, "ve": VESDE, "edm": EDM, "flow": FlowMatching}


def build(name: str, **kwargs) -> Process:
    """``PROCESSES[name](**kwargs)``, with a clear error for an unknown name or argument."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {', '.join(PROCESSES)}")
    try:
        return PROCESSES[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"process {name!r} ({PROCESSES[name].__name__}) cannot take {kwargs!r}: {err}") from None
