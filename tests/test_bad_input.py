"""Every entry point of the core rejects bad input with a message naming the argument and what is allowed."""

import math

import numpy as np
import pytest
import torch

import difflab as dl


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear(100))


@pytest.fixture(scope="module")
def model(proc):
    return dl.models.GaussianDenoiser(proc, [0.0, 0.0], 1.0)


def test_unknown_names(proc, model):
    with pytest.raises(ValueError, match=r"unknown schedule 'lin'.*linear"):
        dl.schedules.get("lin")
    with pytest.raises(ValueError, match=r"unknown sampler 'dddim'.*ddim"):
        dl.sample(model, proc, (2, 2), sampler="dddim")
    with pytest.raises(ValueError, match=r"unknown prediction type 'epsilon'.*eps"):
        dl.GaussianDiffusion(dl.schedules.linear(10), prediction="epsilon")
    with pytest.raises(ValueError, match=r"unknown timestep spacing 'equal'.*trailing"):
        dl.sample(model, proc, (2, 2), steps=5, spacing="equal")
    with pytest.raises(ValueError, match=r"unknown DDPM variance 'large'.*posterior"):
        dl.sample(model, proc, (2, 2), "ddpm", 5, variance="large")
    with pytest.raises(ValueError, match=r"takes no option variance"):
        dl.sample(model, proc, (2, 2), "ddim", 5, variance="beta")
    with pytest.raises(ValueError, match="unknown model"):
        dl.models.build("transformer9000")


@pytest.mark.parametrize("T", [0, -1])
def test_T_must_be_positive(T):
    for name in ["linear", "cosine", "sqrt", "sigmoid"]:
        with pytest.raises(ValueError, match=r"T \(the number of diffusion steps\) must be a positive integer"):
            dl.schedules.get(name, T=T)


@pytest.mark.parametrize("steps", [0, -3, 101])
def test_steps_out_of_range(proc, model, steps):
    for sampler in ["ddpm", "ddim"]:
        with pytest.raises(ValueError, match=r"steps must lie in 1 \.\. T = 100"):
            dl.sample(model, proc, (2, 2), sampler=sampler, steps=steps)


def test_eta(proc, model):
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        dl.sample(model, proc, (2, 2), "ddim", 5, eta=-0.1)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        dl.sample(model, proc, (2, 2), "ddim", 5, eta=1.5)
    with pytest.raises(ValueError, match="eta is an option of"):
        dl.sample(model, proc, (2, 2), "ddpm", 5, eta=0.5)


def test_x0_t_shape_mismatch(proc):
    x0 = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"t must have shape \[B\] matching x0's batch size.*\(3,\).*\(4, 3\)"):
        proc.q_sample(x0, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        proc.q_sample(x0, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t must lie in 0 \.\. 99"):
        proc.q_sample(x0, torch.full((4,), 100))
    with pytest.raises(TypeError, match="t must be a torch tensor"):
        proc.q_sample(x0, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="noise must have x0's shape"):
        proc.q_sample(x0, torch.zeros(4, dtype=torch.long), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="x0 and x_t must have the same shape"):
        proc.q_posterior(x0, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="model_output must have x_t's shape"):
        proc.predict_x0(x0, torch.zeros(4, dtype=torch.long), torch.zeros(4, 2))


class WrongShape(torch.nn.Module):
    def forward(self, x, t, cond=None):
        return x[:, :1]


def test_model_returning_the_wrong_shape(proc):
    msg = r"the model returned \(4, 1\), but it must return a tensor of x_t's shape \(4, 2\)"
    with pytest.raises(ValueError, match=msg):
        proc.training_loss(WrongShape(), torch.zeros(4, 2))
    for sampler in ["ddpm", "ddim"]:
        with pytest.raises(ValueError, match=msg):
            dl.sample(WrongShape(), proc, (4, 2), sampler=sampler, steps=3)


def test_guidance_and_labels(proc, model):
    with pytest.raises(ValueError, match="guidance=3.0 needs a class-conditional model"):
        dl.sample(model, proc, (2, 2), "ddim", 5, guidance=3)
    with pytest.raises(ValueError, match="not class-conditional"):
        dl.sample(model, proc, (2, 2), "ddim", 5, cond=torch.tensor([0, 1]), guidance=3)
    cond_model = dl.models.GaussianMixtureDenoiser(proc, [[0.0, 0.0], [1.0, 1.0]], 1.0, conditional=True)
    with pytest.raises(ValueError, match="needs class labels"):
        dl.sample(cond_model, proc, (2, 2), "ddim", 5, guidance=3)
    with pytest.raises(ValueError, match="guidance must be a finite number >= 0"):
        dl.sample(cond_model, proc, (2, 2), "ddim", 5, cond=torch.tensor([0, 1]), guidance=-1)
    with pytest.raises(ValueError, match=r"cond must be a long tensor of class labels with shape \[2\]"):
        dl.sample(cond_model, proc, (2, 2), "ddim", 5, cond=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="not class-conditional"):
        proc.training_loss(dl.models.MLPDenoiser(2), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class labels must lie in 0 \.\. 1"):
        proc.training_loss(cond_model, torch.zeros(2, 2), torch.tensor([0, 5]))


def test_labels_are_checked_by_sample_and_invert(proc):
    mlp = dl.models.MLPDenoiser(2, width=16, depth=1, num_classes=3)
    with pytest.raises(ValueError, match=r"class labels must lie in 0 \.\. 2"):
        dl.sample(mlp, proc, (2, 2), "ddim", 3, cond=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"class labels must lie in 0 \.\. 2"):
        dl.sample(mlp, proc, (2, 2), "ddim", 3, cond=torch.tensor([-1, 0]))
    unconditional = dl.models.GaussianMixtureDenoiser(proc, [[0.0, 0.0], [1.0, 1.0]], 1.0)
    with pytest.raises(ValueError, match="not class-conditional"):  # it used to ignore them silently
        dl.sample(unconditional, proc, (2, 2), "ddim", 3, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"with shape \[3\]"):
        dl.invert(mlp, proc, torch.zeros(3, 2), 3, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"class labels must lie in 0 \.\. 2"):
        dl.invert(mlp, proc, torch.zeros(2, 2), 3, cond=torch.tensor([0, 7]))
    # a plain function has no num_classes to check against: shape and dtype only
    fn = lambda x, t, c=None: torch.zeros_like(x)  # noqa: E731
    assert dl.sample(fn, proc, (2, 2), "ddim", 3, cond=torch.tensor([0, 9])).shape == (2, 2)


def test_timesteps_out_of_range_are_refused(proc, model):
    T = proc.T
    for ts in ([T + 500.0, 50.0], [T, 50], [-T + 5, -T + 2], [5.0, -0.5]):  # floats clamped, ints wrapped
        with pytest.raises(ValueError, match=rf"timesteps must lie in 0 \.\. T-1 = {T - 1}"):
            dl.sample(model, proc, (2, 2), "ddim", timesteps=torch.tensor(ts))
    assert dl.samplers.timesteps(1000, 1, "linspace").tolist() == [0]  # diffusers' 1-step linspace grid


def test_shapes_and_noise(proc, model):
    with pytest.raises(ValueError, match=r"shape must be \(B, \.\.\.\)"):
        dl.sample(model, proc, (0, 2))
    with pytest.raises(TypeError, match="shape must be a sequence of ints"):
        dl.sample(model, proc, 5)
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 2\)"):
        dl.sample(model, proc, (3, 2), noise=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing"):
        dl.sample(model, proc, (3, 2), sigmas=torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(TypeError, match="proc must be a process of dl.processes"):
        dl.sample(model, "linear", (3, 2))
    with pytest.raises(ValueError, match="MLPDenoiser\\(dim=2\\) takes x of shape"):
        dl.models.MLPDenoiser(2)(torch.zeros(3, 5), torch.zeros(3))


def test_sample_refuses_devices_this_machine_lacks(proc, model):
    """A device that does not exist here: a ValueError naming the argument (it was a deep
    "Torch not compiled with CUDA enabled" AssertionError, or a RuntimeError for "gpu")."""
    bad = ["gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(ValueError, match=rf"device: .*'{device}'.*(use auto|cuda:0)"):
            dl.sample(model, proc, (2, 2), "ddim", 3, device=device)
    noise = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    ref = dl.sample(model, proc, (2, 2), "ddim", 3, noise=noise)
    for device in ("cpu", torch.device("cpu")):
        assert torch.equal(dl.sample(model, proc, (2, 2), "ddim", 3, noise=noise, device=device), ref)


def test_one_dtype_rule(proc, model):
    """Integer data/noise are refused; float tensors are cast to the model's parameter dtype
    (a model without parameters runs in the input's float dtype)."""
    torch.manual_seed(0)
    mlp = dl.models.MLPDenoiser(2, width=16, depth=1)
    torch.nn.init.normal_(mlp.out[-1].weight)  # a non-zero output, so the loss depends on the input
    x0, noise, t = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 10, 50, 99])
    ref = proc.training_loss(mlp, x0, t=t, noise=noise)
    assert torch.equal(proc.training_loss(mlp, x0.double(), t=t, noise=noise.double()), ref)
    half = proc.training_loss(mlp, x0.half(), t=t, noise=noise.half())
    assert torch.equal(half, proc.training_loss(mlp, x0.half().float(), t=t, noise=noise.half().float()))
    with pytest.raises(TypeError, match=r"x0 must be a float tensor, got torch.int64; scale the data to \[-1, 1\]"):
        proc.training_loss(mlp, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="noise must be a float tensor, got torch.int64"):
        proc.training_loss(mlp, x0, noise=torch.zeros(4, 2, dtype=torch.long))

    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    out = dl.sample(mlp, proc, (4, 2), "ddim", 3, noise=z)
    assert out.dtype == torch.float32
    assert torch.equal(dl.sample(mlp, proc, (4, 2), "ddim", 3, noise=z.double()), out)
    assert dl.sample(mlp, proc, (4, 2), "ddim", 3, noise=z.half()).dtype == torch.float32
    with pytest.raises(TypeError, match="noise must be a float tensor, got torch.int64"):
        dl.sample(mlp, proc, (4, 2), "ddim", 3, noise=torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="noise must be a torch tensor, got ndarray"):
        dl.sample(mlp, proc, (4, 2), "ddim", 3, noise=z.numpy())
    assert torch.equal(dl.invert(mlp, proc, x0.double(), 3), dl.invert(mlp, proc, x0, 3))
    with pytest.raises(TypeError, match="x0 must be a float tensor, got torch.int64"):
        dl.invert(mlp, proc, torch.zeros(4, 2, dtype=torch.long), 3)
    # the analytic model has no parameters: it runs in the noise's dtype
    assert dl.sample(model, proc, (4, 2), "ddim", 3, noise=z.double()).dtype == torch.float64


def test_mlp_labels_and_null_cond(proc):
    mlp = dl.models.MLPDenoiser(2, width=16, depth=1, num_classes=3)
    x, t = torch.zeros(2, 2), torch.zeros(2)
    with pytest.raises(ValueError, match=r"class labels must lie in 0 \.\. 2 \(or 3 for 'no label'\), got .*99"):
        mlp(x, t, torch.tensor([0, 99]))
    for bad in (torch.tensor([True, False]), torch.tensor([0.0, 1.0])):
        with pytest.raises(ValueError, match=r"cond must be a long tensor of class labels with shape \[2\]"):
            mlp(x, t, bad)
    with pytest.raises(ValueError, match=r"cond must be a long tensor .*torch.bool"):
        dl.sample(mlp, proc, (2, 2), "ddim", 2, cond=torch.tensor([True, False]))
    cond = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"null_cond must lie in 0 \.\. 3 .* got 99"):
        dl.sample(mlp, proc, (2, 2), "ddim", 2, cond=cond, guidance=2.0, null_cond=99)
    with pytest.raises(TypeError, match="null_cond must be an integer class label"):
        dl.sample(mlp, proc, (2, 2), "ddim", 2, cond=cond, guidance=2.0, null_cond="3")
    z = torch.randn(2, 2)
    assert torch.equal(dl.sample(mlp, proc, (2, 2), "ddim", 2, cond=cond, guidance=2.0, noise=z, null_cond=np.int64(3)),
                       dl.sample(mlp, proc, (2, 2), "ddim", 2, cond=cond, guidance=2.0, noise=z))
    with pytest.raises(ValueError, match=r"num_classes must be None \(unconditional\) or an integer >= 1"):
        dl.models.MLPDenoiser(2, num_classes=0)


@pytest.mark.parametrize("weighting", ["min_snr_-5", "min_snr_0", "min_snr_nan"])
def test_min_snr_gamma_must_be_positive(proc, weighting):
    from difflab.training.loss import DiffusionLoss

    with pytest.raises(ValueError, match=rf"weighting '{weighting}': Min-SNR's gamma must be > 0"):
        proc.training_loss(dl.models.MLPDenoiser(2, width=16, depth=1), torch.zeros(2, 2), weighting=weighting)
    with pytest.raises(ValueError, match="gamma must be > 0"):  # when the trainer builds its loss
        DiffusionLoss(proc, weighting)
    t = torch.tensor([0, 99])  # a gamma below 1 is valid: eps weights min(SNR, 0.5) / SNR
    snr = proc.snr(t)
    assert proc.prediction == "eps"
    torch.testing.assert_close(proc.loss_weight(t, "min_snr_0.5"), (snr.clamp(max=0.5) / snr).float())
    assert (proc.loss_weight(t, "min_snr_0.5") > 0).all()


def test_editing_refuses_images_outside_minus_one_one(proc):
    from difflab import editing as E

    model = dl.models.GaussianDenoiser(proc, torch.zeros(16), 0.5)  # images [B, 1, 4, 4]
    pixels = torch.arange(32.0).reshape(2, 1, 4, 4) * 8  # 0..248: unscaled 0..255 pixels
    msg = r"image must be scaled to \[-1, 1\], got values in \[0, 248\]; scale 0\.\.255 pixels with x / 127\.5 - 1"
    with pytest.raises(ValueError, match=msg):
        E.img2img(model, proc, pixels, 0.5, steps=3)
    with pytest.raises(ValueError, match=msg):
        E.inpaint(model, proc, pixels, torch.zeros(4, 4), steps=3)
    with pytest.raises(ValueError, match=msg):
        E.reconstruct(model, proc, pixels, steps=3)
    with pytest.raises(ValueError, match=r"a must be scaled to \[-1, 1\]"):
        E.interpolate(model, proc, pixels[0], pixels[1], frames=2, steps=3)
    sr = E.LowResConditioned(base="unet_tiny", scale=2, image_channels=1)
    with pytest.raises(ValueError, match=r"lowres must be scaled to \[-1, 1\]"):
        E.upscale(sr, proc, pixels)
    scaled = pixels / 127.5 - 1
    assert E.img2img(model, proc, scaled * (1 + 5e-4), 0.5, steps=3).shape == pixels.shape  # rounding tolerated
    # vectors [B, D] are data in the model's own scale; latents are not images
    assert E.img2img(model, proc, 3 * torch.ones(2, 16), 0.5, steps=3).shape == (2, 16)
    z = 3 * torch.randn(2, 1, 4, 4)
    assert E.interpolate(model, proc, z[0], z[1], frames=2, steps=3, latents=True).shape == (2, 1, 4, 4)
    # float64 images with a float32 network: cast to the network's dtype
    mlp = dl.models.MLPDenoiser(2, width=16, depth=1)
    x = torch.rand(3, 2) * 2 - 1
    assert torch.equal(E.img2img(mlp, proc, x.double(), 0.5, steps=3, noise=x), E.img2img(mlp, proc, x, 0.5, steps=3, noise=x))
    assert E.inpaint(mlp, proc, x.double(), torch.tensor([0.0, 1.0]), steps=3).dtype == torch.float32


def test_numpy_scalars_are_numbers(proc, model):
    from difflab import editing as E

    z = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    ref = dl.sample(model, proc, (2, 2), "ddim", 3, eta=0.5, noise=z, generator=torch.Generator().manual_seed(1))
    got = dl.sample(model, proc, (np.int64(2), np.int32(2)), "ddim", np.int64(3), eta=np.float32(0.5), noise=z,
                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, ref)
    assert torch.equal(dl.sample(model, proc, (2, 2), "euler", 3, noise=z, s_churn=np.float64(0.0)),
                       dl.sample(model, proc, (2, 2), "euler", 3, noise=z))
    assert torch.equal(dl.sample(model, proc, (2, 2), "ddim", 3, noise=z, clip_x0=np.float32(0.5)),
                       dl.sample(model, proc, (2, 2), "ddim", 3, noise=z, clip_x0=0.5))
    x = torch.zeros(2, 2)
    assert torch.equal(E.img2img(model, proc, x, np.float32(0.5), "ddim", np.int64(4), noise=z),
                       E.img2img(model, proc, x, 0.5, "ddim", 4, noise=z))
    mask = torch.tensor([0.0, 1.0])
    assert torch.equal(E.inpaint(model, proc, x, mask, "ddim", np.int64(4), resample=np.int64(2),
                                 jump_length=np.int64(1), noise=z, generator=torch.Generator().manual_seed(0)),
                       E.inpaint(model, proc, x, mask, "ddim", 4, resample=2, jump_length=1, noise=z,
                                 generator=torch.Generator().manual_seed(0)))
    assert E.interpolate(model, proc, z[0], z[1], frames=np.int64(3), steps=np.int64(3), latents=True).shape == (3, 2)
    assert E.box_mask((np.int64(4), 4), 0, 0, 2, 2).sum() == 4
    assert dl.samplers.karras_sigmas(np.int64(3), 0.1, 10.0).shape == (3,)
    with pytest.raises(TypeError, match="eta must be a number in \\[0, 1\\].*got str"):
        dl.sample(model, proc, (2, 2), "ddim", 3, eta="0.5")


def test_minor_type_and_value_errors(proc, model):
    from difflab import editing as E

    with pytest.raises(ValueError, match=r"sigmas must be finite noise levels"):
        dl.sample(model, proc, (2, 2), sigmas=torch.tensor([float("nan"), 1.0, 0.0]))
    with pytest.raises(TypeError, match="clip_x0 must be a number.*got str '1'"):
        dl.sample(model, proc, (2, 2), "ddim", 2, clip_x0="1")
    with pytest.raises(TypeError, match="guidance must be a number"):
        dl.sample(model, proc, (2, 2), "ddim", 2, guidance="3")
    with pytest.raises(TypeError, match="s_noise must be a number, got str"):
        dl.sample(model, proc, (2, 2), "euler", 2, s_noise="a")
    for shape in ("22", (2.5, 2), (2, True)):
        with pytest.raises(TypeError, match="shape must be a sequence of ints like"):
            dl.sample(model, proc, shape)
    with pytest.raises(ValueError, match=r"size must be \(height, width\), two integers, got '88'"):
        E.box_mask("88", 0, 0, 1, 1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        dl.sample(model, proc, (2, 2), "ddim", 2, generator=0)
    with pytest.raises(TypeError, match="model must be a callable"):
        dl.sample("mlp", proc, (2, 2), "ddim", 2)


def test_non_finite_or_out_of_range_timesteps_are_refused_everywhere(proc):
    """A NaN float t passed every comparison and became an index of about -9.2e18; loss_weight,
    snr and sigma_of did not check t at all (an integer -1 read the last step)."""
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="t must be finite"):
        proc.q_sample(x0, torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError, match=r"t must lie in 0 \.\. 99"):
        proc.loss_weight(torch.tensor([150]), "min_snr")
    with pytest.raises(ValueError, match=r"t must lie in 0 \.\. 99"):
        proc.sigma_of(torch.tensor([-1]))
    with pytest.raises(ValueError, match="t must be finite"):
        proc.snr(torch.tensor([float("nan")]))
    assert torch.equal(proc.sigma_of(torch.tensor([99])), proc.sigmas[-1:])  # in range: unchanged


@pytest.mark.parametrize("make, match", [
    (lambda: dl.schedules.cosine(5, s=float("nan")), "cosine offset s must be finite"),
    (lambda: dl.schedules.cosine(5, s=float("inf")), "cosine offset s must be finite"),
    (lambda: dl.schedules.sqrt(5, s=2.0), r"sqrt schedule offset s must lie in \(0, 1\)"),
    (lambda: dl.schedules.sqrt(5, s=float("nan")), r"sqrt schedule offset s must lie in \(0, 1\)"),
    (lambda: dl.schedules.from_alpha_bar(lambda u: float("nan"), 5), "alpha_bar.u. must be finite"),
])
def test_schedule_parameters_that_would_give_a_useless_schedule_are_refused(make, match):
    """cosine(s=nan) and sqrt(s=2) gave betas of max_beta at every step, without an error."""
    with pytest.raises(ValueError, match=match):
        make()


def test_the_bound_refuses_non_finite_data(proc):
    model = dl.models.MLPDenoiser(2, width=16, depth=1)
    x0 = torch.zeros(2, 2)
    x0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x0 must be finite"):
        proc.vlb_bits_per_dim(model, x0)


@pytest.mark.parametrize("p", [-0.5, 1.5, float("nan")])
def test_cond_drop_prob_must_be_a_probability(proc, p):
    model = dl.models.MLPDenoiser(2, width=16, depth=1, num_classes=3)
    with pytest.raises(ValueError, match=r"cond_drop_prob must be a probability in \[0, 1\]"):
        proc.training_loss(model, torch.zeros(2, 2), torch.tensor([0, 1]), cond_drop_prob=p)


def test_a_one_step_process_has_a_finite_clipped_posterior_log_variance():
    """No beta~_1 to clip at: beta_0 instead (it was an empty table, an IndexError in q_posterior)."""
    one = dl.GaussianDiffusion(dl.schedules.linear(1))
    x0 = torch.ones(2, 3)
    mean, var, log_var = one.q_posterior(x0, x0, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(log_var, torch.full_like(x0, math.log(float(one.betas[0]))))


def test_sampler_options_that_would_be_ignored_or_give_nan_are_refused(proc):
    model = dl.models.MLPDenoiser(2, width=16, depth=1)
    with pytest.raises(ValueError, match="s_noise must be finite"):
        dl.sample(model, proc, (2, 2), "euler", 3, s_churn=1.0, s_noise=float("inf"))
    with pytest.raises(ValueError, match="spacing and timesteps each set the noise levels"):
        dl.sample(model, proc, (2, 2), "ddim", 3, spacing="leading", timesteps=torch.tensor([90, 50, 10]))
    with pytest.raises(ValueError, match="timesteps and sigmas each set the noise levels"):
        dl.sample(model, proc, (2, 2), "ddim", 3, timesteps=torch.tensor([90, 50, 10]),
                  sigmas=proc.sigmas[[90, 50, 10]])
    from difflab.samplers.timesteps import timesteps

    with pytest.raises(TypeError, match="steps_offset must be an integer"):
        timesteps(100, 10, "leading", steps_offset=0.5)
    with pytest.raises(TypeError, match="T must be an integer"):
        timesteps(10.5, 5)


def test_ddim_inversion_refuses_eta():
    from difflab.samplers.ddim import sample_ddim

    with pytest.raises(ValueError, match="inversion .an increasing grid. cannot undo: use eta = 0"):
        sample_ddim(lambda x, s: x, torch.zeros(2, 2), torch.tensor([0.1, 0.5, 1.0]), eta=0.5)


def test_classifier_labels_are_checked_and_count_every_class():
    """accuracy() broadcast labels [N, 1] (an accuracy of 50 from 0..1); the class count came from
    the training labels alone (a subset lacking class 9 made a 9-class network); labels past
    num_classes failed inside torch's cross entropy."""
    from difflab.evaluation.classifier import accuracy, train_classifier

    x = torch.randn(12, 1, 8, 8)
    y = torch.arange(12) % 3
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(ValueError, match=r"labels \[N\] with N = 12.*shape \(12, 1\)"):
        accuracy(net, x, y[:, None])
    model, _ = train_classifier(x, torch.zeros(12, dtype=torch.long), test_images=x, test_labels=y, epochs=1,
                                device="cpu")
    assert model(x).shape == (12, 3)  # the test labels' classes count too
    with pytest.raises(ValueError, match=r"labels must lie in 0 \.\. num_classes - 1 = 1, got values in \[0, 2\]"):
        train_classifier(x, y, num_classes=2, epochs=1, device="cpu")
    with pytest.raises(ValueError, match=r"test_labels must have shape \[12\]"):
        train_classifier(x, y, test_images=x, test_labels=y[:, None], epochs=1, device="cpu")


def test_speed_options_that_would_be_ignored_are_refused():
    """An accelerated model accelerated again would ignore one set of options; bf16 autocast
    leaves a float64 network as it is; a list as precision raised 'unhashable type'; dl.sample's
    old speed keywords name the call that replaced them."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    net = dl.models.MLPDenoiser(2, width=16, depth=1)
    wrapped = dl.accel.accelerate(net, precision="bf16")
    for options in ({"precision": "bf16"}, {"precision": "fp16"}, {}):
        with pytest.raises(ValueError, match=r"already accelerated \(precision=bf16.*pass its \.module"):
            dl.accel.accelerate(wrapped, **options)
    with pytest.raises(ValueError, match="this network is float64"):
        dl.accel.accelerate(dl.models.MLPDenoiser(2, width=16, depth=1).double(), precision="bf16")
    with pytest.raises(ValueError, match=r"precision must be one of None, 'fp32', 'bf16', 'fp16', got \['bf16'\]"):
        dl.accel.accelerate(net, precision=["bf16"])
    with pytest.raises(TypeError, match=r"no longer takes speed options \(precision='fp16'\).*dl\.accel\.accelerate"):
        dl.sample(wrapped, proc, (2, 2), "ddim", 2, precision="fp16")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_evals": 0}, ValueError, "max_evals must be a positive integer"),
    ({"max_evals": "10"}, ValueError, "max_evals must be a positive integer"),
    ({"generator": 3}, TypeError, "generator must be a torch.Generator"),
])
def test_optimize_sigmas_checks_its_budget_and_generator_first(kwargs, error, match, monkeypatch):
    """max_evals=0 ended in scipy's 'Too many function calls', and '10' or generator=3 in a
    TypeError or AttributeError -- after the reference run had been paid for."""
    import difflab.samplers as S

    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    monkeypatch.setattr(S, "sample", lambda *a, **k: pytest.fail("sampled before checking the arguments"))
    with pytest.raises(error, match=match):
        dl.samplers.optimize_sigmas(dl.models.MLPDenoiser(2, width=16, depth=1), proc, (4, 2), 3, "ddim", **kwargs)


# --------------------------------------------- silent acceptances and misleading messages (issue 29)
def test_training_loss_refuses_images_far_off_the_scale(proc):
    """0..255 pixels trained silently (a model of the wrong data); the rule of the editing
    functions (difflab.validation.check_image_range), with room for standardised data."""
    net = dl.models.UNet(in_channels=1, channels=8, channel_mult=(1,), num_res_blocks=1, norm_groups=4,
                         attention_levels=(), image_size=4)
    pixels = torch.arange(32.0).reshape(2, 1, 4, 4) * 8  # 0..248
    with pytest.raises(ValueError, match=r"x0 \(image-shaped data\) must be scaled to \[-1, 1\].*got values in "
                                         r"\[0, 248\]; scale 0\.\.255 pixels with x / 127\.5 - 1"):
        proc.training_loss(net, pixels)
    assert torch.isfinite(proc.training_loss(net, pixels / 127.5 - 1))
    standardised = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2.5  # within +-10
    assert torch.isfinite(proc.training_loss(net, standardised))
    # vectors [B, D] are data in the model's own scale (the 2D toys): not range checked
    assert torch.isfinite(proc.training_loss(dl.models.MLPDenoiser(2, width=16, depth=1), 100 * torch.ones(4, 2)))


def test_nan_or_inf_noise_is_refused_by_sample_and_the_editing_functions(proc):
    """NaN noise gave NaN samples (a grey grid) and no error."""
    from difflab import editing as E

    model = dl.models.GaussianDenoiser(proc, torch.zeros(16), 0.5)  # images [B, 1, 4, 4]
    image = torch.zeros(2, 1, 4, 4)
    for bad in (float("nan"), float("inf"), -float("inf")):
        noise = torch.randn(2, 1, 4, 4)
        noise[1, 0, 2, 3] = bad
        with pytest.raises(ValueError, match=r"noise contains 1 NaN/inf value; use standard normal noise"):
            dl.sample(model, proc, (2, 1, 4, 4), "ddim", 3, noise=noise)
        with pytest.raises(ValueError, match="noise contains 1 NaN/inf value"):
            E.img2img(model, proc, image, 0.5, steps=3, noise=noise)
        with pytest.raises(ValueError, match="noise contains 1 NaN/inf value"):
            E.inpaint(model, proc, image, E.half_mask((4, 4), "top"), steps=3, noise=noise)
        with pytest.raises(ValueError, match="a contains NaN or inf"):
            E.interpolate(model, proc, noise[1], noise[0], frames=2, steps=3, latents=True)
    sr = E.LowResConditioned(base="unet_tiny", scale=2, image_channels=1)
    noise = torch.randn(2, 1, 8, 8)
    noise[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="noise contains 1 NaN/inf value"):
        E.upscale(sr, proc, torch.zeros(2, 1, 4, 4), steps=2, noise=noise)


def test_labels_given_as_text_are_named(proc):
    """run.sample(labels='3') said "new(): invalid data type 'str'"."""
    from difflab.training.generate import generate

    net = dl.models.MLPDenoiser(2, width=16, depth=1, num_classes=4)
    with pytest.raises(TypeError, match=r"labels must be an int, a sequence of ints or a long tensor, got str '3' "
                                        r"\(the class index as a number: labels=3\)"):
        generate(net, proc, 2, (2,), labels="3", steps=2)
    with pytest.raises(TypeError, match=r"got \['a', 'b'\]"):
        generate(net, proc, 2, (2,), labels=["a", "b"], steps=2)
    assert generate(net, proc, 2, (2,), labels=np.int64(3), steps=2, seed=0).shape == (2, 2)


def test_a_mask_png_with_no_white_pixel_is_refused(tmp_path):
    """It filled nothing and the edit returned the input, while an empty box is refused."""
    from PIL import Image

    from difflab import editing as E

    Image.fromarray(np.full((8, 8), 127, np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match=r"mask '.*grey\.png' has no white pixel \(none >= 128 of 255, "
                                         r"brightest 127\)"):
        E.parse_mask(str(tmp_path / "grey.png"), (8, 8))
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "white.png")
    assert E.load_mask(tmp_path / "white.png").eq(1).all()


class _Payload:
    """A pickle that runs code when loaded without weights_only."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins.PWNED = True",))


def test_inception_weights_are_loaded_with_weights_only(tmp_path, monkeypatch):
    """The FID weights went to torch-fidelity's torch.load without weights_only: a crafted file ran
    code. They are read with weights_only=True, and the network gets those tensors only."""
    import builtins

    import torchmetrics.image.fid as tm_fid
    import torchmetrics.utilities.imports as imports

    from difflab.evaluation import fid

    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _Payload()}, evil)
    handed = []

    class FakeInception(torch.nn.Module):  # stands in for torch-fidelity's network (not installed in CI)
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            handed.append(torch.load(feature_extractor_weights_path))  # what torch-fidelity does with it

    monkeypatch.setattr(imports, "_TORCH_FIDELITY_AVAILABLE", True)
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", FakeInception)
    with pytest.raises(ValueError, match=r"inception weights '.*evil\.pth' cannot be loaded safely \(weights_only"):
        fid.inception_features(evil)
    assert not hasattr(builtins, "PWNED") and handed == []
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="hold no state dict"):
        fid.inception_features(tmp_path / "list.pth")
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(3.0)}, good)
    assert fid.inception_features(good).num_features == 2048
    assert list(handed[0]) == ["w"] and torch.equal(handed[0]["w"], torch.arange(3.0))
