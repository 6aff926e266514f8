"""difflab's DDIM and DPM-Solver++ against diffusers' schedulers on the same exact model.

Same model (a closed-form Gaussian-mixture denoiser, float64), same linear schedule (T = 1000),
same grid of timesteps, same starting noise: the final samples agree to 1e-4 in both
directions (diffusers' grid fed to difflab through ``timesteps=``/``sigmas=``, and difflab's
grid fed to diffusers through ``set_timesteps(timesteps=...)``). Where they differ, a test
shows why, by reproducing diffusers' number from the documented difference:

1. DDIMScheduler steps from t to t - T // steps, not to the next timestep of its own list.
   The two coincide for "leading" and for "trailing" when steps divides T; otherwise
   diffusers' state lands between grid levels and is then treated as if it were at the next
   timestep. difflab always steps to the next level of the grid (deliberate: its DDIM is a
   consistent ODE step on any grid, so the sample converges as steps grow). Reproduced below
   by difflab DDIM steps to t - T // steps followed by that relabelling.
2. Spacing names. DPMSolverMultistepScheduler's "linspace" is round(linspace(0, T - 1, steps + 1))
   without its last entry 0 (and its "leading" uses T // (steps + 1)); DDIMScheduler's and
   difflab's "linspace" is round(linspace(0, T - 1, steps)). Same names, different grids:
   pass ``timesteps=`` to get diffusers' DPM-Solver grid.
3. Karras / log-SNR ("lu") sigmas: with the linear schedule diffusers rounds the timestep it
   passes to the network to an integer, while its update uses the unrounded sigma; difflab
   evaluates the network at the noise level the solver integrates at (a fractional t). With a
   wrapper that gives the network the scheduler's own sigma, diffusers matches difflab to 1e-4.
4. Third order: diffusers' 3M (DPM-Solver's reference code) weights the second divided
   difference by phi_3, half the Taylor integral, and converges at second order
   (tests/samplers/test_dpm_solver.py measures it); difflab's dpmpp_3m uses 2 phi_3.
   ``variant="dpmsolver"`` is diffusers' update, and matches it to 1e-4.
Precision: diffusers keeps alphas_cumprod in float32 (its sigmas differ from difflab's float64
ones by up to 5e-5 relative at small t, where 1 - abar cancels) and casts the state to float32
in DPMSolverMultistepScheduler.step; the samples still agree to well within 1e-4.
"""

import math
import warnings

import pytest
import torch

import difflab as dl

diffusers = pytest.importorskip("diffusers")  # the test extra: pip install -e ".[test]"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

T = 1000
TOL = 1e-4
N, D = 64, 8


@pytest.fixture(scope="module")
def setup():
    proc = dl.GaussianDiffusion(dl.schedules.linear(T), "eps")
    g = torch.Generator().manual_seed(0)
    means = 0.8 * torch.randn(3, D, generator=g, dtype=torch.float64)
    model = dl.models.GaussianMixtureDenoiser(proc, means, 0.3)
    noise = torch.randn(N, D, generator=g, dtype=torch.float64)
    return proc, model, noise


def scheduler(name: str, **cfg):
    kw = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if name == "ddim":
        return diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **kw, **cfg)
    return diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_type="midpoint", **kw, **cfg
    )


def run_diffusers(sched, model, noise, exact_sigma_proc=None):
    """diffusers' loop. The model gets diffusers' timestep; with ``exact_sigma_proc`` it gets the
    fractional t of the sigma the scheduler integrates at instead (see the module docstring, 3)."""
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        if exact_sigma_proc is not None:
            sigma = sched.sigmas[sched.step_index if sched.step_index is not None else 0].double()
            tt = exact_sigma_proc.t_of(sigma).expand(len(x))
        else:
            tt = t.expand(len(x))
        x = sched.step(model(sched.scale_model_input(x, t), tt), t, x).prev_sample
    return x


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


# ---------------------------------------------------------------------------------- DDIM
@pytest.mark.parametrize(
    "spacing,steps", [("leading", 10), ("leading", 7), ("trailing", 10), ("trailing", 20)]
)
def test_ddim_agrees(setup, spacing, steps):
    proc, model, noise = setup
    sched = scheduler("ddim", timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ours = dl.sample(model, proc, noise.shape, "ddim", steps=steps, spacing=spacing, noise=noise)
    assert torch.equal(
        dl.samplers.timesteps(T, steps, spacing), sched.timesteps
    )  # the same grid...
    assert max_diff(ours, run_diffusers(sched, model, noise)) < TOL  # ...the same samples


def diffusers_style_ddim(proc, model, noise, ts, steps):
    """difflab's DDIM step from each t to t - T // steps, then the VP state relabelled as being at
    the next listed timestep: diffusers' DDIMScheduler, rebuilt from difflab's parts."""
    den = dl.samplers.Denoiser(model, proc)
    sig = lambda t: float(proc.sigmas[t]) if t >= 0 else 0.0  # noqa: E731  (t < 0: abar = 1)
    x_vp = noise
    for t in ts.tolist():
        prev = t - T // steps
        x = x_vp * math.sqrt(1 + sig(t) ** 2)  # the VP state read at level t
        x = dl.samplers.sample_ddim(den, x, torch.tensor([sig(t), sig(prev)], dtype=torch.float64))
        x_vp = x / math.sqrt(1 + sig(prev) ** 2)
    return x_vp


@pytest.mark.parametrize("spacing,steps", [("trailing", 7), ("linspace", 10)])
def test_ddim_difference_is_diffusers_prev_timestep(setup, spacing, steps):
    proc, model, noise = setup
    sched = scheduler("ddim", timestep_spacing=spacing)
    sched.set_timesteps(steps)
    theirs = run_diffusers(sched, model, noise)
    ours = dl.sample(model, proc, noise.shape, "ddim", timesteps=sched.timesteps, noise=noise)
    assert max_diff(ours, theirs) > 1e-3  # a real difference on these grids...
    assert (
        max_diff(diffusers_style_ddim(proc, model, noise, sched.timesteps, steps), theirs) < TOL
    )  # ...explained


# ---------------------------------------------------------------------------------- DPM-Solver++
@pytest.mark.parametrize(
    "order,sampler,options", [(2, "dpmpp_2m", {}), (3, "dpmpp_3m", {"variant": "dpmsolver"})]
)
@pytest.mark.parametrize(
    "spacing,steps",
    [("linspace", 10), ("leading", 10), ("trailing", 10), ("trailing", 20), ("linspace", 6)],
)
def test_dpm_solver_on_diffusers_grid(setup, order, sampler, options, spacing, steps):
    """diffusers' grid -> difflab: lower-order warm-up, lower_order_final (< 15 steps) and the
    first-order jump to sigma = 0 all match."""
    proc, model, noise = setup
    sched = scheduler("dpm", solver_order=order, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ours = dl.sample(
        model, proc, noise.shape, sampler, timesteps=sched.timesteps, noise=noise, **options
    )
    assert max_diff(ours, run_diffusers(sched, model, noise)) < TOL


@pytest.mark.parametrize(
    "order,sampler,options", [(2, "dpmpp_2m", {}), (3, "dpmpp_3m", {"variant": "dpmsolver"})]
)
@pytest.mark.parametrize("spacing,steps", [("trailing", 10), ("leading", 8), ("linspace", 12)])
def test_dpm_solver_on_difflab_grid(setup, order, sampler, options, spacing, steps):
    """difflab's grid -> diffusers (custom timesteps)."""
    proc, model, noise = setup
    ts = dl.samplers.timesteps(T, steps, spacing)
    sched = scheduler("dpm", solver_order=order)
    sched.set_timesteps(timesteps=ts.tolist())
    ours = dl.sample(
        model, proc, noise.shape, sampler, steps=steps, spacing=spacing, noise=noise, **options
    )
    assert max_diff(ours, run_diffusers(sched, model, noise)) < TOL


def test_spacing_names_mean_different_grids():
    sched = scheduler("dpm", timestep_spacing="linspace")
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert dl.samplers.timesteps(T, 10, "linspace").tolist() == [
        999,
        888,
        777,
        666,
        555,
        444,
        333,
        222,
        111,
        0,
    ]
    ddim = scheduler("ddim", timestep_spacing="linspace")
    ddim.set_timesteps(10)
    assert torch.equal(ddim.timesteps, dl.samplers.timesteps(T, 10, "linspace"))


@pytest.mark.parametrize(
    "flag,spacing", [("use_karras_sigmas", "karras"), ("use_lu_lambdas", "logsnr")]
)
def test_dpm_solver_continuous_sigmas(setup, flag, spacing):
    proc, model, noise = setup
    steps = 10
    sched = scheduler("dpm", solver_order=2, **{flag: True})
    sched.set_timesteps(steps)
    # diffusers' sigmas are difflab's spacing, up to its float32 alphas_cumprod (1 - abar cancels
    # at small t: 5e-5 relative); difflab gets diffusers' own values to compare the algorithms
    assert torch.allclose(
        sched.sigmas.double(), dl.samplers.sampling_sigmas(proc, steps, spacing), rtol=2e-4
    )
    ours = dl.sample(
        model, proc, noise.shape, "dpmpp_2m", sigmas=sched.sigmas.double(), noise=noise
    )
    exact = run_diffusers(sched_reset(sched, steps), model, noise, exact_sigma_proc=proc)
    assert max_diff(ours, exact) < TOL  # the same algorithm once the network sees the same sigma
    rounded = run_diffusers(sched_reset(sched, steps), model, noise)
    assert max_diff(ours, rounded) > TOL  # diffusers as shipped: the network sees round(t)


def sched_reset(sched, steps):
    sched.set_timesteps(steps)
    return sched


def test_dpmpp_3m_third_order_differs_from_diffusers_only_by_the_d2_weight(setup):
    proc, model, noise = setup
    sched = scheduler("dpm", solver_order=3, timestep_spacing="trailing")
    sched.set_timesteps(20)
    theirs = run_diffusers(sched, model, noise)
    kw = dict(timesteps=sched.timesteps, noise=noise)
    assert max_diff(dl.sample(model, proc, noise.shape, "dpmpp_3m", **kw), theirs) > TOL
    assert (
        max_diff(dl.sample(model, proc, noise.shape, "dpmpp_3m", variant="dpmsolver", **kw), theirs)
        < TOL
    )


def test_no_warnings_escape_difflab(setup):
    proc, model, noise = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dl.sample(model, proc, noise.shape, "dpmpp_2m", steps=5, noise=noise)
