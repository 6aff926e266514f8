"""Diffusion processes behind one interface (:class:`Process`): the discrete DDPM chain, the
score SDEs, EDM and flow matching. See :mod:`.base` for what the samplers need from a process.

    proc = dl.processes.GaussianDiffusion(dl.schedules.cosine(1000), prediction="eps")  # DDPM
    proc = dl.processes.VPSDE()                      # Song et al. 2021, beta_min = 0.1, beta_max = 20
    proc = dl.processes.VESDE(sigma_max=50.0)        # Song et al. 2021
    proc = dl.processes.EDM(sigma_data=0.5)          # Karras et al. 2022 (with models.EDMPrecond)
    proc = dl.processes.FlowMatching(coupling="ot")  # Lipman et al. 2023; Tong et al. 2024
"""

from .base import (PREDICTION_TYPES, Process, call_model, call_model_with_variance, check_weighting,
                   convert_prediction, model_attribute)
from .discrete import GaussianDiffusion, discretized_gaussian_log_likelihood
from .edm import EDM
from .flow import FlowMatching, ot_coupling
from .registry import PROCESSES, build
from .sde import VESDE, VPSDE

__all__ = [
    "Process", "GaussianDiffusion", "VPSDE", "VESDE", "EDM", "FlowMatching", "PROCESSES", "build",
    "PREDICTION_TYPES", "convert_prediction", "call_model", "call_model_with_variance", "model_attribute",
    "check_weighting", "ot_coupling",
    "discretized_gaussian_log_likelihood",
]
