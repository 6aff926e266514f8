"""Flow matching (difflab.processes.flow): the straight path, its time maps, the training-time
distributions (Kolmogorov-Smirnov tests against scipy's laws) and the minibatch optimal transport
coupling against brute force over all permutations."""

import itertools
import math

import pytest
import torch
from scipy import stats

from difflab.processes import FlowMatching, ot_coupling

F64 = torch.float64


def test_the_path_is_straight_and_sigma_is_t_over_one_minus_t(gen):
    proc = FlowMatching()
    t = torch.linspace(0.0, 1.0, 101, dtype=F64)
    a, s = proc.alpha_sigma(t)
    assert torch.equal(a, 1 - t) and torch.equal(s, t)  # defined at t = 1 too
    inner = t[1:-1]
    sigma = proc.sigma_of(inner)
    assert torch.allclose(sigma, inner / (1 - inner)) and (sigma.diff() > 0).all()
    assert torch.allclose(proc.t_of(sigma), inner, rtol=1e-12)
    assert torch.allclose(proc.scale(sigma), 1 - inner, rtol=1e-12) and proc.scale(3.0) == 0.25
    assert (proc.sigma_min, proc.sigma_max) == pytest.approx((1e-3 / (1 - 1e-3), 0.999 / 0.001))
    x0 = torch.randn(5, 3, dtype=F64, generator=gen)
    eps = torch.randn(5, 3, dtype=F64, generator=gen)
    tt = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    x_t = proc.q_sample(x0, tt, eps)
    assert torch.allclose(x_t, (1 - tt[:, None]) * x0 + tt[:, None] * eps)
    assert torch.allclose(proc.target(x0, eps, tt), eps - x0)
    # the velocity is d x_t / dt along the path, by finite differences
    h = 1e-6
    mid = torch.full((5,), 0.4, dtype=F64)
    fd = (proc.q_sample(x0, mid + h, eps) - proc.q_sample(x0, mid - h, eps)) / (2 * h)
    assert torch.allclose(fd, eps - x0, atol=1e-8)


def test_snr_and_network_time():
    proc = FlowMatching()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    assert torch.allclose(proc.snr(t), ((1 - t) / t) ** 2)
    assert torch.allclose(proc.timestep(float(proc.sigma_of(torch.tensor(0.25))), 2), torch.full((2,), 250.0))


def test_uniform_training_times():
    t = FlowMatching().training_times(20_000, torch.Generator().manual_seed(0))
    assert stats.kstest(t.double().numpy(), stats.uniform(0, 1).cdf).pvalue > 1e-3


@pytest.mark.parametrize("m, s", [(0.0, 1.0), (0.5, 0.6)])
def test_logit_normal_training_times(m, s):
    """t = sigmoid(m + s n), SD3's logit-normal (Esser et al. 2024): the CDF of t is
    Phi((logit t - m) / s), compared here by a KS test; and a wrong law is rejected."""
    proc = FlowMatching(time_sampling="logit_normal", logit_mean=m, logit_std=s)
    t = proc.training_times(20_000, torch.Generator().manual_seed(0)).double()
    assert 0 < float(t.min()) and float(t.max()) < 1

    def cdf(u):
        return stats.norm.cdf((torch.logit(torch.as_tensor(u, dtype=F64)).numpy() - m) / s)

    assert stats.kstest(t.numpy(), cdf).pvalue > 1e-3
    assert stats.kstest(t.numpy(), stats.uniform(0, 1).cdf).pvalue < 1e-6


def brute_force_ot(x0, noise):
    """The permutation minimising sum_i ||x0_i - noise_pi(i)||^2, by trying them all."""
    cost = torch.cdist(x0, noise) ** 2
    n = len(x0)
    best = min(itertools.permutations(range(n)), key=lambda p: float(cost[torch.arange(n), list(p)].sum()))
    return torch.tensor(best), float(cost[torch.arange(n), list(best)].sum())


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 6])
def test_ot_coupling_is_the_optimal_permutation(batch):
    gen = torch.Generator().manual_seed(batch)
    for _ in range(5):
        x0 = torch.randn(batch, 3, 2, dtype=F64, generator=gen) + 2.0
        noise = torch.randn(batch, 3, 2, dtype=F64, generator=gen)
        perm = ot_coupling(x0, noise)
        assert sorted(perm.tolist()) == list(range(batch))
        _, best_cost = brute_force_ot(x0.flatten(1), noise.flatten(1))
        cost = float(((x0 - noise[perm]) ** 2).sum())
        assert cost == pytest.approx(best_cost, rel=1e-12)


def test_the_ot_coupling_repairs_the_noise_and_keeps_the_data():
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6)
    a, b, c = FlowMatching(coupling="ot").couple(x0, noise, labels)
    assert torch.equal(a, x0) and torch.equal(c, labels)
    assert torch.equal(b, noise[ot_coupling(x0, noise)])
    assert ((a - b) ** 2).sum() <= ((x0 - noise) ** 2).sum()
    a, b, c = FlowMatching().couple(x0, noise, labels)
    assert torch.equal(b, noise)
    with pytest.raises(ValueError, match=r"same batch size, got 6 and 5"):
        ot_coupling(x0, noise[:5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"time_sampling": "lognormal"}, r"unknown time_sampling 'lognormal'; choose one of uniform, logit_normal"),
        ({"coupling": "sinkhorn"}, r"unknown coupling 'sinkhorn'; choose 'independent' \(I-CFM\) or 'ot'"),
        ({"logit_mean": math.inf}, r"logit_mean must be a finite number"),
        ({"logit_std": 0.0}, r"logit_std must be a finite number > 0"),
        ({"t_max": 1.0}, r"need 0 < t_min < t_max < 1"),
        ({"t_min": 0.0}, r"need 0 < t_min < t_max < 1"),
        ({"t_min": 0.5, "t_max": 0.4}, r"need 0 < t_min < t_max < 1"),
        ({"prediction": "score"}, r"unknown prediction type 'score' for FlowMatching"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowMatching(**kwargs)
