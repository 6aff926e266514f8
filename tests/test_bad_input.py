"""Every entry point of the core rejects bad input with a message naming the argument and what is allowed."""

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
    with pytest.raises(ValueError, match=r"unknown timestep spacing 'uniform'.*trailing"):
        dl.sample(model, proc, (2, 2), steps=5, spacing="uniform")
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
    with pytest.raises(TypeError, match="proc must be a dl.GaussianDiffusion"):
        dl.sample(model, "linear", (3, 2))
    with pytest.raises(ValueError, match="MLPDenoiser\\(dim=2\\) takes x of shape"):
        dl.models.MLPDenoiser(2)(torch.zeros(3, 5), torch.zeros(3))
