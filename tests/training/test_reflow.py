"""Reflow (training/reflow.py): the straightness estimator against closed forms, the pairs, the
loss on fixed pairs, and the must-show on 2-D data: the 2-rectified flow is at least twice as
straight as the 1-rectified flow and its 1-step samples are far closer to the data."""

import copy
import math

import pytest
import torch

import difflab as dl
from difflab.evaluation import frechet_distance
from difflab.processes import FlowMatching
from difflab.training.loss import DiffusionLoss, TrainBatch
from difflab.training.reflow import ReflowLoss, generate_pairs, straightness

MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


class PointFlow(torch.nn.Module):
    """The exact velocity of FlowMatching for data that is the single point mu: x0 = mu, so
    eps = (x_t - (1 - t) mu) / t and u = eps - mu = (x_t - mu) / t. Its paths x_t = mu + t c are
    straight lines run at constant speed c: straightness 0."""

    def forward(self, x, timestep):
        t = (timestep.double() / FlowMatching.timestep_scale).view(-1, 1)
        return (x - MU) / t


def gaussian_straightness(proc, noise, s):
    """S of the exact flow of data N(mu, s^2 I) on [0, t_0], in closed form.

    Its ODE paths are x_t = (1 - t) mu + r(t) z with r(t) = sqrt((1 - t)^2 s^2 + t^2) (the velocity
    E[eps - x0 | x_t] is -mu + r'/r (x_t - (1 - t) mu)), so with Delta = (x_{t0} - x_0) / t0
    S = ||z||^2 ((1/t0) int_0^t0 r'^2 dt - ((r(t0) - r(0)) / t0)^2), the integral by a 10^5-point
    midpoint rule. z is set by where sampling starts: x_{t0} = (1 - t0) (sqrt(1 + sigma0^2) noise)."""
    t0 = proc.t_max
    sigma0 = t0 / (1 - t0)

    def r(t):
        return math.sqrt((1 - t) ** 2 * s * s + t * t)

    start = noise * math.sqrt(1 + sigma0**2) * (1 - t0)
    z = (start - (1 - t0) * MU) / r(t0)
    k = 100_000
    t = (torch.arange(k, dtype=torch.float64) + 0.5) / k * t0
    r_dot = (t - (1 - t) * s * s) / torch.sqrt((1 - t) ** 2 * s * s + t * t)
    return float((z**2).sum(1).mean()) * (float((r_dot**2).mean()) - ((r(t0) - r(0)) / t0) ** 2)


def test_straightness_of_a_straight_flow_is_zero():
    proc = FlowMatching()
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert straightness(PointFlow(), proc, noise, steps=7) < 1e-12  # rounding: a Gaussian's flow gives 0.65


def test_straightness_converges_to_the_closed_form_on_gaussian_data_at_first_order():
    proc = FlowMatching()
    model = dl.models.GaussianDenoiser(proc, MU, 0.5).double()
    noise = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = gaussian_straightness(proc, noise, 0.5)
    errors = [abs(straightness(model, proc, noise, steps=n) - exact) for n in (25, 50, 100)]
    assert errors[-1] < 0.03 * exact
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.8 < q < 2.2 for q in ratios), (exact, errors, ratios)


def test_straightness_is_the_mean_over_batches_and_label_aware():
    proc = FlowMatching()
    means = torch.tensor([[3.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    model = dl.models.GaussianMixtureDenoiser(proc, means, [0.2, 1.0], conditional=True).double()
    noise = torch.randn(40, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.arange(40) % 2
    whole = straightness(model, proc, noise, 10, labels)
    assert straightness(model, proc, noise, 10, labels, batch_size=7) == pytest.approx(whole, rel=1e-12)
    narrow = straightness(model, proc, noise, 10, 0)  # std 0.2: nearly the point mass, nearly straight
    wide = straightness(model, proc, noise, 10, 1)
    assert narrow < wide


def test_pairs_are_the_flows_samples_of_their_noise():
    proc = FlowMatching()
    means = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    model = dl.models.GaussianMixtureDenoiser(proc, means, 0.3, conditional=True)
    labels = torch.arange(30) % 2
    noise, samples = generate_pairs(model, proc, 30, (2,), steps=12, cond=labels,
                                    generator=torch.Generator().manual_seed(0), batch_size=8)
    assert noise.shape == samples.shape == (30, 2)
    assert torch.equal(noise, torch.randn(30, 2, generator=torch.Generator().manual_seed(0)))
    whole = dl.sample(model, proc, (30, 2), "euler", 12, cond=labels, noise=noise, spacing="uniform")
    torch.testing.assert_close(samples, whole, rtol=0, atol=1e-6)
    assert ((samples[:, 0] > 0) == (labels == 0)).all()  # each sample from its label's component


def test_pairs_of_a_point_mass_flow_land_on_the_point():
    _, samples = generate_pairs(PointFlow().double(), FlowMatching(), 5, (3,), steps=4,
                                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, MU.float().expand(5, 3), rtol=0, atol=1e-6)


def _batch(x0, index, t, fresh_noise, step=0):
    return TrainBatch(x0=x0, cond=None, labels=None, t=t, noise=fresh_noise, u=torch.ones(len(x0)), step=step,
                      index=index)


def test_reflow_loss_regresses_the_pairs_velocity():
    proc = FlowMatching()
    g = torch.Generator().manual_seed(0)
    noise, samples = torch.randn(10, 2, generator=g), torch.randn(10, 2, generator=g)
    model = dl.models.build("mlp", dim=2, width=16, depth=1)
    torch.nn.init.normal_(model.out[-1].weight, generator=g)
    index, t = torch.tensor([3, 7, 0]), torch.rand(3, generator=g)
    batch = _batch(samples[index], index, t, torch.randn(3, 2, generator=g))
    loss = ReflowLoss(proc, noise)(model, batch)
    x_t = (1 - t[:, None]) * samples[index] + t[:, None] * noise[index]
    target = noise[index] - samples[index]
    expected = ((model(x_t, 1000 * t) - target) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, DiffusionLoss(proc)(model, batch))  # not the batch's fresh noise


def test_reflow_loss_refusals():
    noise = torch.randn(4, 2)
    with pytest.raises(ValueError, match="coupling='independent'"):
        ReflowLoss(FlowMatching(coupling="ot"), noise)
    with pytest.raises(TypeError, match="needs a flow"):
        ReflowLoss(dl.processes.VPSDE(), noise)
    loss = ReflowLoss(FlowMatching(), noise)
    model = dl.models.build("mlp", dim=2, width=16, depth=1)
    with pytest.raises(ValueError, match="4 noise draws but the batch has dataset index 5"):
        loss(model, _batch(torch.zeros(2, 2), torch.tensor([0, 5]), torch.rand(2), torch.zeros(2, 2)))
    with pytest.raises(ValueError, match=r"noise has shape \(2,\) per sample, the data \(3,\)"):
        loss(model, _batch(torch.zeros(2, 3), torch.tensor([0, 1]), torch.rand(2), torch.zeros(2, 3)))
    with pytest.raises(TypeError, match="needs a flow"):
        straightness(model, dl.processes.EDM(), noise)
    with pytest.raises(ValueError, match="takes no 'spacing'"):
        straightness(model, FlowMatching(), noise, spacing="karras")


def fit(model, proc, loss_fn, x, steps, seed, batch_size=128, lr=3e-3):
    """Adam with linear decay on ``loss_fn`` over batches of x drawn with replacement."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    for step in range(steps):
        index = torch.randint(0, len(x), (batch_size,), generator=g)
        t = proc.training_times(batch_size, g)
        loss = loss_fn(model, _batch(x[index], index, t, torch.randn(batch_size, x.shape[1], generator=g), step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return model.eval()


def test_two_rectified_flow_is_straighter_and_better_in_one_step():
    """The issue's must-show on 2-D data (8 Gaussians): S(2-RF) <= S(1-RF) / 2, and the 1-step
    Euler samples of the 2-RF far closer to held-out data (Frechet distance) than the 1-RF's."""
    proc, seed = FlowMatching(), 0
    torch.manual_seed(seed)
    data = dl.data.toy2d.make("8gaussians", 4000, torch.Generator().manual_seed(seed))
    held_out = dl.data.toy2d.make("8gaussians", 2000, torch.Generator().manual_seed(seed + 100))
    flow1 = fit(dl.models.build("mlp", dim=2, width=64, depth=2), proc, DiffusionLoss(proc), data, 300, seed)
    noise, samples = generate_pairs(flow1, proc, 1000, (2,), steps=20,
                                    generator=torch.Generator().manual_seed(seed + 1))
    flow2 = fit(copy.deepcopy(flow1).train(), proc, ReflowLoss(proc, noise), samples, 300, seed + 2)
    probe = torch.randn(1000, 2, generator=torch.Generator().manual_seed(seed + 3))
    s1, s2 = straightness(flow1, proc, probe, 20), straightness(flow2, proc, probe, 20)
    one_step = [dl.sample(f, proc, (2000, 2), "euler", 1, generator=torch.Generator().manual_seed(seed + 4))
                for f in (flow1, flow2)]
    fd1, fd2 = (frechet_distance(held_out, x) for x in one_step)
    assert s2 <= s1 / 2, (s1, s2)
    assert fd2 < fd1 / 10, (fd1, fd2)


def test_generate_pairs_refusals():
    model = dl.models.build("mlp", dim=2, width=16, depth=1)
    with pytest.raises(ValueError, match="one sample's shape"):
        generate_pairs(model, FlowMatching(), 4, 2)
    with pytest.raises(ValueError, match="n \\(the number of pairs\\) must be a positive integer"):
        generate_pairs(model, FlowMatching(), 0, (2,))
    with pytest.raises(TypeError, match="needs a flow"):
        generate_pairs(model, dl.processes.VESDE(), 4, (2,))
    with pytest.raises(ValueError, match="not class-conditional"):
        generate_pairs(model, FlowMatching(), 4, (2,), cond=1)
