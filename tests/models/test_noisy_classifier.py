"""Noise-aware classifiers (difflab.models.noisy_classifier): the exact mixture posterior against
Bayes' rule by hand (scipy's densities), the trained network's shapes, time inputs, gradients and refusals."""

import math

import pytest
import torch
from networks import perturb

import difflab as dl

MEANS = [[0.0, 0.0], [3.0, -1.0], [-2.0, 2.0]]
STDS = [[0.5, 1.0], [0.3, 0.3], [1.0, 0.7]]
WEIGHTS = [0.6, 0.3, 0.1]


@pytest.mark.parametrize("proc", [dl.GaussianDiffusion(dl.schedules.cosine(1000)), dl.processes.EDM(),
                                  dl.processes.FlowMatching()], ids=["ddpm", "edm", "flow"])
def test_mixture_posterior_against_bayes_by_hand(proc):
    """p(y = k | x_t) = w_k N(x_t; a m_k, a^2 s_k^2 + sigma^2) / sum_j (...), with a and sigma from
    the process at the classifier's time input, computed with scipy's normal densities."""
    from scipy.stats import multivariate_normal

    mix = dl.models.GaussianMixtureDenoiser(proc, MEANS, torch.tensor(STDS), weights=WEIGHTS, conditional=True)
    clf = dl.models.MixtureClassifier(mix)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for sigma_ve in (0.05, 0.7, 4.0):
        t = proc.timestep(sigma_ve, 6)
        s_ve = float(proc.sigma_of_timestep(t[:1]))  # the level the time input stands for (a grid step's, for DDPM)
        a = float(proc.scale(s_ve))
        got = clf(x, t).exp()
        dens = torch.tensor([[w * multivariate_normal(a * torch.tensor(m).double().numpy(),
                                                      (a * a * torch.tensor(s).double() ** 2 + (a * s_ve) ** 2).numpy()
                                                      ).pdf(xi.numpy()) for m, s, w in zip(MEANS, STDS, WEIGHTS)]
                             for xi in x], dtype=torch.float64)
        torch.testing.assert_close(got, dens / dens.sum(1, keepdim=True), rtol=1e-9, atol=1e-12)
    assert clf.num_classes == 3 and clf.process_signature == proc.network_signature()


def test_mixture_classifier_refuses_other_things():
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    with pytest.raises(TypeError, match="GaussianMixtureDenoiser"):
        dl.models.MixtureClassifier(lambda x, t: x)
    clf = dl.models.MixtureClassifier(dl.models.GaussianMixtureDenoiser(proc, MEANS))
    with pytest.raises(ValueError, match="D = 2 dimensions"):
        clf(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8), (3, 16, 12)])
def test_noisy_classifier_shapes_times_and_gradients(shape):
    """Logits [B, K] for flat data and images, for long (grid) and float (between-grid, continuous)
    time inputs alike; the gradient with respect to x_t (what guidance uses) reaches every input
    value; different times give different logits (the time embedding conditions the network; the
    U-Net ResBlocks' zero-initialised layers are perturbed so that it reaches the output)."""
    torch.manual_seed(0)
    net = perturb(dl.models.NoisyClassifier(shape, 10, width=16, depth=1, norm_groups=4, heads=2), 0.2)
    x = torch.randn(4, *shape, requires_grad=True)
    out_long = net(x, torch.tensor([0, 10, 500, 999]))
    out_float = net(x, torch.tensor([0.0, 10.0, 500.0, 999.0]))
    assert out_long.shape == (4, 10)
    torch.testing.assert_close(out_long, out_float)
    assert not torch.allclose(net(x, torch.full((4,), 3)), net(x, torch.full((4,), 900)))
    (grad,) = torch.autograd.grad(out_long.log_softmax(1)[:, 3].sum(), x)
    assert grad.shape == x.shape and (grad.flatten(1).abs() > 0).float().mean() > 0.9
    assert net.data_shape == tuple(shape) and net.num_classes == 10 and net.process_signature is None
    again = dl.models.NoisyClassifier(**net.config)  # config rebuilds the same architecture
    again.load_state_dict(net.state_dict())
    torch.testing.assert_close(again(x, torch.arange(4)), net(x, torch.arange(4)))


def test_noisy_classifier_refusals():
    net = dl.models.NoisyClassifier((64,), 10, width=8, depth=1)
    with pytest.raises(ValueError, match=r"states of shape \[B, 64\].*\(1, 8, 8\)|trained for data of shape \(64,\)"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="data_shape"):
        dl.models.NoisyClassifier((8, 8), 10)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        dl.models.NoisyClassifier((64,), 1)
    with pytest.raises(ValueError, match="halved"):
        dl.models.NoisyClassifier((1, 7, 7), 10, mult=(1, 2))
    with pytest.raises(ValueError, match="norm_groups"):
        dl.models.NoisyClassifier((1, 8, 8), 10, width=12, norm_groups=8)
    with pytest.raises(ValueError, match="t must be a tensor of shape"):
        net(torch.zeros(2, 64), torch.zeros(3))


def test_attention_pool_weighs_positions():
    """The pooled feature depends on where a feature lies (learnt positions), unlike a mean."""
    torch.manual_seed(0)
    pool = dl.models.AttentionPool(8, 4, 2)
    h = torch.zeros(1, 8, 2, 2)
    h1, h2 = h.clone(), h.clone()
    h1[0, :, 0, 0] = 1.0
    h2[0, :, 1, 1] = 1.0
    assert h1.mean((2, 3)).equal(h2.mean((2, 3)))
    assert not torch.allclose(pool(h1), pool(h2))
    assert math.isfinite(float(pool(h1).detach().sum()))


@pytest.mark.parametrize("proc", [dl.GaussianDiffusion(dl.schedules.cosine(1000)), dl.processes.EDM()],
                         ids=["ddpm", "edm"])
def test_input_scaling_is_the_posterior_variable(proc):
    """Built with its process, the classifier reads u = x_t / (a (1 + sigma^2)): sqrt(abar_t) x_t on
    the DDPM chain (grid and between-grid times alike), x / (1 + sigma^2) under EDM (a = 1); so the
    gradient with respect to x_t at the top of the cosine chain is ~sqrt(abar_T) times the
    network's, and guidance's shift sigma^2 grad_x stays bounded there."""
    net = perturb(dl.models.NoisyClassifier((3,), 4, width=8, depth=1, proc=proc), 0.2)
    for sigma in (0.01, 1.0, 50.0):
        t = proc.timestep(sigma, 2)
        s = float(proc.sigma_of_timestep(t[:1]))
        want = proc.scale(s) if proc.discrete else 1.0 / (1.0 + s * s)
        torch.testing.assert_close(net.input_scale(t).flatten(), torch.full((2,), want, dtype=torch.float64))
    if proc.discrete:
        abar = proc.alphas_cumprod
        torch.testing.assert_close(net.input_scale(torch.tensor([0, 999, 500])).flatten(),
                                   abar[[0, 999, 500]].sqrt().double())
        x = torch.randn(2, 3, requires_grad=True)
        top = torch.full((2,), 999)
        (g,) = torch.autograd.grad(net(x, top).log_softmax(1)[:, 0].sum(), x)
        assert g.abs().max() < 1e-3  # sqrt(abar_999) ~ 5e-5 times an O(1) gradient
    assert net.process_signature == proc.network_signature()
    # scale_input=False (the ablation) reads x_t as is: the same as the classifier without a process
    plain = dl.models.NoisyClassifier((3,), 4, width=8, depth=1, proc=proc, scale_input=False)
    bare = dl.models.NoisyClassifier(**dict(plain.config, scale_input=True))
    bare.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3), proc.timestep(5.0, 2)
    assert torch.equal(plain(x, t), bare(x, t)) and plain.process_signature == proc.network_signature()
    with pytest.raises(TypeError, match="proc must be a process"):
        dl.models.NoisyClassifier((3,), 4, proc="ddpm")
