"""Exact denoisers: for Gaussian-mixture data the Bayes-optimal prediction is closed-form.

Data x0 ~ sum_k w_k N(m_k, diag(s_k^2)). Under x_t = alpha x0 + sigma eps,

    x_t | k   ~ N(alpha m_k, diag(alpha^2 s_k^2 + sigma^2))
    r_k(x_t)  = w_k N(x_t; alpha m_k, .) / sum_j w_j N(x_t; alpha m_j, .)      (responsibilities)
    E[x0 | x_t, k] = m_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha m_k)
    E[x0 | x_t]    = sum_k r_k E[x0 | x_t, k]

and the optimal eps-, x0-, v- and velocity predictions follow from E[x0 | x_t], for every process
of :mod:`difflab.processes` (a = proc.scale(sigma), sigma at the network's time input). A sampler driven by
this model has no training error, so what it gets wrong is its own discretisation error:
the test bed for samplers, likelihoods and guidance (tests, benchmarks/sampler_quality.py).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..processes import Process, convert_prediction
from ..validation import check_labels

__all__ = ["GaussianMixtureDenoiser", "GaussianDenoiser"]

Floats = Union[float, Tensor, list]


class GaussianMixtureDenoiser(nn.Module):
    """model(x_t, t[, cond]) returning the optimal prediction (of ``proc.prediction``) for mixture data.

    ``means`` [K, D]; ``stds`` a float, [K] (isotropic per component) or [K, D] (diagonal);
    ``weights`` [K] (uniform by default). Data may have any shape [B, *data_shape] with
    prod(data_shape) = D. With ``conditional=True`` the component index is the class label:
    ``cond = k`` gives component k's denoiser, the null label K the whole mixture's, so
    classifier-free guidance can be tested exactly.
    """

    def __init__(
        self,
        proc: Process,
        means: Floats,
        stds: Floats = 1.0,
        weights: Optional[Floats] = None,
        conditional: bool = False,
    ) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim == 1:
            means = means[None]
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        K, D = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0:
            stds = stds.expand(K, D)
        elif stds.ndim == 1:
            if stds.shape[0] != K:
                raise ValueError(f"stds of shape [K] must have K = {K} entries, got {stds.shape[0]}")
            stds = stds[:, None].expand(K, D)
        if stds.shape != (K, D) or (stds <= 0).any():
            raise ValueError(f"stds must be positive and broadcast to [K, D] = [{K}, {D}]")
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64
        )
        if weights.shape != (K,) or (weights <= 0).any():
            raise ValueError(f"weights must be {K} positive numbers")
        self.proc = proc
        self.register_buffer("means", means)
        self.register_buffer("variances", (stds**2).contiguous())
        self.register_buffer("log_weights", (weights / weights.sum()).log())
        self.num_classes = K if conditional else None

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _log_weights(self, cond: Optional[Tensor], batch: int) -> Tensor:
        """log w_k per sample: the mixture's, or all mass on component ``cond`` (K = null label)."""
        lw = self.log_weights.expand(batch, -1)
        if cond is None:
            return lw
        K = self.means.shape[0]
        cond = check_labels(self, cond, batch, self.means.device)  # integers in 0 .. K (K: no label)
        onehot = torch.full_like(lw, -math.inf).scatter(1, cond.clamp(max=K - 1)[:, None], 0.0)
        return torch.where((cond == K)[:, None], lw, onehot)

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """E[x0 | x_t] for x_t = alpha x0 + sigma eps (alpha, sigma of shape [B]); float64 inside."""
        shape, dtype = x_t.shape, x_t.dtype
        x = x_t.reshape(shape[0], -1).to(torch.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"this mixture lives in D = {self.dim} dimensions, got x_t of shape {tuple(shape)}")
        alpha, sigma = alpha.to(torch.float64), sigma.to(torch.float64)
        m, v = self.means, self.variances
        if bool((alpha == alpha[0]).all() and (sigma == sigma[0]).all()):  # (VE, EDM: alpha is 1 at every level)
            # One noise level for the batch (what samplers do): the squared Mahalanobis distances
            # sum_d (x_d - a m_kd)^2 / var_kd expand into matrix products, no [B, K, D] tensor.
            a, s2 = alpha[0], sigma[0] ** 2
            var = a * a * v + s2  # [K, D]
            inv = 1.0 / var
            log_lik = -0.5 * ((x * x) @ inv.T - 2 * a * (x @ (m * inv).T)
                              + (a * a * m * m * inv + var.log()).sum(1) + self.dim * math.log(2 * math.pi))
            resp = torch.softmax(log_lik + self._log_weights(cond, x.shape[0]), dim=1)  # [B, K]
            gain = a * v * inv  # E[x0 | x_t, k] = m_k + gain_k (x_t - a m_k)
            x0 = resp @ (m - a * gain * m) + x * (resp @ gain)
        else:
            a = alpha.view(-1, 1, 1)
            var = a**2 * v[None] + sigma.view(-1, 1, 1) ** 2  # [B, K, D]
            diff = x[:, None, :] - a * m[None]
            log_lik = -0.5 * ((diff**2) / var + var.log() + math.log(2 * math.pi)).sum(-1)
            resp = torch.softmax(log_lik + self._log_weights(cond, x.shape[0]), dim=1)
            x0 = (resp[:, :, None] * (m[None] + a * v[None] / var * diff)).sum(1)
        return x0.reshape(shape).to(dtype)

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        sigma_ve = self.proc.sigma_of_timestep(t.to(self.means.device))
        alpha = self.proc.scale(sigma_ve).to(self.means.device)
        sigma = sigma_ve * alpha
        x0 = self.posterior_mean(x_t.to(torch.float64), alpha, sigma, cond)
        bshape = (-1,) + (1,) * (x_t.ndim - 1)
        # converted in float64, then cast: (x_t - alpha x0) / sigma at small sigma loses digits in float32
        out = convert_prediction(x0, x_t.to(torch.float64), alpha.view(bshape), sigma.view(bshape), "x0",
                                 self.proc.prediction)
        return out.to(x_t.dtype)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, return_labels: bool = False):
        """n draws from the data distribution [n, D] (and their component labels)."""
        k = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = (self.means.cpu()[k] + self.variances.cpu()[k].sqrt() * z).float()
        return (x, k) if return_labels else x

    def log_prob(self, x0: Tensor) -> Tensor:
        """log p(x0) under the mixture, per sample (float64)."""
        x = x0.reshape(x0.shape[0], -1).to(torch.float64).to(self.means.device)
        diff = x[:, None, :] - self.means[None]
        ll = -0.5 * ((diff**2) / self.variances + self.variances.log() + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(ll + self.log_weights, dim=1)


def GaussianDenoiser(proc: Process, mean: Floats, std: Floats = 1.0) -> GaussianMixtureDenoiser:
    """The one-component case: data N(mean, diag(std^2)); ``mean`` of shape [D]."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    std = torch.as_tensor(std, dtype=torch.float64)
    return GaussianMixtureDenoiser(proc, mean, std.reshape(1, -1) if std.ndim else std)
