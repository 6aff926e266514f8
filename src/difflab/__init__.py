"""difflab: diffusion generative models on PyTorch.

    import difflab as dl
    proc = dl.GaussianDiffusion(dl.schedules.cosine(1000), prediction="eps")
    x0 = dl.sample(model, proc, (16, 2), sampler="ddim", steps=50)

See API.md for the public names; the modules follow the data flow: ``schedules`` ->
``diffusion`` (the process) -> ``models`` -> ``samplers`` -> ``training`` -> ``evaluation``
-> ``editing`` -> ``cli``.
"""

from . import accel, data, editing, evaluation, models, samplers, schedules, training
from .diffusion import GaussianDiffusion
from .samplers import invert, sample
from .training import load

__version__ = "0.1.0"

__all__ = [
    "schedules", "GaussianDiffusion", "models", "samplers", "sample", "invert", "training", "load",
    "data", "evaluation", "editing", "accel",
]
