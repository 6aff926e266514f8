"""Samplers: functions from starting noise to data over a decreasing tensor of noise levels.

Each sampler is one function ``sample_NAME(denoiser, x, sigmas, *, generator, callback, ...)``
in its own module (``ddim.py`` holds DDIM), written in the VE parameterisation
x = x0 + sigma eps with a denoiser D(x, sigma) (see :mod:`.denoiser`), as in k-diffusion.
:func:`sample` (:mod:`.sampling`) is the public entry point: it builds the noise levels from a
timestep spacing, wraps the network as a denoiser with guidance, and converts to and from the
VP state x_t of the process. :mod:`.registry` names the samplers; :mod:`.timesteps` makes the
noise levels; :mod:`.optimize` fits them to a model.
"""

from .base import randn
from .classifier_guidance import ClassifierGuidance, check_classifier
from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .denoiser import Denoiser
from .dpm_solver import sample_dpmpp_2m, sample_dpmpp_3m
from .euler import sample_euler
from .heun import sample_heun
from .optimize import optimize_sigmas
from .registry import SAMPLERS, SamplerSpec, register
from .sde import sample_euler_maruyama, sample_pc
from .sampling import SAMPLING_OPTIONS, SamplingSettings, invert, sample, sampler_sigmas
from .timesteps import SPACINGS, karras_sigmas, logsnr_sigmas, sampling_sigmas, sigmas_from_timesteps, timesteps

__all__ = [
    "sample",
    "invert",
    "sampler_sigmas",
    "SamplingSettings",
    "SAMPLING_OPTIONS",
    "SAMPLERS",
    "SamplerSpec",
    "register",
    "Denoiser",
    "ClassifierGuidance",
    "check_classifier",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_heun",
    "sample_euler_maruyama",
    "sample_pc",
    "logsnr_sigmas",
    "optimize_sigmas",
    "timesteps",
    "sampling_sigmas",
    "sigmas_from_timesteps",
    "karras_sigmas",
    "SPACINGS",
    "randn",
]
