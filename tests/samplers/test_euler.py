"""EDM's Euler (difflab.samplers.euler) against the closed-form ODE solution on Gaussian data
(closed_forms.gain_error): first order. Its output moments: test_sampling.py."""

import pytest
from closed_forms import gain_error


@pytest.mark.parametrize(
    "sampler,spacing,order,options",
    [
        ("euler", "karras", 1, {}),
    ],
)
def test_convergence_order(proc, sampler, spacing, order, options):
    errs = [abs(gain_error(proc, sampler, n, spacing, **options)) for n in (32, 64, 128)]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    # Error ratio 2^order when the steps double; measured: Euler 1.98.
    lo, hi = 2**order * 0.85, 2**order * 1.35
    assert all(lo < r < hi for r in ratios), (errs, ratios)
