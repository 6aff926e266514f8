"""within_class_spread (evaluation/coverage.py): the spread of each class's samples around their mean."""

import pytest
import torch

from difflab.evaluation import within_class_spread


def test_the_spread_is_the_rms_distance_to_the_class_mean_averaged_over_classes():
    # class 0: two points 6 apart (each 3 from their mean); class 1: four corners of a 2 x 2 square
    # (each sqrt(2) from the centre); class 2 has one sample and is left out
    x = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0, 0], [2, 0], [0, 2], [2, 2], [9, 9]])
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    assert within_class_spread(x, labels) == pytest.approx((3.0 + 2 ** 0.5) / 2, rel=1e-12)
    # image-shaped samples are flattened: the same numbers as [n, 1, 1, 2]
    assert within_class_spread(x.view(7, 1, 1, 2), labels) == pytest.approx((3.0 + 2 ** 0.5) / 2, rel=1e-12)


def test_one_prototype_per_class_has_no_spread_and_noise_has_its_own():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4000) % 4
    prototypes = torch.randn(4, 16, generator=g)[labels]
    assert within_class_spread(prototypes, labels) == 0.0
    noisy = prototypes + 0.5 * torch.randn(4000, 16, generator=g)
    assert within_class_spread(noisy, labels) == pytest.approx(0.5 * 16 ** 0.5, rel=0.02)  # sqrt(E ||0.5 z||^2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="integer class labels"):
        within_class_spread(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="at least two samples"):
        within_class_spread(torch.zeros(3, 2), torch.arange(3))
    with pytest.raises(ValueError, match="batch tensor"):
        within_class_spread(torch.zeros(3), torch.arange(3))
