"""difflab: diffusion generative models on PyTorch.

    import difflab as dl
    proc = dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction="eps")
    x0 = dl.sample(model, proc, (16, 2), sampler="ddim", steps=50)

See API.md for the public names; the packages follow the data flow, ``LAYERS`` below.
"""

# The packages in the order data flows: a module imports only from its own package or from
# packages of earlier layers, never from a later one, not even inside a function
# (tests/test_architecture.py walks every import). Speed (accel) comes after the numerical packages:
# it transforms their models, and none of them knows it.
LAYERS = (
    ("validation", "files", "devices"),  # argument checks, atomic writes, devices
    ("schedules",),  # beta_t
    ("processes",),  # the diffusion processes: DDPM, score SDEs, EDM, flow matching
    ("data",),  # datasets in, image grids out
    ("models",),  # networks and exact denoisers
    ("samplers",),  # sample, invert
    ("accel",),  # speed: transforms of a model
    ("training",),  # the trainer, losses, checkpoints
    ("evaluation", "editing"),  # metrics; inpainting, SDEdit, super-resolution, interpolation
    ("web",),  # the web page (difflab serve): an interface, like cli, which starts it
    ("cli",),  # the difflab command
)

from . import accel, data, editing, evaluation, models, processes, samplers, schedules, training  # noqa: E402
from .processes import GaussianDiffusion  # noqa: E402
from .samplers import invert, sample  # noqa: E402
from .training import load  # noqa: E402

# difflab.diffusion was the DDPM process's module before difflab.processes held every process:
# the old name stays importable (scripts, pickled objects) as the processes package.
import sys as _sys  # noqa: E402

_sys.modules[__name__ + ".diffusion"] = processes

__version__ = "0.1.0"

__all__ = [
    "schedules", "processes", "GaussianDiffusion", "models", "samplers", "sample", "invert", "training", "load",
    "data", "evaluation", "editing", "accel",
]
