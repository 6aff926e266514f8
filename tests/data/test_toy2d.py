import numpy as np
import pytest
import torch

import difflab as dl
from difflab.data import toy2d


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_toy_sets_shapes_scale_and_labels(name, gen):
    x, y = toy2d.make(name, 5000, gen, labels=True)
    assert x.shape == (5000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert y.shape == (5000,) and y.dtype == torch.long
    assert set(y.unique().tolist()) == set(range(toy2d.NUM_CLASSES[name]))
    assert 0.5 < x.std(0).min() and x.std(0).max() < 1.6
    assert x.mean(0).abs().max() < 0.6
    # reproducible through the generator
    a = toy2d.make(name, 10, torch.Generator().manual_seed(0))
    b = toy2d.make(name, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_eight_gaussians_modes(gen):
    x, k = toy2d.make("8gaussians", 4000, gen, labels=True)
    angle = 2 * np.pi * k.double() / 8
    centres = 1.4 * torch.stack([torch.cos(angle), torch.sin(angle)], 1).float()
    assert (x - centres).std().item() == pytest.approx(0.1, rel=0.05)


def test_checkerboard_only_dark_squares(gen):
    x = toy2d.make("checkerboard", 4000, gen) * 1.15 + 2.0  # back to [0, 4]^2
    i, j = x[:, 1].floor().long(), x[:, 0].floor().long()
    assert ((i + j) % 2 == 0).all()


def test_bad_toy_input():
    with pytest.raises(ValueError, match="unknown 2D dataset 'spiral'.*swiss_roll"):
        toy2d.make("spiral", 10)
    with pytest.raises(ValueError, match="n .* must be a positive integer"):
        toy2d.make("moons", 0)


def test_mlp_shapes_conditioning_and_float_t(gen):
    m = dl.models.MLPDenoiser(dim=2, width=32, depth=2, num_classes=3)
    for p in m.out.parameters():  # undo the zero init so outputs depend on the input
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(5, 2, generator=gen)
    t = torch.tensor([0, 10, 100, 500, 999])
    y = m(x, t, torch.tensor([0, 1, 2, 3, 0]))
    assert y.shape == x.shape
    assert m(x, t.float() + 0.5).shape == x.shape
    assert not torch.allclose(m(x, t, torch.zeros(5, dtype=torch.long)), m(x, t, torch.ones(5, dtype=torch.long)))
    # no labels = the null label
    assert torch.allclose(m(x, t), m(x, t, torch.full((5,), 3)))
    with pytest.raises(ValueError, match="unconditional"):
        dl.models.MLPDenoiser(2)(x, t, torch.zeros(5, dtype=torch.long))
    # zero-initialised output: a fresh model predicts 0 (eps = 0 is the prior's mean)
    assert torch.equal(dl.models.MLPDenoiser(2)(x, t), torch.zeros_like(x))


def test_sinusoidal_embedding_is_the_formula():
    emb = dl.models.SinusoidalEmbedding(8)
    t = torch.tensor([0.0, 1.0, 37.5])
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
    assert torch.allclose(emb(t), expected, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        dl.models.SinusoidalEmbedding(7)


def test_sinusoidal_embedding_keeps_float32_frequencies_in_a_half_model():
    """model.to(torch.bfloat16) cast the frequencies too: the phases t w_i at t = 999 were off by
    up to ~2 radians (features off by up to 1.1, as `difflab sample --fast` now stores networks
    in bf16). They stay float32 (float64 in a float64 model), on the model's device."""
    t = torch.tensor([999.0, 500.0, 3.0])
    want = dl.models.SinusoidalEmbedding(128)(t)
    for dtype in (torch.bfloat16, torch.float16):
        emb = dl.models.SinusoidalEmbedding(128).to(dtype)
        assert emb.freqs.dtype == torch.float32
        torch.testing.assert_close(emb(t), want, rtol=0, atol=0)
    assert dl.models.SinusoidalEmbedding(8).double().freqs.dtype == torch.float64
    net = dl.models.build("unet_tiny").to(torch.bfloat16)
    assert all(b.dtype == torch.float32 for b in net.buffers())
    with torch.device("meta"):  # the default device, as before
        assert dl.models.SinusoidalEmbedding(8).half().freqs.device.type == "meta"


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


def test_the_exact_denoiser_checks_its_labels_and_converts_in_float64():
    """Labels past K read component K - 1 (clamped), -1 raised an index error, and an
    unconditional mixture took labels; eps at t = 0 lost three digits to a float32 subtraction."""
    proc = dl.GaussianDiffusion(dl.schedules.cosine(1000))
    mix = dl.models.GaussianMixtureDenoiser(proc, [[0.0, 0.0], [5.0, 5.0]], 0.5, conditional=True)
    x, t = torch.randn(2, 2), torch.zeros(2, dtype=torch.long)
    for bad in (torch.tensor([3, 0]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"class labels must lie in 0 \.\. 1 \(or 2 for 'no label'\)"):
            mix(x, t, bad)
    with pytest.raises(ValueError, match="cond must be a long tensor"):
        mix(x, t, torch.tensor([0.7, 0.0]))
    plain = dl.models.GaussianMixtureDenoiser(proc, [[0.0, 0.0], [5.0, 5.0]], 0.5)
    with pytest.raises(ValueError, match="not class-conditional"):
        plain(x, t, torch.tensor([1, 1]))
    got32, got64 = plain(x, t), plain(x.double(), t)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got64, rtol=0, atol=1e-6)  # float32 rounding of the result only
