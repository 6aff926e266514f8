"""Fixtures of the sampler tests (every file in tests/samplers/ sees them without importing).
Plain helpers (closed forms, constants) live in closed_forms.py, imported by name."""

import pytest

import difflab as dl


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear(1000))
