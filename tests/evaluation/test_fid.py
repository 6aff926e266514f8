"""FID through torchmetrics with difflab's own feature network, and that network (the small CNN)."""


import numpy as np
import pytest
import torch
from scipy import linalg

from difflab.evaluation.classifier import (
    ClassifierFeatures,
    SmallCNN,
    accuracy,
    load_classifier,
    load_split,
    train_and_save_classifier,
)
from difflab.evaluation.fid import extract_features, fid, frechet_distance, inception_features, metric_name


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """A CNN trained on scikit-learn's 8x8 digits (80% split) in a few seconds, saved and reloaded."""
    out = tmp_path_factory.mktemp("clf")
    meta = train_and_save_classifier("digits", out, epochs=6, progress=False)
    return load_classifier(out), meta


def test_classifier_learns_digits_and_round_trips(digits_classifier):
    model, meta = digits_classifier
    assert meta["test_accuracy"] >= 0.9, meta  # 360 held-out 8x8 digits
    x, y = load_split("digits", None, "test")
    assert accuracy(model, x, y) == pytest.approx(meta["test_accuracy"])  # the saved weights are the tested ones
    assert model.meta["dataset"] == "digits"
    feats = ClassifierFeatures(model)
    assert feats.name == "digits-cnn" and feats.num_features == 128
    assert metric_name(feats) == "FID (digits-cnn features)"


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(digits_classifier):
    feats = ClassifierFeatures(digits_classifier[0])
    x, _ = load_split("digits", None, "train")
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=g)
    scores = [fid(x, (x + s * noise).clamp(-1, 1), feats) for s in (0.0, 0.1, 0.25, 0.5, 1.0)]
    assert scores[0] < 1e-6
    assert all(b > a for a, b in zip(scores, scores[1:])), scores
    # a held-out set of the same digits is closer than a noisy copy
    xt, _ = load_split("digits", None, "test")
    assert 0 < fid(x, xt, feats) < scores[-1]


def test_frechet_distance_matches_independent_formula(gen):
    a = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    b = 0.7 * torch.randn(300, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64) + 0.5
    mu1, mu2 = a.mean(0).numpy(), b.mean(0).numpy()
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift(gen):
    shift = torch.tensor([0.6, -0.8, 0.0])  # |shift|^2 = 1
    a = torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(20000, 3, generator=gen, dtype=torch.float64) + shift
    assert frechet_distance(a, b) == pytest.approx(1.0, abs=0.05)


def test_extract_features_batches_agree_with_one_pass(digits_classifier):
    feats = ClassifierFeatures(digits_classifier[0])
    x, _ = load_split("digits", None, "test")
    torch.testing.assert_close(extract_features(feats, x, batch_size=37), feats(x))


def test_inception_needs_its_weights_or_the_optional_package(tmp_path):
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    err = FileNotFoundError if _TORCH_FIDELITY_AVAILABLE else ModuleNotFoundError
    with pytest.raises(err, match="torch-fidelity|not found"):
        inception_features(tmp_path / "missing.pth")


def test_bad_inputs_are_named(digits_classifier):
    feats = ClassifierFeatures(digits_classifier[0])
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="images"):
        feats(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="fake"):
        fid(torch.zeros(4, 1, 8, 8), torch.zeros(1, 1, 8, 8), feats)
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        load_classifier("/nonexistent/classifier")
    with pytest.raises(ValueError, match="digits"):
        load_split("digits", None, "validation")
    assert isinstance(SmallCNN(), torch.nn.Module)
