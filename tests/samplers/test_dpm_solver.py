"""DPM-Solver++ 2M/3M (difflab.samplers.dpm_solver) against the closed-form ODE solution on
Gaussian data (closed_forms.gain_error): the convergence order, and 3M beating 2M."""

import pytest
from closed_forms import assert_convergence_order, gain_error


@pytest.mark.parametrize(
    "sampler,spacing,order,options",
    [
        ("dpmpp_2m", "karras", 2, {}),
        ("dpmpp_3m", "karras", 3, {}),
        # DPM-Solver's reference 3M (= diffusers): its second difference has half the Taylor
        # weight, so it converges at second order only (see dpm_solver.py).
        ("dpmpp_3m", "logsnr", 2, {"variant": "dpmsolver"}),
    ],
)
def test_convergence_order(proc, sampler, spacing, order, options):
    # measured ratios: 2M 4.4/4.2, 3M 9.6/8.5 (still
    # approaching 8), reference 3M 4.9/4.3 (Euler, Heun: test_euler.py, test_heun.py).
    assert_convergence_order(proc, sampler, spacing, order, **options)


def test_third_order_beats_second_order(proc):
    for n in (32, 64):
        assert (
            abs(gain_error(proc, "dpmpp_3m", n, "logsnr"))
            < abs(gain_error(proc, "dpmpp_2m", n, "logsnr")) / 10
        )
