"""Editing with exact models: inpainting, SDEdit, inversion, slerp and masks.

The Gaussian-mixture denoiser is the Bayes-optimal model of its data, so what these tests
see is the editing method itself (plus the sampler's discretisation), checked against closed
forms: the exact conditional of a two-mode mixture, plain sampling, the data distribution.
"""

import math

import numpy as np
import pytest
import torch

import difflab as dl
from difflab import editing as E


@pytest.fixture(scope="module")
def proc():
    return dl.GaussianDiffusion(dl.schedules.linear(1000))


@pytest.fixture(scope="module")
def mixture(proc):
    """Two modes separated along both coordinates: knowing x1 decides the mode of x2."""
    return dl.models.GaussianMixtureDenoiser(proc, [[-1.5, -1.5], [1.5, 1.5]], 0.5)


def exact_mode_prob(x1, means=(-1.5, 1.5), std=0.5):
    """p(mode 2 | x1) for equal weights: the exact conditional's mixing weight."""
    lw = torch.tensor([-(x1 - m) ** 2 / (2 * std**2) for m in means])
    return torch.softmax(lw, 0)[1].item()


# ---------------------------------------------------------------------------- masks
def test_box_and_half_masks():
    m = E.box_mask((4, 6), 1, 2, 4, 4)
    assert m.shape == (4, 6) and m.sum() == 3 * 2
    assert m[2:4, 1:4].eq(1).all() and m[:2].eq(0).all() and m[:, 4:].eq(0).all()
    assert torch.equal(E.parse_mask("box:1,2,4,4", (4, 6)), m)
    bottom = E.parse_mask("half:bottom", (28, 28))
    assert bottom[14:].eq(1).all() and bottom[:14].eq(0).all()
    left = E.half_mask((5, 5), "left")
    assert left[:, :2].eq(1).all() and left[:, 2:].eq(0).all()
    assert torch.equal(E.half_mask((6, 6), "top") + E.half_mask((6, 6), "bottom"), torch.ones(6, 6))
    assert torch.equal(E.half_mask((7, 7), "left") + E.half_mask((7, 7), "right"), torch.ones(7, 7))


def test_mask_png_round_trip(tmp_path):
    from PIL import Image

    m = E.box_mask((8, 8), 2, 3, 6, 8)
    Image.fromarray((m.numpy() * 255).astype(np.uint8)).save(tmp_path / "m.png")
    assert torch.equal(E.parse_mask(str(tmp_path / "m.png"), (8, 8)), m)
    with pytest.raises(ValueError, match="mask and image must have the same size"):
        E.parse_mask(str(tmp_path / "m.png"), (9, 8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        E.parse_mask(str(tmp_path / "none.png"), (8, 8))


@pytest.mark.parametrize("spec, match", [
    ("box:0,0,9,4", r"0 <= x0 < x1 <= width = 8"),
    ("box:3,0,3,4", r"x0 < x1"),
    ("box:1,2,3", "four integers"),
    ("half:middle", "left, right, top, bottom"),
    ("half", "incomplete"),
])
def test_mask_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        E.parse_mask(spec, (8, 8))


def test_image_and_mask_io_round_trip(tmp_path):
    x = torch.randint(0, 256, (2, 1, 5, 7)).float() / 127.5 - 1
    E.save_images(x[:1], tmp_path / "one.png")
    assert torch.allclose(E.load_images(tmp_path / "one.png"), x[:1], atol=1e-6)
    rgb = torch.randint(0, 256, (1, 3, 4, 4)).float() / 127.5 - 1
    E.save_images(rgb, tmp_path / "rgb.png")
    assert torch.allclose(E.load_images(tmp_path / "rgb.png"), rgb, atol=1e-6)
    assert E.load_images(tmp_path / "rgb.png", channels=1).shape == (1, 1, 4, 4)
    E.save_images(torch.zeros(1, 1, 4, 5), tmp_path / "other.png")
    with pytest.raises(ValueError, match="differ in size"):
        E.load_images([tmp_path / "one.png", tmp_path / "other.png"])


def test_images_and_masks_of_more_than_8_bits_are_read_at_their_depth(tmp_path):
    """Pillow's convert("L") clips a 16-bit image at 255, which read 0..63000 as nearly all
    white; these are read as v / 65535 (floats as they are), and out-of-range values refused."""
    from PIL import Image

    levels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0 .. 63000
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode in E.io.HIGH_DEPTH
    want = torch.from_numpy(levels / 65535 * 2 - 1).float()
    torch.testing.assert_close(E.load_images(tmp_path / "deep.png"), want[None, None], rtol=0, atol=1e-6)
    torch.testing.assert_close(E.load_images(tmp_path / "deep.png", channels=3), want[None, None].expand(1, 3, 8, 8),
                               rtol=0, atol=1e-6)
    # a mask: filled where brighter than mid-grey, 128 / 255 of the full scale
    torch.testing.assert_close(E.load_mask(tmp_path / "deep.png"), torch.from_numpy(levels / 65535 >= 128 / 255).float())
    Image.fromarray((levels / 63000).astype(np.float32)).save(tmp_path / "float.tiff")
    torch.testing.assert_close(E.load_images(tmp_path / "float.tiff"), torch.from_numpy(levels / 63000 * 2 - 1).float()[None, None])
    Image.fromarray((levels * 2.0).astype(np.float32)).save(tmp_path / "bad.tiff")
    with pytest.raises(ValueError, match=r"a F image with values in \[0, 126000\], expected floats in \[0, 1\]"):
        E.load_images(tmp_path / "bad.tiff")


# ------------------------------------------------------------------------ inpainting
def test_repaint_schedule_by_hand():
    # Lugmayr et al. 2022, app. B with N = 10, j = 3, r = 2: jumps at RePaint times t = 0, 3, 6
    # (indices 9, 6, 3), each going back up 3 levels once.
    assert E.repaint_schedule(10, 3, 2) == [
        0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 5, 4, 3, 4, 5, 6, 7, 8, 9, 8, 7, 6, 7, 8, 9, 10]
    assert E.repaint_schedule(7, 10, 1) == list(range(8))
    path = E.repaint_schedule(250, 10, 10)
    moves = np.diff(path)
    assert set(moves.tolist()) == {-1, 1} and path[0] == 0 and path[-1] == 250
    assert (moves == 1).sum() == 250 + 9 * 10 * 24  # N + (r - 1) j floor((N - 1) / j)
    with pytest.raises(ValueError, match="jump_length=10 must be smaller than steps=10"):
        E.repaint_schedule(10, 10, 2)
    with pytest.raises(ValueError, match="resample must be a positive integer"):
        E.repaint_schedule(10, 2, 0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_kept_region_is_the_input(proc, mixture, sampler):
    g = torch.Generator().manual_seed(0)
    x = mixture.sample(64, g)
    mask = torch.tensor([0.0, 1.0])
    noise = torch.randn(x.shape, generator=g)
    out = E.inpaint(mixture, proc, x, mask, sampler, 50, noise=noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0], x[:, 0])  # exact after the final paste
    raw = E.inpaint(mixture, proc, x, mask, sampler, 50, noise=noise, generator=torch.Generator().manual_seed(1),
                    paste_final=False)
    assert torch.equal(raw[:, 1], out[:, 1])  # the paste touches only the kept pixels
    err = (raw[:, 0] - x[:, 0]).abs()
    sigma_last = float(dl.samplers.sampling_sigmas(proc, 50)[-2])  # the last noisy level the model sees
    assert 0 < err.mean() < sigma_last and err.max() < 5 * sigma_last  # its own estimate, close to the input


def test_mask_extremes(proc, mixture):
    g = torch.Generator().manual_seed(0)
    x = mixture.sample(64, g)
    noise = torch.randn(x.shape, generator=g)
    keep_all = E.inpaint(mixture, proc, x, torch.zeros(2), "ddim", 20, noise=noise)
    assert torch.equal(keep_all, x)
    fill_all = E.inpaint(mixture, proc, x, torch.ones(2), "ddim", 20, noise=noise)
    assert torch.allclose(fill_all, dl.sample(mixture, proc, x.shape, "ddim", 20, noise=noise), atol=1e-5)


def test_inpainting_independent_coordinates_is_exact(proc):
    """Data N(m, diag(s^2)): x2 is independent of x1, so p(x2 | x1) = p(x2) and the filled
    coordinate must be what plain sampling gives -- the kept pixel must not leak into it.
    The exact denoiser works coordinate-wise, so with DDIM this holds sample by sample."""
    model = dl.models.GaussianDenoiser(proc, [1.0, -0.5], [0.3, 0.7])
    n = 2000
    x = torch.tensor([[3.0, 0.0]]).repeat(n, 1)  # kept value far out in the tail
    mask = torch.tensor([0.0, 1.0])
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    filled = E.inpaint(model, proc, x, mask, "ddim", 50, noise=z)[:, 1]
    assert torch.allclose(filled, dl.sample(model, proc, (n, 2), "ddim", 50, noise=z)[:, 1], atol=1e-6)
    # DDPM: the same distribution as plain DDPM sampling with as many steps
    y = E.inpaint(model, proc, x, mask, "ddpm", 50, generator=torch.Generator().manual_seed(1))[:, 1]
    ref = dl.sample(model, proc, (n, 2), "ddpm", 50, generator=torch.Generator().manual_seed(2))[:, 1]
    se = 0.7 / math.sqrt(n)
    assert abs(y.mean().item() + 0.5) < 4 * se
    assert abs(y.std().item() - ref.std().item()) < 0.04


def test_inpainting_mixture_against_exact_conditional(proc, mixture):
    """Two modes: x1 = 0.3 puts 97% of p(x2 | x1) on the upper mode. Replacement is known to
    under-use the kept pixel (its noised copy carries little information when the modes split);
    RePaint's resampling harmonises and moves the result towards the exact conditional."""
    x1, n = 0.3, 1000
    exact = exact_mode_prob(x1)
    assert exact > 0.97
    x = torch.tensor([[x1, 0.0]]).repeat(n, 1)
    mask = torch.tensor([0.0, 1.0])

    def upper(**kw):
        y = E.inpaint(mixture, proc, x, mask, "ddpm", 25, generator=torch.Generator().manual_seed(0), **kw)
        return (y[:, 1] > 0).float().mean().item()

    replacement = upper()
    repaint = upper(resample=8, jump_length=3)
    se = 0.5 / math.sqrt(n)
    assert 0.5 + 4 * se < replacement < exact  # informative, but not exact
    assert repaint > replacement + 6 * se  # resampling helps...
    assert exact - repaint < 0.7 * (exact - replacement)  # ...substantially
    assert repaint < exact + 4 * se


def test_inpaint_guidance_passes_through(proc):
    """With the class-conditional mixture, label k and guidance 1 fill x2 from component k;
    guidance 3 (eps_u + 3 (eps_c - eps_u)) pushes the fill further from the other component and
    narrows it (measured: mean 1.52 -> 2.09, std 0.47 -> 0.28), which a dropped guidance
    argument would not."""
    model = dl.models.GaussianMixtureDenoiser(proc, [[-1.5, -1.5], [1.5, 1.5]], 0.5, conditional=True)
    x = torch.zeros(400, 2)
    for k, sign in ((0, -1), (1, 1)):
        cond = torch.full((400,), k)
        y = E.inpaint(model, proc, x, torch.tensor([0.0, 1.0]), "ddim", 20, cond=cond,
                      generator=torch.Generator().manual_seed(0))
        assert (sign * y[:, 1] > 0).float().mean() > 0.99
        assert (sign * y[:, 1]).mean() == pytest.approx(1.5, abs=0.1)  # component k's mean
        z = E.inpaint(model, proc, x, torch.tensor([0.0, 1.0]), "ddim", 20, cond=cond, guidance=3.0,
                      generator=torch.Generator().manual_seed(0))
        assert (sign * z[:, 1]).mean() > (sign * y[:, 1]).mean() + 0.3
        assert z[:, 1].std() < 0.8 * y[:, 1].std()


def test_renoise_matches_forward_process(proc, mixture):
    """The up-step of RePaint: from q(x | x0) at sigma_a, adding N(0, sigma_b^2 - sigma_a^2) gives q at sigma_b."""
    g = torch.Generator().manual_seed(0)
    sig = dl.samplers.sampling_sigmas(proc, 10)
    x0 = torch.zeros(5000, 2)
    # A mask of ones fills every coordinate, so the states of the walk (up and down, r = 2) follow
    # the mixture's marginals q(x_t) at every level: the forward steps' variance is checked there.
    seen = {}

    def record(step):
        seen.setdefault(step["i"], step)

    E.inpaint(mixture, proc, x0, torch.ones(2), "ddpm", 10, resample=2, jump_length=3, generator=g,
              callback=record)
    path = E.repaint_schedule(10, 3, 2)
    # At move 6 the walk is back at index 0 after going up from index 3: the state there must have
    # the variance of index 0 (1 + sigma_0^2 in VP terms: x_t = x / sqrt(1 + sigma^2) has unit variance).
    denoise_moves = [k for k, (a, b) in enumerate(zip(path[:-1], path[1:])) if b == a + 1]
    k = denoise_moves[3]  # the first denoising step after the jump back up to index 0
    assert path[k] == 0
    state = seen[k]
    assert state["sigma"] == pytest.approx(float(sig[0]))
    # the VP state at the top level is nearly N(0, 1) for any x0 when sigma_0 is large
    assert state["x"].std().item() == pytest.approx(1.0, abs=0.02)
    # and a level lower down (after a jump back up to index 3) matches q(x_t) of the mixture
    k6 = [k for k in denoise_moves if path[k] == 3][1]
    s3 = float(sig[3])
    var_vp = (mixture.means.pow(2).mean() + 0.25 + s3**2) / (1 + s3**2)
    assert seen[k6]["x"].pow(2).mean().item() == pytest.approx(var_vp.item(), rel=0.05)


def test_inpaint_bad_input(proc, mixture):
    img = torch.zeros(2, 1, 8, 8)
    model = dl.models.GaussianDenoiser(proc, torch.zeros(64), 1.0)
    with pytest.raises(ValueError, match=r"mask of shape \(9, 8\) does not fit the image of shape \(2, 1, 8, 8\)"):
        E.inpaint(model, proc, img, torch.zeros(9, 8))
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        E.inpaint(model, proc, img, torch.full((8, 8), 2.0))
    with pytest.raises(TypeError, match="mask must be a torch tensor"):
        E.inpaint(model, proc, img, "half:left")
    with pytest.raises(ValueError, match="cannot be used here.*multistep.*choose one of ddpm, ddim"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="sampler 'dddim' cannot be used here"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="dddim")
    with pytest.raises(ValueError, match="takes no option eta"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="ddpm", eta=0.5)
    if "euler" in dl.samplers.SAMPLERS:
        with pytest.raises(ValueError, match="s_churn .* does not apply to inpainting"):
            E.inpaint(model, proc, img, torch.zeros(8, 8), sampler="euler", s_churn=1.0)
    with pytest.raises(ValueError, match="steps must be an integer in 1 .. T = 1000"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), steps=0)
    with pytest.raises(ValueError, match="noise must have the image's shape"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), noise=torch.zeros(2, 64))
    with pytest.raises(ValueError, match="cond .* not class-conditional"):
        E.inpaint(model, proc, img, torch.zeros(8, 8), cond=torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- SDEdit
def test_sdedit_strength_0_and_1(proc, mixture):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    eps = torch.randn(64, 2, generator=g)
    assert torch.equal(E.img2img(mixture, proc, x, 0.0, noise=eps), x)
    for sampler in sorted(dl.samplers.SAMPLERS):  # every sampler, with its own default spacing
        full = E.img2img(mixture, proc, x, 1.0, sampler, 12, noise=eps, generator=torch.Generator().manual_seed(3))
        plain = dl.sample(mixture, proc, x.shape, sampler, 12, noise=eps, generator=torch.Generator().manual_seed(3))
        assert torch.equal(full, plain), sampler


def test_sdedit_sigmas(proc):
    full = dl.samplers.sampling_sigmas(proc, 50)
    assert torch.equal(E.sdedit_sigmas(proc, 1.0, 50), full)
    sig = E.sdedit_sigmas(proc, 0.5, 50)
    assert sig[0] == pytest.approx(float(proc.sigma_of(torch.tensor(0.5 * 999, dtype=torch.float64))))
    assert (sig[1:] < sig[:-1]).all() and sig[-1] == 0
    assert torch.equal(sig[1:], full[full < sig[0]])
    assert len(sig) - 1 == 26  # about strength * steps steps
    assert len(E.sdedit_sigmas(proc, 0.1, 50)) - 1 == 6


def test_sdedit_distance_grows_with_strength(proc, mixture):
    """Deterministic DDIM from the same eps: the further the start, the further the result."""
    g = torch.Generator().manual_seed(0)
    x = mixture.sample(500, g) + torch.randn(500, 2, generator=g)  # off the data: edits move it
    eps = torch.randn(500, 2, generator=g)
    strengths = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]
    d = [(E.img2img(mixture, proc, x, s, "ddim", 50, noise=eps) - x).norm(dim=1).mean().item() for s in strengths]
    assert all(b > a for a, b in zip(d[:-1], d[1:])), d
    assert d[0] < 0.15 * d[-1]


def test_sdedit_keeps_the_data_distribution(proc, mixture):
    """From data y ~ p, the noised start is a draw of q(x_t) and the exact denoiser's
    probability-flow ODE carries q(x_t) back to p: each mode keeps its share, mean and spread.
    How many points keep their own mode falls with the strength (at 0.6, sigma = 6 drowns the
    mode gap of 3)."""
    y, k = mixture.sample(3000, torch.Generator().manual_seed(0), return_labels=True)
    same = {}
    for strength in (0.2, 0.6):
        out = E.img2img(mixture, proc, y, strength, "ddim", 100, generator=torch.Generator().manual_seed(1))
        upper = out[:, 0] > 0
        assert abs(upper.float().mean().item() - 0.5) < 0.04
        for sel, m in ((upper, 1.5), (~upper, -1.5)):
            assert out[sel].mean(0).sub(m).abs().max() < 0.05
            assert out[sel].std(0).sub(0.5).abs().max() < 0.035
        same[strength] = (upper == (k == 1)).float().mean().item()
    assert same[0.2] > 0.97 and same[0.6] < 0.7


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_sdedit_bad_strength(proc, mixture, strength):
    with pytest.raises(ValueError, match=r"strength must (lie in \(0, 1\]|be a number in \(0, 1\])"):
        E.img2img(mixture, proc, torch.zeros(2, 2), strength)


def test_sdedit_bad_input(proc, mixture):
    with pytest.raises(ValueError, match="unknown sampler"):
        E.img2img(mixture, proc, torch.zeros(2, 2), 0.5, "dddim")
    with pytest.raises(TypeError, match="float tensor"):
        E.img2img(mixture, proc, torch.zeros(2, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="noise must have the image's shape"):
        E.img2img(mixture, proc, torch.zeros(2, 2), 0.5, noise=torch.zeros(3, 2))


# ---------------------------------------------------------------- inversion and slerp
def test_slerp_closed_form():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(E.slerp(a, b, 0.5), torch.tensor([math.sqrt(0.5)] * 2))
    u = torch.tensor([0.0, 1 / 3, 1.0])
    out = E.slerp(a, 2 * b, u)
    assert out.shape == (3, 2)
    assert torch.equal(out[0], a) and torch.allclose(out[2], 2 * b)
    # along the great circle at angle u * 90 degrees (unequal norms: weights sin((1-u)th)/sin th, sin(u th)/sin th)
    assert torch.allclose(out[1], torch.tensor([math.sin(math.pi / 3), 2 * math.sin(math.pi / 6)]))
    # parallel vectors: linear interpolation
    assert torch.allclose(E.slerp(a, 3 * a, 0.5), 2 * a)
    with pytest.raises(ValueError, match="same shape"):
        E.slerp(a, torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="zero vector"):
        E.slerp(a, torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="opposite"):  # no unique great circle: it returned 0 at u = 0.5
        E.slerp(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, -2.0, -3.0]), 0.5)
    with pytest.raises(ValueError, match="opposite"):
        E.slerp(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1e-9]), 0.5)  # it returned 8e6
    # a batch is one vector: the angle is that of the flattened tensors
    a2, b2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(E.slerp(a2, b2, 0.5), torch.tensor([[1.0, 0.0], [1.0, 0.0]]) * math.sqrt(0.5))


def test_slerp_keeps_gaussian_norms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 784, generator=g), torch.randn(1, 784, generator=g)
    b = b * (a.norm() / b.norm())
    u = torch.linspace(0, 1, 9)
    s = E.slerp(a, b, u)
    assert torch.allclose(s.flatten(1).norm(dim=1), a.norm().expand(9), rtol=1e-5)
    lerp_mid = 0.5 * (a + b)
    assert lerp_mid.norm() < 0.8 * a.norm()  # the straight line leaves the Gaussian shell
    assert torch.equal(s[0], a) and torch.allclose(s[-1], b, atol=1e-6)


def test_inversion_round_trip(proc, mixture):
    """DDIM inversion then DDIM sampling returns the input up to the ODE discretisation error,
    which falls like 1 / steps (DDIM is a first-order solver)."""
    x = mixture.sample(300, torch.Generator().manual_seed(0))
    errs = {}
    for steps in (50, 100):
        rec, z = E.reconstruct(mixture, proc, x, steps, return_latent=True)
        errs[steps] = (rec - x).abs().mean().item()
    assert errs[100] < 0.03
    assert 0.4 < errs[100] / errs[50] < 0.6
    assert z.std().item() == pytest.approx(1.0, abs=0.1)  # the latent looks like noise


def test_interpolate_endpoints(proc, mixture):
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(2, generator=g), torch.randn(2, generator=g)
    strip = E.interpolate(mixture, proc, za, zb, frames=5, steps=20, latents=True)
    assert strip.shape == (5, 2)
    assert torch.allclose(strip[0], dl.sample(mixture, proc, (1, 2), "ddim", 20, noise=za[None])[0], atol=1e-6)
    assert torch.allclose(strip[-1], dl.sample(mixture, proc, (1, 2), "ddim", 20, noise=zb[None])[0], atol=1e-6)
    a, b = mixture.sample(2, g)
    strip = E.interpolate(mixture, proc, a, b, frames=4, steps=50)
    assert torch.allclose(strip[0], E.reconstruct(mixture, proc, a[None], 50)[0], atol=1e-5)
    assert (strip[0] - a).abs().max() < 0.1 and (strip[-1] - b).abs().max() < 0.1
    with pytest.raises(ValueError, match="frames must be an integer >= 2"):
        E.interpolate(mixture, proc, a, b, frames=1)
    with pytest.raises(ValueError, match="a and b must have the same shape"):
        E.interpolate(mixture, proc, a, torch.zeros(3), frames=3)


def test_clip_x0_passes_through(proc, mixture):
    """clip_x0 = c clamps every x0 estimate to [-c, c]; DDIM's last step returns that estimate."""
    x = mixture.sample(100, torch.Generator().manual_seed(0))
    filled = E.inpaint(mixture, proc, x, torch.tensor([0.0, 1.0]), "ddim", 10, clip_x0=0.5)
    assert filled[:, 1].abs().max() <= 0.5 and torch.equal(filled[:, 0], x[:, 0])
    edited = E.img2img(mixture, proc, x, 0.5, "ddim", 10, clip_x0=0.5)
    assert edited.abs().max() <= 0.5
    with pytest.raises(ValueError, match="clip_x0 must be > 0"):
        E.inpaint(mixture, proc, x, torch.tensor([0.0, 1.0]), "ddim", 10, clip_x0=0.0)
