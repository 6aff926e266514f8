"""Sample-set distances (difflab.evaluation.distances): sliced Wasserstein and MMD against exact values."""

import numpy as np
import pytest
import torch

import difflab as dl


def test_sliced_wasserstein_of_a_shift_is_exact():
    """Shifting a set by d moves every projection by <d, theta>: SW_2 = sqrt(mean_theta <d, theta>^2)."""
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    d = torch.tensor([0.3, -0.4])
    sw = dl.evaluation.sliced_wasserstein(x, x + d, n_projections=256, generator=torch.Generator().manual_seed(7))
    theta = torch.randn(2, 256, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    theta = theta / theta.norm(dim=0)
    expected = ((d.double() @ theta) ** 2).mean().sqrt().item()
    assert sw == pytest.approx(expected, rel=1e-6)
    # and in expectation over directions |d| / sqrt(dim) = 0.5 / sqrt(2)
    assert sw == pytest.approx(0.5 / 2**0.5, rel=0.1)
    assert dl.evaluation.sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_unequal_sizes_and_errors():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(1500, 2, generator=g)
    assert dl.evaluation.sliced_wasserstein(a, b, n_projections=128) < 0.08
    assert dl.evaluation.sliced_wasserstein(a, b + 1.0, n_projections=128) > 0.6
    with pytest.raises(ValueError, match="same dimension"):
        dl.evaluation.sliced_wasserstein(a, torch.zeros(10, 3))


def test_mmd_matches_direct_computation_and_detects_differences():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 2, generator=g), torch.randn(50, 2, generator=g) + 0.5
    hs = (0.5, 1.0)
    k = lambda a, b: sum(np.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for h in hs)
    X, Y = x.double().numpy(), y.double().numpy()
    kxx = sum(k(X[i], X[j]) for i in range(60) for j in range(60) if i != j) / (60 * 59)
    kyy = sum(k(Y[i], Y[j]) for i in range(50) for j in range(50) if i != j) / (50 * 49)
    kxy = sum(k(X[i], Y[j]) for i in range(60) for j in range(50)) / (60 * 50)
    assert dl.evaluation.mmd(x, y, hs) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
    a, b = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g)
    same = dl.evaluation.mmd(a, b)
    diff = dl.evaluation.mmd(a, b * 1.5)
    assert abs(same) < 0.01 < diff


def test_sliced_wasserstein_is_exact_for_sets_of_any_sizes():
    """Sets of different sizes were compared at interpolated quantiles: SW(x, [x, x]) read 0.031
    instead of 0, and 10 points against 1000 in 1-D gave 0.108 where W_1 is 0.244."""
    from scipy.stats import wasserstein_distance

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g)
    assert dl.evaluation.sliced_wasserstein(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-12)
    assert dl.evaluation.sliced_wasserstein(x, torch.cat([x, x, x])) == pytest.approx(0.0, abs=1e-12)
    for n, m in ((10, 1000), (100, 37), (37, 100)):
        a, b = torch.randn(n, 1, generator=g), torch.randn(m, 1, generator=g) + 0.3
        want = wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())  # one direction in 1-D: +-1
        assert dl.evaluation.sliced_wasserstein(a, b, n_projections=1, p=1) == pytest.approx(want, rel=1e-12)
    for bad, match in (({"p": 0.5}, "p must be a number >= 1"), ({"n_projections": 0}, "n_projections must be")):
        with pytest.raises(ValueError, match=match):
            dl.evaluation.sliced_wasserstein(x, x, **bad)
    for bandwidths in ((), (0.0,), (-1.0,)):
        with pytest.raises(ValueError, match="bandwidths must be one or more numbers > 0"):
            dl.evaluation.mmd(x, x, bandwidths)
    with pytest.raises(ValueError, match="labels must be integers"):
        dl.evaluation.coverage.mode_coverage(x, x, torch.rand(100))
