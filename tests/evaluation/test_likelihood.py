"""The probability-flow ODE log-likelihood (dl.evaluation.log_likelihood / bits_per_dim).

Against closed forms: on Gaussian mixtures the exact denoiser (dl.models.GaussianMixtureDenoiser)
makes the ODE that of the data itself, so the computed log p(x0) must be the mixture's log-density
(log_prob), up to the errors the module documents: the solve (RK4, falling as steps^-4), the
start at sigma_min instead of 0 (log p_{sigma_min} is the mixture with variances s^2 + sigma_min^2,
also closed-form) and the prior at sigma_max. Hutchinson's estimate is checked for unbiasedness
against the exact divergence on the same discretisation, and bits/dim of the discrete chain against
the exact probability of grid data and against the chain's variational bound.
"""

import math

import pytest
import torch

import difflab as dl
from difflab.evaluation import bits_per_dim, log_likelihood
from difflab.models import GaussianMixtureDenoiser
from networks import tiny_text_model
from difflab.processes import EDM, VESDE, VPSDE, FlowMatching, GaussianDiffusion

PROCESSES = {
    "ddpm": lambda: GaussianDiffusion(dl.schedules.cosine(1000)),
    "vp": VPSDE,
    "ve": VESDE,
    "edm": EDM,
    "flow": FlowMatching,
}
STD = 0.3  # of each mixture component


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _means(dim: int) -> torch.Tensor:
    """Two symmetric modes in 2-D; three random ones in 8-D, centred (the prior's error is then
    O(1 / sigma_max^2), see the module docstring)."""
    if dim == 2:
        return torch.tensor([[1.0, 0.5], [-1.0, -0.5]])
    means = torch.randn(3, dim, generator=_generator(0)) * 0.8
    return means - means.mean(0)


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_pf_ode_log_likelihood_matches_the_mixture_density(name, dim):
    """The must-show: within 0.02 nats per dimension of the true log-density, every process, 2-D
    and 8-D, the exact divergence at the default 64 steps (measured: at most 2.8e-3, the VE SDE
    in 2-D). Also within 5e-3 of log p_{sigma_min}, the density the solve targets (measured:
    at most 1.8e-3, the solve's and the prior's errors)."""
    proc = PROCESSES[name]()
    means = _means(dim)
    model = GaussianMixtureDenoiser(proc, means, STD)
    x0 = model.sample(64, _generator(1)).double()
    ll = log_likelihood(model, proc, x0)
    assert ll.shape == (64,) and ll.dtype == torch.float64
    assert (ll - model.log_prob(x0)).abs().max() / dim < 0.02
    smoothed = GaussianMixtureDenoiser(proc, means, math.sqrt(STD**2 + proc.sigma_min**2))
    assert (ll - smoothed.log_prob(x0)).abs().max() / dim < 5e-3


def test_the_solve_converges_at_better_than_third_order():
    """RK4: the error against log p_{sigma_min} falls by more than 2^3 each time the steps double
    (measured 11.6 and 12.0 for 12 -> 24 -> 48 steps, approaching 16; Heun's would be about 4)."""
    proc = FlowMatching()
    model = GaussianMixtureDenoiser(proc, _means(2), STD)
    x0 = model.sample(16, _generator(1)).double()
    target = GaussianMixtureDenoiser(proc, _means(2), math.sqrt(STD**2 + proc.sigma_min**2)).log_prob(x0)
    errs = [float((log_likelihood(model, proc, x0, steps=n) - target).abs().max()) for n in (12, 24, 48)]
    assert all(a / b > 8 for a, b in zip(errs, errs[1:])), errs


def test_class_labels_give_each_components_density():
    """cond = k: the conditional ODE of component k, whose density is N(m_k, STD^2 I)."""
    proc = EDM()
    means = _means(2)
    model = GaussianMixtureDenoiser(proc, means, STD, conditional=True)
    x0, k = model.sample(16, _generator(2), return_labels=True)
    x0 = x0.double()
    ll = log_likelihood(model, proc, x0, k, steps=32)
    true = torch.distributions.Normal(means.double()[k], STD).log_prob(x0).sum(1)
    assert (ll - true).abs().max() / 2 < 0.02


def test_hutchinson_estimate_is_unbiased_and_its_variance_falls_with_probes():
    """The same point repeated N times gives N independent probe draws: their mean matches the
    exact divergence's value within 4 standard errors (unbiased: E[v v^T] = I, probes fixed over a
    fixed-step solve, so the estimate is linear in v v^T). M probes per sample divide the variance
    by M; Rademacher probes have less variance than Gaussian ones (they skip the diagonal)."""
    proc = EDM()
    model = GaussianMixtureDenoiser(proc, _means(8), STD)
    x0 = model.sample(1, _generator(3)).double()
    exact = float(log_likelihood(model, proc, x0, steps=8))
    n = 400
    batch = x0.expand(n, -1)

    def estimates(**kwargs):
        return log_likelihood(model, proc, batch, steps=8, divergence="hutchinson", generator=_generator(4), **kwargs)

    rad, gauss = estimates(), estimates(probe="gaussian")
    for est in (rad, gauss):
        se = float(est.std()) / math.sqrt(n)
        assert se > 1e-3  # a real estimate with spread, not the exact value
        assert abs(float(est.mean()) - exact) < 4 * se, (float(est.mean()), exact, se)
    assert rad.std() < 0.8 * gauss.std()
    four = estimates(hutchinson_samples=4)
    assert abs(float(four.mean()) - exact) < 4 * float(four.std()) / math.sqrt(n)
    assert 1.6 < float(rad.std() / four.std()) < 2.5  # sqrt(4) = 2, within the spread of 400 draws


def _grid_data(model, n: int, seed: int) -> torch.Tensor:
    """n draws rounded to the 256-level grid of [-1, 1] (8-bit data)."""
    x = model.sample(n, _generator(seed)).double().clamp(-1, 1)
    return torch.round((x + 1) * 127.5) / 127.5 - 1


def _true_bits_per_dim(x: torch.Tensor, means: torch.Tensor, std: float) -> torch.Tensor:
    """-log2 P(bin of x) / D: the mixture's probability of each grid value's bin of width 2/255
    (the end bins reaching to infinity, as the variational bound's decoder), per sample."""
    h = 1 / 255
    inf = torch.tensor(math.inf, dtype=torch.float64)
    lo = torch.where(x < -1 + h, -inf, x - h)[:, None]
    hi = torch.where(x > 1 - h, inf, x + h)[:, None]
    m = means.double()[None]
    mass = (torch.special.ndtr((hi - m) / std) - torch.special.ndtr((lo - m) / std)).prod(-1).mean(1)
    return -mass.log2() / x.shape[1]


def test_discrete_chain_bits_per_dim_against_the_grid_probability_and_the_variational_bound():
    """GaussianDiffusion (linear schedule), 2-D mixture data on the 256-level grid of [-1, 1].

    - PF-ODE bits/dim at the grid points: within 0.02 nats/dim (0.029 bits) of the exact
      -log2 P(bin) / D per sample (measured: at most 0.012 bits; mean difference 1e-4);
    - dequantised (uniform within each bin): the mean within 4 standard errors + 0.005 bits of the
      exact mean (measured: 1e-4 +- 1e-3);
    - the variational bound (all 1000 terms) is an upper bound on -log p, so its mean is at least
      the data's entropy per dimension and the ODE's value, up to 4 standard errors (a theorem:
      cross-entropy >= entropy). Measured: 0.84 +- 0.12 bits/dim above, the bound's slack for a
      continuous denoiser on grid data (see tests/processes/test_vlb.py).
    """
    proc = GaussianDiffusion(dl.schedules.linear(1000))
    means, std = torch.tensor([[0.4, 0.2], [-0.4, -0.2]]), 0.15
    model = GaussianMixtureDenoiser(proc, means, std)
    x = _grid_data(model, 128, 5)
    true = _true_bits_per_dim(x, means, std)
    ode = bits_per_dim(model, proc, x, steps=48)
    assert (ode - true).abs().max() < 0.02 / math.log(2)
    deq = bits_per_dim(model, proc, x, steps=48, dequantize=True, generator=_generator(6))
    assert not torch.equal(deq, ode)
    diff = deq - true
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(x)) + 0.005
    vlb = proc.vlb_bits_per_dim(model, x.float(), generator=_generator(7)).double()
    for below in (true, ode):
        gap = vlb - below
        assert float(gap.mean()) > -4 * float(gap.std()) / math.sqrt(len(x))


def test_bits_per_dim_uses_the_bin_width_of_the_grid():
    """bits/dim = -log p / (D ln 2) + log2((bins - 1) / 2): the same log-density at 256 and 17 levels
    differs by log2(255 / 16)."""
    proc = EDM()
    model = GaussianMixtureDenoiser(proc, _means(2) * 0.4, 0.2)
    x = _grid_data(model, 4, 8)
    nats = log_likelihood(model, proc, x, steps=8)
    b256 = bits_per_dim(model, proc, x, steps=8)
    b17 = bits_per_dim(model, proc, x, steps=8, bins=17)
    assert torch.allclose(b256, -nats / (2 * math.log(2)) + math.log2(127.5), rtol=0, atol=1e-12)
    assert torch.allclose(b256 - b17, torch.full_like(b256, math.log2(255 / 16)), rtol=0, atol=1e-12)


def test_mistakes_get_clear_messages():
    proc = EDM()
    model = GaussianMixtureDenoiser(proc, _means(2), STD)
    x0 = model.sample(4, _generator(9))
    cases = [
        (TypeError, "float tensor", dict(x0=x0.long())),
        (ValueError, r"shape \[B, ...\]", dict(x0=x0[0])),
        (ValueError, "NaN", dict(x0=torch.full_like(x0, math.nan))),
        (ValueError, "unknown divergence 'trace'.*hutchinson", dict(divergence="trace")),
        (ValueError, "steps .* positive integer", dict(steps=0)),
        (ValueError, "hutchinson_samples .* positive integer", dict(divergence="hutchinson", hutchinson_samples=0)),
        (ValueError, "unknown probe", dict(divergence="hutchinson", probe="normal")),
        (ValueError, "sigma_min < sigma_max", dict(sigma_min=1e-4)),
        (ValueError, "sigma_min < sigma_max", dict(sigma_min=2.0, sigma_max=1.0)),
        (TypeError, "proc must be a process", dict(proc="edm")),
    ]
    for error, message, kwargs in cases:
        args = dict(model=model, proc=proc, x0=x0)
        args.update(kwargs)
        with pytest.raises(error, match=message):
            log_likelihood(args.pop("model"), args.pop("proc"), args.pop("x0"), **args)

    big = GaussianMixtureDenoiser(proc, torch.zeros(1, 33 * 33), STD)
    with pytest.raises(ValueError, match="exact divergence .* 1089 .* divergence='hutchinson'"):
        log_likelihood(big, proc, torch.zeros(2, 1, 33, 33))
    with pytest.raises(ValueError, match="differentiabl"):
        log_likelihood(lambda x, t: model(x, t).detach(), proc, x0)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*x / 127.5 - 1"):
        bits_per_dim(model, proc, x0 * 0 + 200.0)
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        bits_per_dim(model, proc, x0.clamp(-1, 1), bins=1)


def test_the_prior_is_the_exact_marginal_of_unit_variance_data():
    """For data N(0, I) the noised marginal at sigma_max is exactly N(0, (1 + sigma_max^2) I), the
    prior the solve ends in, so the likelihood is exact even from a low sigma_max = 3, where a prior
    of variance sigma_max^2 alone would be off by 0.5 ln(10 / 9) = 0.053 nats per dimension."""
    proc = EDM(sigma_min=0.002, sigma_max=3.0)
    model = dl.models.GaussianDenoiser(proc, torch.zeros(2), 1.0)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    got = log_likelihood(model, proc, x0, steps=64)
    true = torch.distributions.Normal(0.0, 1.0).log_prob(x0.double()).sum(1)
    assert (got - true).abs().max() / 2 < 2e-3


def test_a_text_models_likelihood_takes_token_ids():
    """cond = token ids [B, L], repeated with the divergence's probes: the batch's log-likelihoods are
    each image's own under its caption."""
    model, proc = tiny_text_model(), dl.GaussianDiffusion(dl.schedules.cosine(100))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ids = model.tokenizer.encode(["a bold 7 on the left", "a thin 3 on the top"])
    both = log_likelihood(model, proc, x, cond=ids, steps=2)
    each = torch.cat([log_likelihood(model, proc, x[i:i + 1], cond=ids[i:i + 1], steps=2) for i in range(2)])
    torch.testing.assert_close(both, each, rtol=1e-6, atol=1e-4)
    assert not torch.allclose(both, log_likelihood(model, proc, x, cond=ids.flip(0), steps=2), atol=1e-3)
