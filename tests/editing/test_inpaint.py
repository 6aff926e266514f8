"""Inpainting (difflab.editing.inpaint) with exact models: replacement and RePaint against the exact
conditional of a two-mode mixture, plain sampling, the forward process, on every process (the DDPM
chain, the VP and VE SDEs, EDM, flow matching; fixtures: conftest.py)."""

import math

import numpy as np
import pytest
import torch

import difflab as dl
from difflab import editing as E
from difflab.models.masked import MaskConditioned, WithKnown
from difflab.samplers.timesteps import default_spacing


def exact_mode_prob(x1, means=(-1.5, 1.5), std=0.5):
    """p(mode 2 | x1) for equal weights: the exact conditional's mixing weight."""
    lw = torch.tensor([-(x1 - m) ** 2 / (2 * std**2) for m in means])
    return torch.softmax(lw, 0)[1].item()


def state_scale(proc, sigma: float) -> float:
    """a in the process's state x_t = a x at noise level sigma, from each process's definition:
    VP (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps): 1 / sqrt(1 + sigma^2); flow (x_t = (1 - t) x0
    + t eps, sigma = t / (1 - t)): 1 - t = 1 / (1 + sigma); VE and EDM (x_t = x0 + sigma eps): 1."""
    if isinstance(proc, (dl.GaussianDiffusion, dl.processes.VPSDE)):
        return 1 / math.sqrt(1 + sigma**2)
    if isinstance(proc, dl.processes.FlowMatching):
        return 1 / (1 + sigma)
    assert isinstance(proc, (dl.processes.VESDE, dl.processes.EDM))
    return 1.0


def default_sigmas(proc, sampler, steps):
    """The noise levels inpaint runs over by default: the sampler's spacing where the process has it."""
    spacing = default_spacing(proc, dl.samplers.SAMPLERS[sampler].default_spacing)
    return dl.samplers.sampling_sigmas(proc, steps, spacing)


def test_repaint_schedule_by_hand():
    # Lugmayr et al. 2022, app. B with N = 10, j = 3, r = 2: jumps at RePaint times t = 0, 3, 6
    # (indices 9, 6, 3), each going back up 3 levels once.
    assert E.repaint_schedule(10, 3, 2) == [
        0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 5, 4, 3, 4, 5, 6, 7, 8, 9, 8, 7, 6, 7, 8, 9, 10]
    assert E.repaint_schedule(7, 10, 1) == list(range(8))
    path = E.repaint_schedule(250, 10, 10)
    moves = np.diff(path)
    assert set(moves.tolist()) == {-1, 1} and path[0] == 0 and path[-1] == 250
    assert (moves == 1).sum() == 250 + 9 * 10 * 24  # N + (r - 1) j floor((N - 1) / j)
    with pytest.raises(ValueError, match="jump_length=10 must be smaller than steps=10"):
        E.repaint_schedule(10, 10, 2)
    with pytest.raises(ValueError, match="resample must be a positive integer"):
        E.repaint_schedule(10, 2, 0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_kept_region_is_the_input(each_proc, each_mixture, sampler):
    proc, mixture = each_proc, each_mixture
    g = torch.Generator().manual_seed(0)
    x = mixture.sample(64, g)
    mask = torch.tensor([0.0, 1.0])
    noise = torch.randn(x.shape, generator=g)
    out = E.inpaint(mixture, proc, x, mask, sampler, 50, noise=noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], x[:, 0])  # exact after the final paste
    raw = E.inpaint(mixture, proc, x, mask, sampler, 50, noise=noise, generator=torch.Generator().manual_seed(1),
                    paste_final=False)
    assert torch.equal(raw[:, 1], out[:, 1])  # the paste touches only the kept pixels
    err = (raw[:, 0] - x[:, 0]).abs()
    sigma_last = float(default_sigmas(proc, sampler, 50)[-2])  # the last noisy level the model sees
    assert 0 < err.mean() < sigma_last and err.max() < 5 * sigma_last  # its own estimate, close to the input


def test_mask_extremes(each_proc, each_mixture):
    proc, mixture = each_proc, each_mixture
    g = torch.Generator().manual_seed(0)
    x = mixture.sample(64, g)
    noise = torch.randn(x.shape, generator=g)
    keep_all = E.inpaint(mixture, proc, x, torch.zeros(2), "ddim", 20, noise=noise)
    assert torch.equal(keep_all, x)
    fill_all = E.inpaint(mixture, proc, x, torch.ones(2), "ddim", 20, noise=noise)
    assert torch.allclose(fill_all, dl.sample(mixture, proc, x.shape, "ddim", 20, noise=noise), atol=1e-5)


def test_inpainting_independent_coordinates_is_exact(each_proc):
    """Data N(m, diag(s^2)): x2 is independent of x1, so p(x2 | x1) = p(x2) and the filled
    coordinate must be what plain sampling gives -- the kept pixel must not leak into it.
    The exact denoiser works coordinate-wise, so with DDIM this holds sample by sample."""
    proc = each_proc
    model = dl.models.GaussianDenoiser(proc, [1.0, -0.5], [0.3, 0.7])
    n = 2000
    x = torch.tensor([[3.0, 0.0]]).repeat(n, 1)  # kept value far out in the tail
    mask = torch.tensor([0.0, 1.0])
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    filled = E.inpaint(model, proc, x, mask, "ddim", 50, noise=z)[:, 1]
    assert torch.allclose(filled, dl.sample(model, proc, (n, 2), "ddim", 50, noise=z)[:, 1], atol=1e-6)
    # DDPM: the same distribution as plain DDPM sampling with as many steps
    y = E.inpaint(model, proc, x, mask, "ddpm", 50, generator=torch.Generator().manual_seed(1))[:, 1]
    ref = dl.sample(model, proc, (n, 2), "ddpm", 50, generator=torch.Generator().manual_seed(2))[:, 1]
    se = 0.7 / math.sqrt(n)
    assert abs(y.mean().item() + 0.5) < 4 * se
    assert abs(y.std().item() - ref.std().item()) < 0.04


def test_inpainting_mixture_against_exact_conditional(each_proc, each_mixture):
    """Two modes: x1 = 0.3 puts 97% of p(x2 | x1) on the upper mode. Replacement is known to
    under-use the kept pixel (its noised copy carries little information when the modes split);
    RePaint's resampling harmonises and moves the result towards the exact conditional. Measured
    (upper share, replacement -> RePaint r = 8, j = 3): ddpm 0.63 -> 0.78, vp 0.63 -> 0.78,
    ve 0.62 -> 0.80, edm 0.64 -> 0.79, flow 0.64 -> 0.82; exact 0.973."""
    proc, mixture = each_proc, each_mixture
    x1, n = 0.3, 1000
    exact = exact_mode_prob(x1)
    assert exact > 0.97
    x = torch.tensor([[x1, 0.0]]).repeat(n, 1)
    mask = torch.tensor([0.0, 1.0])

    def upper(**kw):
        y = E.inpaint(mixture, proc, x, mask, "ddpm", 25, generator=torch.Generator().manual_seed(0), **kw)
        return (y[:, 1] > 0).float().mean().item()

    replacement = upper()
    repaint = upper(resample=8, jump_length=3)
    se = 0.5 / math.sqrt(n)
    assert 0.5 + 4 * se < replacement < exact  # informative, but not exact
    assert repaint > replacement + 6 * se  # resampling helps...
    assert exact - repaint < 0.7 * (exact - replacement)  # ...substantially
    assert repaint < exact + 4 * se


def test_inpaint_guidance_passes_through(proc):
    """With the class-conditional mixture, label k and guidance 1 fill x2 from component k;
    guidance 3 (eps_u + 3 (eps_c - eps_u)) pushes the fill further from the other component and
    narrows it (measured: mean 1.52 -> 2.09, std 0.47 -> 0.28), which a dropped guidance
    argument would not."""
    model = dl.models.GaussianMixtureDenoiser(proc, [[-1.5, -1.5], [1.5, 1.5]], 0.5, conditional=True)
    x = torch.zeros(400, 2)
    for k, sign in ((0, -1), (1, 1)):
        cond = torch.full((400,), k)
        y = E.inpaint(model, proc, x, torch.tensor([0.0, 1.0]), "ddim", 20, cond=cond,
                      generator=torch.Generator().manual_seed(0))
        assert (sign * y[:, 1] > 0).float().mean() > 0.99
        assert (sign * y[:, 1]).mean() == pytest.approx(1.5, abs=0.1)  # component k's mean
        z = E.inpaint(model, proc, x, torch.tensor([0.0, 1.0]), "ddim", 20, cond=cond, guidance=3.0,
                      generator=torch.Generator().manual_seed(0))
        assert (sign * z[:, 1]).mean() > (sign * y[:, 1]).mean() + 0.3
        assert z[:, 1].std() < 0.8 * y[:, 1].std()


def test_renoise_matches_forward_process(each_proc, each_mixture):
    """The up-step of RePaint: from q(x | x0) at sigma_a, adding N(0, sigma_b^2 - sigma_a^2) gives
    q(x | x0) at sigma_b, on every process; the callback reports the process's own state x_t = a x.

    A mask of zeros keeps every coordinate, so after each step down the state is exactly a draw of
    q(x | x0) = N(x0, sigma^2) (the replacement), whatever the sampler did; the states the walk
    reaches going up (r = 2, j = 3) are that draw plus the forward steps' noise. With x0 = 0 every
    state the callback sees must be N(0, sigma^2) in VE form."""
    proc, mixture = each_proc, each_mixture
    sig = default_sigmas(proc, "ddpm", 10)
    seen = {}
    E.inpaint(mixture, proc, torch.zeros(5000, 2), torch.zeros(2), "ddpm", 10, resample=2, jump_length=3,
              generator=torch.Generator().manual_seed(0), callback=lambda step: seen.setdefault(step["i"], step))
    path = E.repaint_schedule(10, 3, 2)
    moves = list(zip(path[:-1], path[1:]))
    denoise = [k for k, (a, b) in enumerate(moves) if b == a + 1]
    assert sorted(seen) == denoise  # one report per step down, none for the forward steps
    after_jump = [k for k in denoise if k > 0 and moves[k - 1][1] < moves[k - 1][0]]
    assert [path[k] for k in after_jump] == [0, 3, 6]  # the walk came back up to these levels
    for k in denoise:
        s = float(sig[path[k]])
        assert seen[k]["sigma"] == pytest.approx(s)
        x = seen[k]["x"] / state_scale(proc, s)  # the VE state
        assert x.pow(2).mean().item() == pytest.approx(s**2, rel=0.05), (k, path[k])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_inpainting_is_one_computation_on_every_process(matched_procs, sampler):
    """Over the same noise levels every process is one process in VE form, so replacement and
    RePaint (r = 3, j = 2) must give the DDPM chain's result on each, draw for draw, and report the
    same VE states: a formula written for one process's state (a VP-form forward step, x_T taken as
    the state) would break this. Measured: outputs equal to 1.1e-5, VE states to 1e-7 relative at
    the top and 1e-5 absolute at sigma = 0.01 (float32 rounding of each process's own state)."""
    x = torch.tensor([[0.3, 0.0]]).repeat(200, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    out, states = {}, {}
    for name, proc in matched_procs.items():
        mixture = dl.models.GaussianMixtureDenoiser(proc, [[-1.5, -1.5], [1.5, 1.5]], 0.5)
        seen = []

        def record(step, proc=proc, seen=seen):
            seen.append(step["x"] / state_scale(proc, step["sigma"]))  # the VE state

        out[name] = E.inpaint(mixture, proc, x, torch.tensor([0.0, 1.0]), sampler, 10, resample=3, jump_length=2,
                              spacing="karras", noise=noise, generator=torch.Generator().manual_seed(0),
                              callback=record)
        states[name] = torch.stack(seen)
    for name in matched_procs:
        assert torch.allclose(out[name], out["ddpm"], rtol=1e-5, atol=1e-5), name
        assert torch.allclose(states[name], states["ddpm"], rtol=1e-4, atol=3e-5), name


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "flow"])
def test_inpaint_steps_on_continuous_processes(name):
    """A continuous-time process has no grid of T steps: any number of levels >= 1, else a clear error."""
    proc = dl.processes.build(name)
    model = dl.models.GaussianDenoiser(proc, [0.0, 0.0], 1.0)
    x, mask = torch.zeros(4, 2), torch.tensor([0.0, 1.0])
    for steps in (0, -3, 2.5, "10", None):
        with pytest.raises(ValueError, match=r"steps must be an integer >= 1 \(the number of noise levels"):
            E.inpaint(model, proc, x, mask, "ddim", steps)
    assert E.inpaint(model, proc, x, mask, "ddim", np.int64(1)).shape == (4, 2)
    with pytest.raises(ValueError, match="spacing 'trailing' picks timesteps of a discrete grid"):
        E.inpaint(model, proc, x, mask, "ddim", 10, spacing="trailing")


def test_inpaint_bad_input(proc, mixture):
    img = torch.zeros(2, 1, 8, 8)
    model = dl.models.GaussianDenoiser(proc, torch.zeros(64), 1.0)
    with pytest.raises(ValueError, match=r"mask of shape \(9, 8\) does not fit the image of shape \(2, 1, 8, 8\)"):
        E.inpaint(model, proc, img, torch.zeros(9, 8))
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        E.inpaint(model, proc, img, torch.full((8, 8), 2.0))
    with pytest.raises(TypeError, match="mask must be a torch tensor"):
        E.inpaint(model, proc, img, "half:left")
    with pytest.raises(ValueError, match="cannot be used here.*multistep.*choose one of ddpm, ddim"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="sampler 'dddim' cannot be used here"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="dddim")
    with pytest.raises(ValueError, match="takes no option eta"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="ddpm", eta=0.5)
    if "euler" in dl.samplers.SAMPLERS:
        with pytest.raises(ValueError, match="s_churn .* does not apply to inpainting"):
            E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="euler", s_churn=1.0)
    with pytest.raises(ValueError, match="steps must be an integer in 1 .. T = 1000"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), steps=0)
    with pytest.raises(ValueError, match="noise must have the image's shape"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), noise=torch.zeros(2, 64))
    with pytest.raises(ValueError, match="cond .* not class-conditional"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), cond=torch.zeros(2, dtype=torch.long))


def test_clip_x0_passes_through(proc, mixture):
    """clip_x0 = c clamps every x0 estimate to [-c, c]; DDIM's last step returns that estimate."""
    x = mixture.sample(100, torch.Generator().manual_seed(0))
    filled = E.inpaint(mixture, proc, x, torch.tensor([0.0, 1.0]), "ddim", 10, clip_x0=0.5)
    assert filled[:, 1].abs().max() <= 0.5 and torch.equal(filled[:, 0], x[:, 0])
    edited = E.img2img(mixture, proc, x, 0.5, "ddim", 10, clip_x0=0.5)
    assert edited.abs().max() <= 0.5
    with pytest.raises(ValueError, match="clip_x0 must be > 0"):
        E.inpaint(mixture, proc, x, torch.tensor([0.0, 1.0]), "ddim", 10, clip_x0=0.0)


class _RecordingBase(torch.nn.Module):
    """A base network for a mask-conditioned model: keeps its inputs [x_t, (1 - m) y, m], returns 0.1 x_t."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, h, t, cond=None):
        self.seen.append((h.detach().clone(), cond))
        return 0.1 * h[:, :, :1] + 0 * self.w


def test_inpaint_binds_known_data_and_mask_to_a_mask_conditioned_model(proc):
    """A mask-conditioned model (models/masked.py) gets the clips and the mask bound at every network
    call, guidance's doubled batch included, and the given part is still replaced (kept exactly)."""
    torch.manual_seed(0)
    model = MaskConditioned("video_unet_tiny", channels=8, norm_groups=4, num_classes=10)
    model.net = _RecordingBase()
    clips = torch.rand(2, 4, 1, 8, 8) * 2 - 1
    mask = E.masks.future_frames_mask(4, (8, 8), given=1)
    labels = torch.tensor([3, 5])
    kw = dict(cond=labels, guidance=2.0, noise=torch.randn(clips.shape), generator=torch.Generator().manual_seed(1))
    out = E.inpaint(model, proc, clips, mask, "ddim", 4, **kw)
    assert len(model.net.seen) == 4
    m = mask.expand_as(clips)
    for h, cond in model.net.seen:
        assert torch.equal(cond, torch.tensor([3, 5, 10, 10]))
        assert torch.equal(h[:, :, 1:2], ((1 - m) * clips).repeat(2, 1, 1, 1, 1))
        assert torch.equal(h[:, :, 2:3], m.repeat(2, 1, 1, 1, 1))
    assert torch.equal(out[:, :1], clips[:, :1])
    # the same as binding by hand: inpaint adds nothing else
    bound = WithKnown(model, clips, m)
    kw["generator"] = torch.Generator().manual_seed(1)
    assert torch.equal(E.inpaint(bound, proc, clips, mask, "ddim", 4, **kw), out)
