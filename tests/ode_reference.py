"""Heun's method against a high-accuracy reference solution of the probability-flow ODE, for the
cross-checks against flow_matching's dopri5 (tests/test_crosscheck_flow.py, test_crosscheck_sde.py)."""

import itertools

import torch

import difflab as dl


def heun_errors(model, proc, x_start, reference, t_max: float, steps=(100, 200, 400)) -> list[float]:
    """Max |difference| to ``reference`` (the state at t_min) of difflab's Heun from the state
    ``x_start`` at t_max to t_min, on equal steps in the process's time, for each step count."""
    den = dl.samplers.Denoiser(model, proc, clip_x0=None)
    errors = []
    for k in steps:
        sigmas = proc.sigma_of(torch.linspace(t_max, proc.t_min, k + 1, dtype=torch.float64))
        x = dl.samplers.sample_heun(den, x_start / proc.scale(sigmas[0]), sigmas)  # VE state x = x_t / a
        errors.append(float((x * proc.scale(sigmas[-1]) - reference.double()).abs().max()))
    return errors


def second_order(errors: list[float]) -> bool:
    """Each halving of the step cuts the error by about 4 (3.4 to 4.6), Heun's order."""
    return all(3.4 < a / b < 4.6 for a, b in itertools.pairwise(errors))
