"""EDM's Euler (difflab.samplers.euler) against the closed-form ODE solution on Gaussian data
(closed_forms.gain_error): first order. Its output moments: test_sampling.py."""

from closed_forms import assert_convergence_order


def test_convergence_order(proc):
    assert_convergence_order(proc, "euler", "karras", 1)  # measured ratios: Euler 1.98
