"""The variational bound in bits/dim (GaussianDiffusion.vlb_terms / vlb_bits_per_dim).

The exact test: data x0 ~ N(m, s^2 I) rounded to the 256-level grid of [-1, 1] (8-bit data), model
= the closed-form denoiser of the continuous Gaussian (models.GaussianDenoiser). Everything about
this pair is computable without difflab's code, per dimension, with scipy:

* the data's NLL: the entropy H(P) of the rounded distribution, P_k = Phi((hi_k - m)/s) - Phi((lo_k - m)/s)
  (and H(P) = h(N(m, s^2)) - log(2/255) + O((Delta/s)^2), checked too);
* the expected bound E[VLB]: x0_hat = m + k_t (x_t - alpha_t m) is linear in x_t with
  k_t = alpha_t s^2 / (alpha_t^2 s^2 + sigma_t^2), so x0 - x0_hat = (1 - k_t alpha_t)(x0 - m) - k_t sigma_t eps and
  E KL_t = 0.5 (log v - log beta~ + beta~/v - 1) + 0.5 c1_t^2 [(1 - k_t alpha_t)^2 E(x0 - m)^2 + k_t^2 sigma_t^2] / v;
  the prior term is closed-form in E x0^2; the decoder term is a 1-D Gauss-Hermite integral
  over eps for each of the 256 bins.

The tolerance, derived: E[VLB] - NLL = gap >= 0 is the bound's slack for this model (here the
continuous denoiser does not know the data sit on a grid, which costs most at small t; its value
is computed above, ~0.75 bits/dim with v = beta~, ~0.12 with v = beta), and the Monte Carlo
estimate of E[VLB] has a standard error SE from its per-sample spread. So the test asserts
H(P) <= E[VLB] and |VLB_hat - E[VLB]| <= 4 SE, i.e. |VLB_hat - NLL - gap| <= 4 SE.
"""

import math

import numpy as np
import pytest
import torch
from networks import ConstantVariance
from scipy.stats import norm

import difflab as dl
from difflab.processes import discretized_gaussian_log_likelihood

S = 0.2
M = np.array([0.1, -0.1])
GRID = np.linspace(-1, 1, 256)
HALF = 1 / 255
LO = np.concatenate([[-np.inf], GRID[1:] - HALF])
HI = np.concatenate([GRID[:-1] + HALF, [np.inf]])


def _log_bin_prob(mu, scale):
    """log P(bin) under N(mu, scale^2), per bin (rows) and mean (columns), via the tail that is small."""
    a, b = (LO[:, None] - mu) / scale, (HI[:, None] - mu) / scale
    p = np.where(a + b > 0, norm.sf(a) - norm.sf(b), norm.cdf(b) - norm.cdf(a))
    with np.errstate(divide="ignore"):  # bins beyond float64's reach: -inf, left out by the caller
        return np.log(p)


def _analytic(proc, variance):
    """(E[VLB], H(P), h_cont - log Delta) in nats, summed over the dimensions of M."""
    ab = proc.alphas_cumprod.numpy()
    a, sg = np.sqrt(ab), np.sqrt(1 - ab)
    c1 = proc.posterior_mean_coef1.numpy()
    pv = proc.posterior_variance.numpy()
    v = pv if variance == "posterior" else proc.betas.numpy()
    k = a * S**2 / (a**2 * S**2 + sg**2)
    z, w = np.polynomial.hermite_e.hermegauss(41)
    w = w / w.sum()
    vlb = nll = nll_cont = 0.0
    for m in M:
        P = norm.cdf((HI - m) / S) - norm.cdf((LO - m) / S)
        keep = P > 1e-15
        nll += -(P[keep] * np.log(P[keep])).sum()
        nll_cont += 0.5 * math.log(2 * math.pi * math.e * S**2) - math.log(2 * HALF)
        ex2, m2 = (P * GRID**2).sum(), (P * (GRID - m) ** 2).sum()
        prior = 0.5 * (ab[-1] * ex2 + (1 - ab[-1]) - 1 - math.log(1 - ab[-1]))
        err = (1 - k * a) ** 2 * m2 + k**2 * sg**2
        kl = 0.5 * (np.log(v[1:]) - np.log(pv[1:]) + pv[1:] / v[1:] - 1) + 0.5 * c1[1:] ** 2 * err[1:] / v[1:]
        mu = m + k[0] * a[0] * (GRID[keep, None] - m) + k[0] * sg[0] * z[None, :]
        logp = np.log(
            np.where(
                ((LO[keep, None] + HI[keep, None]) / 2 - mu) > 0,
                norm.sf((LO[keep, None] - mu) / math.sqrt(pv[1])) - norm.sf((HI[keep, None] - mu) / math.sqrt(pv[1])),
                norm.cdf((HI[keep, None] - mu) / math.sqrt(pv[1])) - norm.cdf((LO[keep, None] - mu) / math.sqrt(pv[1])),
            )
        )
        decoder = -(P[keep, None] * w[None, :] * logp).sum()
        vlb += prior + kl.sum() + decoder
    return vlb, nll, nll_cont


def _rounded_gaussian(n, gen):
    x = torch.tensor(M) + S * torch.randn(n, len(M), generator=gen, dtype=torch.float64)
    return (((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1).float()


@pytest.fixture(scope="module")
def gaussian_case():
    proc = dl.GaussianDiffusion(dl.schedules.linear(1000), prediction="eps")
    model = dl.models.GaussianDenoiser(proc, torch.tensor(M), S)
    return proc, model


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_bits_per_dim_of_exact_gaussian_model_matches_analytic_nll_plus_derived_gap(gaussian_case, variance):
    proc, model = gaussian_case
    gen = torch.Generator().manual_seed(0)
    x0 = _rounded_gaussian(1000, gen)
    bpd = proc.vlb_bits_per_dim(model, x0, variance=variance, generator=gen)  # full sum over all T terms
    to_bpd = 1 / (len(M) * math.log(2))
    e_vlb, nll, nll_cont = (v * to_bpd for v in _analytic(proc, variance))
    assert abs(nll - nll_cont) < 1e-3  # the rounded data's NLL is h(x) - log(bin width)
    gap = e_vlb - nll
    assert gap >= 0  # the bound holds analytically
    se = bpd.std().item() / math.sqrt(len(bpd))
    assert abs(bpd.mean().item() - e_vlb) <= 4 * se, (bpd.mean().item(), e_vlb, se, nll)
    assert abs(bpd.mean().item() - nll) <= gap + 4 * se


def test_stratified_estimate_is_unbiased(gaussian_case):
    proc, model = gaussian_case
    gen = torch.Generator().manual_seed(1)
    x0 = _rounded_gaussian(400, gen)
    e_vlb = _analytic(proc, "posterior")[0] / (len(M) * math.log(2))
    # Each call draws one t per stratum for the whole batch: the calls are the independent draws.
    estimates = torch.tensor(
        [proc.vlb_bits_per_dim(model, x0, num_timesteps=10, generator=gen).mean().item() for _ in range(40)]
    )
    terms = proc.vlb_terms(model, x0, num_timesteps=10, generator=gen)
    assert len(terms["timesteps"]) == 10 and terms["weights"].sum().item() == proc.T - 1
    assert len(set(terms["timesteps"].tolist())) == 10
    # The same 400 points enter every call: their own sampling error (per-sample sd of the bound
    # ~1.9 bits/dim, so ~0.095 for the mean) adds to the spread of the calls.
    data_se = proc.vlb_bits_per_dim(model, x0, num_timesteps=10, generator=gen).std().item() / math.sqrt(len(x0))
    se = math.sqrt(estimates.var().item() / len(estimates) + data_se**2)
    assert abs(estimates.mean().item() - e_vlb) <= 4 * se, (estimates.mean().item(), e_vlb, se)


def test_terms_add_up_and_are_nonnegative(gaussian_case):
    proc, model = gaussian_case
    gen = torch.Generator().manual_seed(2)
    x0 = _rounded_gaussian(16, gen)
    terms = proc.vlb_terms(model, x0, num_timesteps=5, generator=gen)
    for name in ("prior", "decoder", "diffusion"):
        assert terms[name].shape == (16,) and (terms[name] >= 0).all()
    torch.testing.assert_close(terms["total"], terms["prior"] + terms["decoder"] + terms["diffusion"])


def test_prior_term_is_the_kl_to_the_standard_normal_on_a_short_chain():
    """L_T = KL(q(x_T | x0) || N(0, I)) = 1/2 sum(abar_T x0^2 + (1 - abar_T) - 1 - log(1 - abar_T)).
    With T = 1000 it is ~1e-6 bits/dim, below what the other tests resolve; a 6-step chain
    (abar_T = 0.16) makes it the size of the other terms."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(6, beta_start=0.02, beta_end=0.5))
    x0 = torch.randint(0, 256, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0)).double() / 127.5 - 1
    terms = proc.vlb_terms(lambda x, t: 0.4 * x, x0, generator=torch.Generator().manual_seed(5))
    abar = float(proc.alphas_cumprod[-1])
    ref = 0.5 * (abar * x0**2 + (1 - abar) - 1 - math.log(1 - abar)).flatten(1).sum(1)
    assert ref.min() > 0.05  # not negligible
    torch.testing.assert_close(terms["prior"].double(), ref, rtol=1e-6, atol=1e-9)


def test_discretized_gaussian_is_a_probability_over_the_bins():
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, scale in [(0.3, 0.01), (-0.99, 0.5), (4.0, 0.1), (0.0, 1e-3)]:
        logp = discretized_gaussian_log_likelihood(x, torch.tensor(mean), math.log(scale))
        assert abs(torch.logsumexp(logp, 0).item()) < 1e-10
        ref = _log_bin_prob(np.array([mean]), scale)[:, 0]
        finite = np.isfinite(ref) & (ref > -700)
        np.testing.assert_allclose(logp.numpy()[finite], ref[finite], rtol=1e-6, atol=1e-9)


def test_bad_inputs_are_named(gaussian_case):
    proc, model = gaussian_case
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        proc.vlb_terms(model, x0 + 3)
    with pytest.raises(ValueError, match="variance"):
        proc.vlb_terms(model, x0, variance="learned")
    with pytest.raises(ValueError, match="num_timesteps"):
        proc.vlb_terms(model, x0, num_timesteps=0)


# ------------------------------------------------------------ learned variance (improved DDPM)
def test_learned_log_variance_interpolates_beta_tilde_and_beta():
    proc = dl.GaussianDiffusion(dl.schedules.cosine(50))
    t = torch.arange(50)
    for v, ref in [(-1.0, proc.posterior_log_variance_clipped), (1.0, proc.betas.log())]:
        got = proc.learned_log_variance(torch.full((50, 3), v, dtype=torch.float64), t)
        torch.testing.assert_close(got, ref[:, None].expand(50, 3))
    mid = proc.learned_log_variance(torch.zeros(50, 1, dtype=torch.float64), t)[:, 0]  # the geometric mean
    torch.testing.assert_close(mid, 0.5 * (proc.betas.log() + proc.posterior_log_variance_clipped))


def test_vlb_term_is_the_kl_of_two_gaussians_and_the_decoder_at_t0():
    """Against torch.distributions' KL (an implementation of its own) with a per-value variance."""
    proc = dl.GaussianDiffusion(dl.schedules.linear(100))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, generator=g, dtype=torch.float64) * 2 - 1
    x0_hat = x0 + 0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 40, 99])
    x_t = proc.q_sample(x0, t, torch.randn(4, 3, generator=g, dtype=torch.float64))
    log_var = proc.learned_log_variance(torch.rand(4, 3, generator=g, dtype=torch.float64) * 2 - 1, t)
    got = proc.vlb_term(x0, x_t, t, x0_hat, log_var)
    mean_q, _, log_var_q = proc.q_posterior(x0, x_t, t)
    mean_p, _, _ = proc.q_posterior(x0_hat, x_t, t)
    q = torch.distributions.Normal(mean_q, (0.5 * log_var_q).exp())
    p = torch.distributions.Normal(mean_p, (0.5 * log_var).exp())
    kl = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(got[1:], kl[1:])
    decoder = -discretized_gaussian_log_likelihood(x0[:1], x0_hat[:1], 0.5 * log_var[:1]).sum(1)
    torch.testing.assert_close(got[:1], decoder)


def test_vlb_with_the_learned_variance_at_its_ends_is_the_fixed_variances_bound(gaussian_case):
    """v = -1 everywhere is beta~ (the whole bound equal), v = 1 is beta (the KL terms equal; the
    decoder then uses beta_1, where the fixed 'beta' bound keeps beta~_2 as DDPM's code does)."""
    proc, model = gaussian_case
    x0 = _rounded_gaussian(8, torch.Generator().manual_seed(3))
    fixed = {k: proc.vlb_terms(model, x0, num_timesteps=20, variance=k, generator=torch.Generator().manual_seed(4))
             for k in ("posterior", "beta")}
    for v, name in [(-1.0, "posterior"), (1.0, "beta")]:
        learned = proc.vlb_terms(ConstantVariance(model, v), x0, num_timesteps=20,
                                 generator=torch.Generator().manual_seed(4))  # None: the network's own
        torch.testing.assert_close(learned["diffusion"], fixed[name]["diffusion"])
        if name == "posterior":
            torch.testing.assert_close(learned["total"], fixed[name]["total"])
    with pytest.raises(ValueError, match="learns its variance"):
        proc.vlb_terms(model, x0, variance="learned")


def test_a_learned_variance_network_must_return_twice_the_channels(gaussian_case):
    proc, model = gaussian_case
    wrong = ConstantVariance(model, 0.0)
    wrong.forward = lambda x, t, cond=None: model(x, t)  # forgets its variance
    with pytest.raises(ValueError, match=r"learns its variance.*shape \(4, 4\)"):
        proc.vlb_terms(wrong, torch.zeros(4, 2))
