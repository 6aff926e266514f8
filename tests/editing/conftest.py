"""Fixtures of the editing tests: the process and the two-mode mixture whose exact denoiser is
Bayes-optimal for its data, so what the tests see is the editing method itself (plus the
sampler's discretisation), checked against closed forms."""

import pytest

import difflab as dl


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear(1000))


@pytest.fixture(scope="module")
def mixture(proc):
    """Two modes separated along both coordinates: knowing x1 decides the mode of x2."""
    return dl.models.GaussianMixtureDenoiser(proc, [[-1.5, -1.5], [1.5, 1.5]], 0.5)
