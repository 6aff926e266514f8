"""Improved precision/recall (Kynkaanniemi et al. 2019) and per-mode coverage on sets with known answers."""

import math

import pytest
import torch

import difflab as dl
from difflab.evaluation.coverage import mode_coverage
from difflab.evaluation.precision_recall import knn_radii, precision_recall


def _modes(n, modes, gen, std=0.05):
    """n points from equal-weight Gaussians at the given mode indices of 8 on a circle."""
    k = torch.tensor(modes)[torch.randint(0, len(modes), (n,), generator=gen)]
    angle = 2 * math.pi * k.double() / 8
    x = 2 * torch.stack([angle.cos(), angle.sin()], 1) + std * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return x, k


def test_identical_sets_have_precision_and_recall_one(gen):
    x = torch.randn(500, 5, generator=gen)
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}


def test_half_the_modes_gives_recall_one_half_and_full_precision(gen):
    real, _ = _modes(4000, range(8), gen)
    fake, _ = _modes(4000, [0, 1, 2, 3], gen)
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.97  # every sample sits on a real mode
    assert abs(pr["recall"] - 0.5) < 0.03  # ... but covers only half of the real data


def test_samples_off_the_manifold_lose_precision_not_recall(gen):
    real, _ = _modes(3000, range(8), gen)
    fake, _ = _modes(3000, range(8), gen)
    # replace a quarter of the samples by points far from every mode
    fake[:750] = 5 + torch.rand(750, 2, generator=gen, dtype=torch.float64)
    pr = precision_recall(real, fake)
    assert abs(pr["precision"] - 0.75) < 0.03
    assert pr["recall"] > 0.95


def test_disjoint_sets_score_zero(gen):
    a = torch.randn(300, 3, generator=gen)
    assert precision_recall(a, a + 100) == {"precision": 0.0, "recall": 0.0}


def test_knn_radii_against_brute_force(gen):
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    d = torch.cdist(x, x) + torch.diag(torch.full((50,), math.inf, dtype=torch.float64))
    torch.testing.assert_close(knn_radii(x, 3), d.sort(1).values[:, 2])


def test_mode_coverage_counts_dropped_modes(gen):
    ref, labels = _modes(4000, range(8), gen)
    full = mode_coverage(_modes(2000, range(8), gen)[0], ref, labels)
    assert full["covered"] == 8 and full["num_modes"] == 8 and full["on_manifold"] > 0.97
    for share, expected in zip(full["share"], full["expected"]):
        assert abs(share - expected) < 0.03
    half = mode_coverage(_modes(2000, [1, 3, 5], gen)[0], ref, labels)
    assert half["covered"] == 3
    assert all(half["share"][k] == 0 for k in (0, 2, 4, 6, 7))


def test_mode_coverage_on_a_labelled_toy_set(gen):
    ref, labels = dl.data.toy2d.make("8gaussians", 4000, gen, labels=True)
    samples, _ = dl.data.toy2d.make("8gaussians", 2000, gen, labels=True)
    cov = mode_coverage(samples, ref, labels)
    assert cov["covered"] == 8 and cov["on_manifold"] > 0.95


def test_bad_inputs_are_named(gen):
    x = torch.randn(10, 2, generator=gen)
    with pytest.raises(ValueError, match="same dimension"):
        precision_recall(x, torch.randn(10, 3, generator=gen))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x, x, k=10)
    with pytest.raises(ValueError, match="labels"):
        mode_coverage(x, x, torch.zeros(3, dtype=torch.long))
