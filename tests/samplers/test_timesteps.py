"""Timestep spacings (difflab.samplers.timesteps): log-SNR levels, each sampler's default."""

import math

import torch

from difflab.samplers import SAMPLERS
from difflab.samplers.timesteps import sampling_sigmas

FAST = ["dpmpp_2m", "dpmpp_3m", "euler", "heun"]


def test_logsnr_spacing_has_equal_steps_in_log_sigma(proc):
    sig = sampling_sigmas(proc, 7, "logsnr")
    assert sig[-1] == 0 and len(sig) == 8
    assert math.isclose(float(sig[0]), proc.sigma_max) and math.isclose(
        float(sig[-2]), proc.sigma_min
    )
    gaps = sig[:-1].log().diff()
    assert torch.allclose(gaps, gaps[0].expand_as(gaps))


def test_default_spacings_are_documented():
    assert {n: SAMPLERS[n].default_spacing for n in FAST} == {
        "dpmpp_2m": "logsnr",
        "dpmpp_3m": "logsnr",
        "euler": "logsnr",
        "heun": "logsnr",
    }
    assert SAMPLERS["heun"].evals_per_step == 2
